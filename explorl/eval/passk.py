"""The unbiased pass@k estimator (Chen et al. 2021, arXiv:2107.03374).

With n samples of which c are correct, pass@k = 1 − C(n−c, k) / C(n, k): the probability
that k samples drawn without replacement from the n contain at least one correct one.
"""
from __future__ import annotations

import math


def pass_at_k(n: int, c: int, k: int) -> float:
    if not 0 <= c <= n or k < 1:
        raise ValueError(f"pass_at_k: need 0 <= c <= n and k >= 1, got n={n}, c={c}, k={k}")
    if k > n:
        raise ValueError(f"pass_at_k: k={k} exceeds the n={n} samples")
    if n - c < k:
        return 1.0
    # product form of C(n−c, k) / C(n, k), stable for large n
    return 1.0 - math.prod((n - c - i) / (n - i) for i in range(k))
