"""Two held-out evaluations of the same problems (before and after training) compared problem by
problem: the change of pass@k, token entropy and response length, each with a 95% interval.

The interval is the board's paired bootstrap (``explorl.compare.stats.paired_bootstrap``) with
one seed: each resample draws the held-out problems with replacement, the same draw for start
and end, and the interval is the 2.5th and 97.5th percentile of the resampled changes. It
answers how much the change could move with another draw of held-out problems of the same kind;
the sampling noise within a problem is in each value already (16 samples per problem give
pass@1 in steps of 1/16). Per problem, pass@k is the unbiased estimator of its ``n`` samples,
entropy the entropy summed over its response tokens over their count, and response length its
tokens over its ``n`` samples (``explorl.compare.regime.Eval``).
"""
from __future__ import annotations

import numpy as np

from explorl.compare.regime import Eval
from explorl.compare.stats import RESAMPLES, Comparison, paired_bootstrap


def _evals(start: dict, end: dict) -> tuple[Eval, Eval]:
    a, b = Eval.from_json(start, "the start evaluation"), Eval.from_json(end, "the end evaluation")
    if a.ids != b.ids:
        first = next((i for i, (x, y) in enumerate(zip(a.ids, b.ids)) if x != y), min(len(a.ids), len(b.ids)))
        raise ValueError(f"the two evaluations are not of the same problems ({len(a.ids)} and {len(b.ids)} "
                         f"problems; they differ first at problem {first})")
    if len(a.ids) < 2:
        raise ValueError(f"an interval over problems needs at least 2 problems, got {len(a.ids)}")
    return a, b


def _compare(num_a, den_a, num_b, den_b) -> Comparison:
    """End (``b``) against start (``a``), one seed: per-problem numerators and denominators."""
    return paired_bootstrap(np.asarray(num_b)[None], np.asarray(den_b)[None],
                            np.asarray(num_a)[None], np.asarray(den_a)[None])


def paired_change(start: dict, end: dict, k: int = 1) -> Comparison:
    """The change of held-out pass@k from ``start`` to ``end`` (two evaluations of the same
    problems, in the same order); ``values`` is (end, start)."""
    a, b = _evals(start, end)
    if k > min(a.n, b.n):
        which = "start" if a.n < k else "end"
        raise ValueError(f"pass@{k} needs at least {k} samples per problem; the {which} evaluation has "
                         f"{min(a.n, b.n)}")
    ones = np.ones(len(a.ids))
    return _compare(a.pass_at(k), ones, b.pass_at(k), ones)


def format_start_end(start: dict, end: dict, ks) -> str:
    """Held-out pass@k, token entropy and response length before and after training, each with
    its change and 95% interval paired over problems."""
    a, b = _evals(start, end)
    head = f"{'held-out':<16}{'start':>8}{'end':>8}{'change':>9}   95% interval, paired over problems"
    rows = [(f"pass@{k}", paired_change(start, end, k)) for k in ks]
    if a.entropy_sum is not None and b.entropy_sum is not None:
        rows.append(("token entropy", _compare(a.entropy_sum, a.tokens, b.entropy_sum, b.tokens)))
    if a.tokens is not None and b.tokens is not None:
        rows.append(("response tokens", _compare(a.tokens, np.full(len(a.ids), a.n), b.tokens,
                                                 np.full(len(b.ids), b.n))))
    lines = [head]
    for name, c in rows:
        end_value, start_value = c.values
        lines.append(f"{name:<16}{start_value:>8.3f}{end_value:>8.3f}{c.estimate:>+9.3f}   "
                     f"[{c.low:+.3f}, {c.high:+.3f}]")
    lines.append(f"({len(a.ids)} problems x {b.n} samples; bootstrap over problems, {RESAMPLES} resamples)")
    return "\n".join(lines)
