"""The board's statistics against direct computations: the paired two-way bootstrap (interval and
p-value) recomputed with loops over the same resamples and against the exact bootstrap
distribution of a tiny design, the paired t test by hand, Benjamini–Hochberg by hand."""
import itertools
import math

import numpy as np
import pytest

from explorl.compare import stats


def _direct(a_num, a_den, b_num, b_den, resamples, seed=0):
    """Δ* of every resample by explicit loops: the drawn seeds, the drawn problems, each seed's
    Σ num / Σ den over the drawn problems, averaged over the drawn seeds."""
    s, p = len(a_num), len(a_num[0])
    seeds_drawn = stats.resample_indices(s, resamples, seed)
    problems_drawn = stats.resample_indices(p, resamples, seed + 1)
    out = []
    for ss, ps in zip(seeds_drawn, problems_drawn):
        def value(num, den):
            per_seed = [sum(num[x][i] for i in ps) / sum(den[x][i] for i in ps) for x in ss]
            return sum(per_seed) / len(per_seed)
        out.append(value(a_num, a_den) - value(b_num, b_den))
    return np.round(out, 12)


def test_bootstrap_interval_and_p_match_a_direct_computation():
    # 3 seeds x 4 problems; a ratio metric (entropy: summed entropy over tokens) so the denominator matters
    a_num = [[2.0, 1.0, 3.0, 0.5], [1.5, 2.5, 2.0, 1.0], [3.0, 1.0, 1.0, 2.0]]
    a_den = [[4.0, 2.0, 5.0, 1.0], [3.0, 4.0, 4.0, 2.0], [5.0, 2.0, 2.0, 3.0]]
    b_num = [[1.0, 1.0, 2.0, 0.5], [1.0, 2.0, 2.5, 1.0], [2.0, 1.5, 1.0, 1.0]]
    b_den = [[4.0, 3.0, 5.0, 1.0], [3.0, 4.0, 5.0, 2.0], [4.0, 3.0, 2.0, 3.0]]
    b = 400
    c = stats.paired_bootstrap(a_num, a_den, b_num, b_den, resamples=b)
    deltas = _direct(a_num, a_den, b_num, b_den, b)
    point = (np.mean([sum(a_num[s]) / sum(a_den[s]) for s in range(3)])
             - np.mean([sum(b_num[s]) / sum(b_den[s]) for s in range(3)]))
    assert c.estimate == pytest.approx(point)
    assert (c.low, c.high) == pytest.approx(tuple(np.quantile(deltas, [0.025, 0.975])))
    below, above = (deltas <= 0).sum(), (deltas >= 0).sum()
    assert c.p == pytest.approx(min(1.0, 2 * min(1 + below, 1 + above) / (b + 1)))
    assert c.relative == pytest.approx(np.mean([sum(a_num[s]) / sum(a_den[s]) for s in range(3)])
                                       / np.mean([sum(b_num[s]) / sum(b_den[s]) for s in range(3)]) - 1)
    # against a margin (a non-inferiority test) the p counts the resamples on either side of it
    m = stats.paired_bootstrap(a_num, a_den, b_num, b_den, null=0.05, resamples=b)
    assert m.p == pytest.approx(min(1.0, 2 * min(1 + (deltas <= 0.05).sum(), 1 + (deltas >= 0.05).sum()) / (b + 1)))


def test_bootstrap_approaches_the_exact_bootstrap_distribution():
    """2 seeds x 3 problems: the 2² · 3³ = 108 ordered resamples are equally likely; the
    probability that Δ* ≤ 0 and the interval's ends follow from them exactly."""
    a = np.array([[1.0, 0.0, 1.0], [0.5, 0.25, 0.0]])
    b = np.array([[0.0, 0.5, 0.25], [0.25, 0.25, 0.5]])
    ones = np.ones_like(a)
    exact = []
    for ss in itertools.product(range(2), repeat=2):
        for ps in itertools.product(range(3), repeat=3):
            exact.append(np.mean([np.mean([a[s, i] - b[s, i] for i in ps]) for s in ss]))
    exact = np.sort(exact)
    c = stats.paired_bootstrap(a, ones, b, ones, resamples=200_000)
    p_exact = 2 * min((exact <= 0).mean(), (exact >= 0).mean())
    assert c.p == pytest.approx(p_exact, abs=0.01)
    assert c.estimate == pytest.approx((a - b).mean())
    # the interval's ends are atoms of the exact distribution at its 2.5% and 97.5% points
    lo, hi = np.quantile(exact, [0.025, 0.975], method="inverted_cdf")
    assert c.low == pytest.approx(lo, abs=1e-9) and c.high == pytest.approx(hi, abs=1e-9)


def test_bootstrap_p_of_constant_and_of_identical_runs():
    ones = np.ones((2, 3))
    same = stats.paired_bootstrap(ones * 0.5, ones, ones * 0.5, ones, resamples=999)
    assert same.estimate == 0 and same.p == 1.0 and same.low == same.high == 0
    up = stats.paired_bootstrap(ones * 0.7, ones, ones * 0.5, ones, resamples=999)
    # every resample gives +0.2: none at or below 0, so p = 2 (1 + 0) / (999 + 1)
    assert up.estimate == pytest.approx(0.2) and up.p == pytest.approx(2 / 1000)


def test_paired_t_by_hand():
    c = stats.paired_t([0.5, 0.3, 0.7], [0.4, 0.5, 0.6])
    # differences 0.1, -0.2, 0.1: mean 0, sd 0.17320508, t(0.975, 2) = 4.30265273
    half = 4.30265273 * 0.17320508 / math.sqrt(3)
    assert c.estimate == pytest.approx(0, abs=1e-12) and c.p == pytest.approx(1.0)
    assert (c.low, c.high) == pytest.approx((-half, half), rel=1e-6)
    c = stats.paired_t([0.5, 0.6, 0.8], [0.4, 0.5, 0.6])
    # differences 0.1, 0.1, 0.2: mean 0.1333, sd 0.057735, t = 0.1333 / (0.057735 / √3) = 4.0
    assert c.estimate == pytest.approx(0.4 / 3) and c.p == pytest.approx(0.0571909, rel=1e-4)
    flat = stats.paired_t([0.5, 0.6], [0.4, 0.5])
    assert flat.p is None and flat.notes  # no spread over seeds: not tested


def test_benjamini_hochberg_by_hand_and_against_scipy():
    from scipy.stats import false_discovery_control
    ps = [0.01, 0.04, 0.03, 0.005, None]
    comps = [stats.Comparison(0.1, 0, 0.2, p, None, 3, 4, "bootstrap") for p in ps]
    stats.benjamini_hochberg(comps)
    # sorted 0.005, 0.01, 0.03, 0.04 (m = 4, the untested one left out): p·m/rank = 0.02, 0.02, 0.04, 0.04,
    # then the running minimum from the top
    assert [c.q for c in comps] == pytest.approx([0.02, 0.04, 0.04, 0.02, None])
    assert [c.q for c in comps[:4]] == pytest.approx(list(false_discovery_control(ps[:4])))
    assert [c.significant for c in comps] == [True, True, True, True, False]
    raw = [stats.Comparison(0.1, 0, 0.2, p, None, 3, 4, "bootstrap") for p in (0.03, 0.04, 0.045)]
    stats.benjamini_hochberg(raw + [stats.Comparison(0, 0, 0, 0.9, None, 3, 4, "t")])
    # each raw p < 0.05, but over four comparisons q = 0.045·4/3 = 0.06 for all three
    assert [c.q for c in raw] == pytest.approx([0.06, 0.06, 0.06]) and not any(c.significant for c in raw)
