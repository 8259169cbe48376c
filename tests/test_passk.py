"""The unbiased pass@k estimator against brute-force enumeration of k-subsets."""
import itertools

import pytest

from explorl.eval.passk import pass_at_k


@pytest.mark.parametrize("n", [1, 2, 5, 8])
def test_pass_at_k_equals_enumeration(n):
    for c in range(n + 1):
        outcomes = [1] * c + [0] * (n - c)
        for k in range(1, n + 1):
            subsets = list(itertools.combinations(range(n), k))
            brute = sum(any(outcomes[i] for i in s) for s in subsets) / len(subsets)
            assert pass_at_k(n, c, k) == pytest.approx(brute, abs=1e-12)


def test_pass_at_k_large_n_is_stable_and_monotone():
    values = [pass_at_k(64, 3, k) for k in (1, 2, 4, 8, 16, 32, 64)]
    assert values[0] == pytest.approx(3 / 64)
    assert values == sorted(values) and values[-1] == 1.0


def test_pass_at_k_rejects_bad_input():
    with pytest.raises(ValueError, match="exceeds"):
        pass_at_k(4, 1, 8)
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)
