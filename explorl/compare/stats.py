"""The board's statistics: a recipe against a baseline, paired by seed and by held-out problem.

**Held-out metrics** (pass@k, token entropy, distinct correct answers, lengths of wrong answers,
pass@1 along the training curve) are known per seed s and held-out problem i as a numerator
and a denominator (pass@k: the unbiased estimator of the problem's n samples over 1; entropy:
the entropy summed over its response tokens over their count). A run's value is
Σ_i num[s, i] / Σ_i den[s, i], a recipe's the mean over its seeds, and the difference
Δ = value(recipe) − value(baseline) over the seeds both have and the problems both evaluated.

*Interval.* A paired two-way bootstrap: each of ``B`` resamples draws the seeds with
replacement and, independently, the problems with replacement; the same draws apply to the
recipe and to the baseline (paired by seed and by problem), and pass@k is the unbiased
estimator of each drawn problem (the samples of a problem are not redrawn). The 95% interval
is the 2.5th and 97.5th percentile of the B values of Δ*. ``scipy.stats.bootstrap`` resamples
one index (paired samples share it): it has no crossed design in which seeds and problems are
drawn independently, hence the ten lines of numpy here.

*p-value, from the same bootstrap.* For a null value m (0, or the margin of a "not lower than
GRPO − 0.01" hypothesis) the two-sided p = min(1, 2·min(1 + #{Δ* ≤ m}, 1 + #{Δ* ≥ m}) / (B + 1)):
the percentile interval inverted (its 95% interval excludes m about when p < 0.05), with the
+1 that keeps a bootstrap p above 0. The Δ* are rounded to 12 decimals first, so that the
rounding of sums in another order cannot move a resample that ties with m to one side (ties
are common: pass@k of few samples takes few values). A difference that every resample gives
as exactly m (identical runs) gets p = 1.

**Training metrics** known only per seed (the share of groups with a gradient, the training
reward) are compared by a paired t test over the seeds (``scipy.stats.ttest_rel``, its interval
from ``scipy.stats.t``); differences with no spread over seeds are not tested (p = None).

**Multiple comparisons.** ``benjamini_hochberg`` gives each comparison of a family its
Benjamini–Hochberg q-value (``scipy.stats.false_discovery_control``); the board's family is
every comparison of a regime's table, and a result is significant where q < 0.05.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

RESAMPLES = 10_000
ALPHA = 0.05


@dataclass
class Comparison:
    """Δ = recipe − baseline (``estimate``), its 95% interval, two-sided p against ``null``,
    the relative difference recipe / baseline − 1, and (after ``benjamini_hochberg``) q."""

    estimate: float
    low: float
    high: float
    p: float | None
    relative: float | None
    seeds: int
    problems: int
    method: str
    null: float = 0.0
    q: float | None = None
    values: tuple[float, float] = (float("nan"), float("nan"))  # (recipe, baseline)
    notes: list[str] = field(default_factory=list)

    @property
    def significant(self) -> bool:
        return self.q is not None and self.q < ALPHA


def resample_indices(n: int, resamples: int, seed: int) -> np.ndarray:
    """``resamples`` draws of ``n`` indices out of ``n`` with replacement, ``(B, n)``."""
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def counts(indices: np.ndarray, n: int) -> np.ndarray:
    """How often each of ``n`` items was drawn in each resample, ``(B, n)``."""
    b = indices.shape[0]
    flat = (indices + n * np.arange(b)[:, None]).ravel()
    return np.bincount(flat, minlength=b * n).reshape(b, n).astype(np.float64)


_WEIGHTS: dict = {}


def weights(n: int, resamples: int, seed: int) -> np.ndarray:
    """``counts(resample_indices(n, resamples, seed), n)``, kept for the process: every comparison
    of one shape uses the same resamples."""
    key = (n, resamples, seed)
    if key not in _WEIGHTS:
        if len(_WEIGHTS) > 8:
            _WEIGHTS.clear()
        _WEIGHTS[key] = counts(resample_indices(n, resamples, seed), n)
    return _WEIGHTS[key]


def _values(num: np.ndarray, den: np.ndarray, ws: np.ndarray, wp: np.ndarray) -> np.ndarray:
    """Per resample: Σ_s ws·(Σ_i wp·num / Σ_i wp·den) / Σ_s ws, ``(B,)``."""
    top = num @ wp.T                          # (S, B)
    bottom = den @ wp.T
    per_seed = np.divide(top, bottom, out=np.full_like(top, np.nan), where=bottom != 0)
    return (ws * per_seed.T).sum(1) / ws.sum(1)


def value(num: np.ndarray, den: np.ndarray) -> float:
    """The point value: the mean over seeds of Σ_i num / Σ_i den."""
    bottom = den.sum(1)
    return float(np.mean(np.divide(num.sum(1), bottom, out=np.full(len(bottom), np.nan), where=bottom != 0)))


def bootstrap_p(deltas: np.ndarray, null: float) -> float:
    """Two-sided p of the bootstrap values ``deltas`` against ``null`` (module docstring)."""
    b = len(deltas)
    below, above = int((deltas <= null).sum()), int((deltas >= null).sum())
    return min(1.0, 2 * min(1 + below, 1 + above) / (b + 1))


def paired_bootstrap(a_num, a_den, b_num, b_den, null: float = 0.0, resamples: int = RESAMPLES,
                     seed: int = 0) -> Comparison:
    """Recipe (``a``) against baseline (``b``): ``(S, P)`` numerators and denominators, row s the
    same seed and column i the same problem in both."""
    a_num, a_den, b_num, b_den = (np.asarray(x, dtype=np.float64) for x in (a_num, a_den, b_num, b_den))
    if not a_num.shape == a_den.shape == b_num.shape == b_den.shape or a_num.ndim != 2:
        raise ValueError(f"paired_bootstrap: need four (seeds, problems) arrays of one shape, got "
                         f"{a_num.shape}, {a_den.shape}, {b_num.shape}, {b_den.shape}")
    s, p = a_num.shape
    ws, wp = weights(s, resamples, seed), weights(p, resamples, seed + 1)
    deltas = np.round(_values(a_num, a_den, ws, wp) - _values(b_num, b_den, ws, wp), 12)
    deltas = deltas[np.isfinite(deltas)]
    va, vb = value(a_num, a_den), value(b_num, b_den)
    low, high = (np.quantile(deltas, [0.025, 0.975]) if len(deltas) else (np.nan, np.nan))
    return Comparison(estimate=va - vb, low=float(low), high=float(high),
                      p=bootstrap_p(deltas, null) if len(deltas) else None,
                      relative=va / vb - 1 if vb else None, seeds=s, problems=p, method="bootstrap", null=null,
                      values=(va, vb))


def paired_t(a: list[float], b: list[float], null: float = 0.0) -> Comparison:
    """Per-seed values of a recipe and its baseline (same seeds, same order): the paired t test."""
    from scipy import stats
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    d = a - b
    va, vb = float(a.mean()), float(b.mean())
    base = dict(estimate=float(d.mean()), relative=va / vb - 1 if vb else None, seeds=len(d), problems=0,
                method="t", null=null, values=(va, vb))
    if len(d) < 2 or np.ptp(d) == 0:
        return Comparison(low=float(d.mean()), high=float(d.mean()), p=None,
                          notes=["no spread over seeds: not tested"], **base)
    res = stats.ttest_rel(a, b + null)
    ci = res.confidence_interval(0.95)
    return Comparison(low=float(ci.low) + null, high=float(ci.high) + null, p=float(res.pvalue), **base)


def benjamini_hochberg(comparisons: list[Comparison]) -> None:
    """Set ``q`` on every comparison that has a p-value (BH over all of them together)."""
    from scipy.stats import false_discovery_control
    tested = [c for c in comparisons if c.p is not None]
    if not tested:
        return
    qs = false_discovery_control([c.p for c in tested], method="bh")
    for c, q in zip(tested, np.atleast_1d(qs)):
        c.q = float(q)
