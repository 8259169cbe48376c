"""Two held-out evaluations of the same problems compared problem by problem: the change of
pass@k with a bootstrap interval over problems, and a table of start against end.

Each evaluation (``explorl.eval.evaluate``) lists its problems with their number of correct
samples. A problem's pass@k is the unbiased estimate from its ``n`` samples and ``c`` correct
(``explorl.eval.passk``); the change is the mean over problems of end minus start, and its
interval comes from ``scipy.stats.bootstrap`` resampling problems with their pair of values
together (``paired=True``, BCa). The interval answers how much the change could move with
another draw of held-out problems of the same kind; the sampling noise within a problem is in
each value already (16 samples per problem give pass@1 in steps of 1/16).
"""
from __future__ import annotations

from explorl.eval.passk import pass_at_k


def _problem_pass(results: dict, k: int, which: str) -> tuple[list[str], list[float]]:
    if "problems" not in results or "samples" not in results:
        raise ValueError(f"the {which} evaluation lists no problems (it was made before evaluations kept them): "
                         f"evaluate again")
    n = results["samples"]
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples per problem; the {which} evaluation has {n}")
    rows = results["problems"]
    return [r["id"] for r in rows], [pass_at_k(n, r["correct"], k) for r in rows]


def paired_change(start: dict, end: dict, k: int = 1, confidence: float = 0.95, resamples: int = 9999,
                  seed: int = 0) -> dict:
    """The change of held-out pass@k from ``start`` to ``end`` (two evaluations of the same
    problems, in the same order) with its ``confidence`` interval over problems:
    ``{"k", "problems", "start", "end", "change", "low", "high", "confidence"}``."""
    import numpy as np
    try:
        from scipy.stats import bootstrap
    except ImportError:
        raise ValueError("the interval over problems needs scipy (pip install -e .[stats])") from None
    ids_a, a = _problem_pass(start, k, "start")
    ids_b, b = _problem_pass(end, k, "end")
    if ids_a != ids_b:
        first = next((i for i, (x, y) in enumerate(zip(ids_a, ids_b)) if x != y), min(len(ids_a), len(ids_b)))
        raise ValueError(f"the two evaluations are not of the same problems ({len(ids_a)} and {len(ids_b)} "
                         f"problems; they differ first at problem {first})")
    if len(a) < 2:
        raise ValueError(f"an interval over problems needs at least 2 problems, got {len(a)}")
    a, b = np.asarray(a), np.asarray(b)
    change = float((b - a).mean())
    if np.all(b - a == change):  # no spread to resample: the interval is the point
        low = high = change
    else:
        res = bootstrap((a, b), lambda x, y, axis: (y - x).mean(axis=axis), paired=True, vectorized=True,
                        confidence_level=confidence, n_resamples=resamples, method="BCa",
                        rng=np.random.default_rng(seed))
        low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return {"k": k, "problems": len(a), "start": float(a.mean()), "end": float(b.mean()), "change": change,
            "low": low, "high": high, "confidence": confidence}


def format_start_end(start: dict, end: dict, ks, confidence: float = 0.95) -> str:
    """Held-out pass@k (each with its paired change and interval), token entropy and response
    length, before and after training, over every source together ("all")."""
    head = f"{'held-out':<16}{'start':>8}{'end':>8}{'change':>9}   {confidence:.0%} interval, paired over problems"
    lines = [head]
    for k in ks:
        c = paired_change(start, end, k, confidence)
        lines.append(f"{'pass@' + str(k):<16}{c['start']:>8.3f}{c['end']:>8.3f}{c['change']:>+9.3f}   "
                     f"[{c['low']:+.3f}, {c['high']:+.3f}]")
    for key, name in (("entropy", "token entropy"), ("response_length", "response tokens")):
        if key in start and key in end:
            a, b = start[key]["all"], end[key]["all"]
            lines.append(f"{name:<16}{a:>8.3f}{b:>8.3f}{b - a:>+9.3f}")
    lines.append(f"({len(end['problems'])} problems x {end['samples']} samples; bootstrap: scipy.stats.bootstrap, "
                 f"BCa, 9999 resamples)")
    return "\n".join(lines)
