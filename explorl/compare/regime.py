"""One regime of a study as the board reads it: per row and seed, the per-problem held-out
results (start, end, after a phase before RL, and along the way) and the training numbers, and
the per (seed, problem) matrices its comparisons are made on.

The board refuses (``Refused``) a regime it cannot judge honestly: no ``k_max`` declared, an
evaluation with fewer than 2·k_max samples per problem or fewer held-out problems than declared,
runs evaluated on different problems, or files written before evaluations kept per-problem
results (the intervals resample problems, so those cannot be used; rerun those runs).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from explorl.compare.files import CorruptFile, _read_json
from explorl.compare.results import read_metrics

BASELINE = "grpo"


class Refused(ValueError):
    """A regime the board will not judge, and why."""


@dataclass
class Eval:
    """One evaluation: per held-out problem the correct samples out of ``n`` and what goes with them."""

    n: int
    ids: list[str]
    correct: np.ndarray
    distinct: np.ndarray | None = None
    entropy_sum: np.ndarray | None = None
    tokens: np.ndarray | None = None
    wrong_tokens: np.ndarray | None = None
    wrong: np.ndarray | None = None

    @classmethod
    def from_json(cls, part: dict, where: str) -> "Eval":
        per = part.get("per_problem")
        if not isinstance(per, dict) or "correct" not in per or "samples" not in part:
            raise Refused(f"{where} holds no per-problem results (it was written before evaluations kept them); "
                          f"the board's intervals resample held-out problems and cannot use it: rerun the run "
                          f"(delete its folder) with this version")
        col = lambda k: np.asarray(per[k], dtype=np.float64) if k in per else None  # noqa: E731
        return cls(n=int(part["samples"]), ids=[str(x) for x in per.get("id", range(len(per["correct"])))],
                   correct=col("correct"), distinct=col("distinct"), entropy_sum=col("entropy_sum"),
                   tokens=col("tokens"), wrong_tokens=col("wrong_tokens"), wrong=col("wrong"))

    def pass_at(self, k: int) -> np.ndarray:
        """The unbiased pass@k estimator of every problem (``explorl.eval.passk``)."""
        from explorl.eval.passk import pass_at_k
        table = np.array([pass_at_k(self.n, c, k) for c in range(self.n + 1)])
        return table[self.correct.astype(int)]

    @property
    def pass1(self) -> float:
        return float(self.correct.mean() / self.n)


@dataclass
class Run:
    seed: int
    end: Eval
    start: Eval
    after_phase: Eval | None
    points: list[tuple[float, np.ndarray]]  # (tokens, per-problem pass@1) from the first point to the end
    curve: tuple[list[float], list[float]]  # (tokens, held-out pass@1) of every evaluation, for "tokens to"
    row: dict                              # the run's results.json row
    entropy: list[float | None] = field(default_factory=lambda: [None] * 4)
    clipped: float | None = None
    train_reward: float | None = None
    along: list[int] = field(default_factory=list)  # samples per problem of the evaluations along the way

    def pass1_at(self, tokens: float) -> np.ndarray | None:
        """Per-problem held-out pass@1 at ``tokens`` generated tokens, linear between the
        evaluations (None past the run's last evaluation or without per-problem points)."""
        xs = [x for x, _ in self.points]
        if not xs or tokens > xs[-1]:
            return None
        if tokens <= xs[0]:
            return self.points[0][1]
        for (x0, y0), (x1, y1) in zip(self.points, self.points[1:]):
            if x0 <= tokens <= x1:
                return y0 if x1 == x0 else y0 + (y1 - y0) * (tokens - x0) / (x1 - x0)
        return None


@dataclass
class Regime:
    name: str
    settings: dict
    budget: float
    k_max: int
    runs: dict[str, dict[int, Run]]
    n: int
    problems: int

    def entry(self, label: str) -> dict:
        return self.settings.get("entries", {}).get(label, {})

    def planned(self, label: str) -> list[int]:
        """The seeds the study declared for ``label`` (those it has, where it declared none)."""
        seeds = self.entry(label).get("seeds")
        return list(seeds) if seeds is not None else sorted(self.runs.get(label, {}))

    def complete(self, label: str) -> bool:
        """Whether every declared seed of ``label`` has finished (only then is it compared)."""
        return label in self.runs and set(self.planned(label)) <= set(self.runs[label])

    def rows(self) -> list[str]:
        """Every row: those the study declared, then any with runs it did not declare."""
        return list(dict.fromkeys([*self.settings.get("entries", {}), *self.runs]))

    def not_started(self) -> list[str]:
        """Declared rows with no finished run yet."""
        return [lb for lb in self.rows() if lb not in self.runs]

    def controls_of(self, label: str) -> list[str]:
        return [lb for lb, e in self.settings.get("entries", {}).items()
                if (e.get("control") or {}).get("of") == label and lb in self.runs]


def read_regime(folder: Path) -> Regime:
    """The regime in ``folder`` (its results.json and run folders); ``Refused`` with the reason."""
    folder = Path(folder)
    results = json.loads((folder / "results.json").read_text())
    settings = results.get("settings", {})
    k_max = settings.get("k_max")
    if k_max is None:
        raise Refused(f"{folder / 'results.json'}: no k_max declared for this regime (declare k_max in the study "
                      f"file and rerun compare, which records it; finished runs are not redone)")
    declared = settings.get("heldout_problems", 0)
    runs, ids, where_ids = {}, None, None
    for label, seeds in results["runs"].items():
        for key, row in seeds.items():
            run_dir = folder / row.get("dir", f"runs/{label}/{key}")
            run = read_run(run_dir, row, settings["tokens"])
            if run.end.n < 2 * k_max:
                raise Refused(f"{run_dir / 'eval.json'}: {run.end.n} samples per problem, fewer than 2·k_max = "
                              f"{2 * k_max} (k_max {k_max} is declared for this regime)")
            if ids is None:
                ids, where_ids = run.end.ids, run_dir
            for part, ev in (("end", run.end), ("start", run.start), ("after_phase", run.after_phase)):
                if ev is not None and ev.ids != ids:
                    raise Refused(f"{run_dir / 'eval.json'} ({part}) was evaluated on other held-out problems than "
                                  f"{where_ids / 'eval.json'}: runs are paired by problem, so they must share them")
            runs.setdefault(label, {})[int(row["seed"])] = run
    if ids is None:
        raise Refused(f"{folder}: no finished run")
    if len(ids) < declared:
        raise Refused(f"{folder}: {len(ids)} held-out problems, fewer than the {declared} declared for this regime")
    n = min(r.end.n for rs in runs.values() for r in rs.values())
    return Regime(folder.name, settings, float(settings["tokens"]), int(k_max), runs, n, len(ids))


def read_run(run_dir: Path, row: dict, budget: float) -> Run:
    try:
        ev = _read_json(run_dir / "eval.json")
    except CorruptFile as err:
        raise Refused(str(err)) from None
    if "end" not in ev or "start" not in ev:
        raise Refused(f"{run_dir / 'eval.json'}: no start or end evaluation (the run has not finished)")
    where = run_dir / "eval.json"
    end, start = Eval.from_json(ev["end"], f"{where} (end)"), Eval.from_json(ev["start"], f"{where} (start)")
    after = Eval.from_json(ev["after_phase"], f"{where} (after_phase)") if "after_phase" in ev else None
    metrics = read_metrics(run_dir)
    first = after or start
    points = [(0.0, first.correct / first.n)]
    curve, complete = {0.0: first.pass1}, True
    for m in metrics:
        if "heldout/pass@1" in m:
            curve[float(m["tokens/total"])] = m["heldout/pass@1"]
            if "heldout/correct" in m and len(m["heldout/correct"]) == len(end.ids):
                points.append((float(m["tokens/total"]), np.asarray(m["heldout/correct"], float) / m["heldout/samples"]))
            else:
                complete = False  # an evaluation along the way without per-problem counts: no curve to resample
    last = float(metrics[-1]["tokens/total"]) if metrics else float(row.get("tokens", 0))
    curve[last] = end.pass1
    points = points + [(last, end.correct / end.n)] if complete else []
    xs = sorted(curve)
    return Run(seed=int(row["seed"]), end=end, start=start, after_phase=after, points=points,
               curve=(xs, [curve[x] for x in xs]), row=row, entropy=entropy_quarters(metrics, budget),
               clipped=_mean([m["loss/clip_frac_low"] + m["loss/clip_frac_high"] for m in metrics
                              if "loss/clip_frac_low" in m and "loss/clip_frac_high" in m]),
               train_reward=_mean([m["reward/mean"] for m in metrics if "reward/mean" in m
                                   and m["tokens/total"] - m.get("tokens/step", 0) >= 0.75 * budget]),
               along=sorted({int(m["heldout/samples"]) for m in metrics if "heldout/samples" in m}))


def entropy_quarters(metrics: list[dict], budget: float) -> list[float | None]:
    """Mean training-rollout entropy in each quarter of the token budget."""
    quarters = [[] for _ in range(4)]
    for m in metrics:
        if "entropy/rollout" in m and "tokens/total" in m:
            start = m["tokens/total"] - m.get("tokens/step", 0)
            quarters[min(3, int(4 * start / max(budget, 1)))].append(m["entropy/rollout"])
    return [sum(q) / len(q) if q else None for q in quarters]


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


# ---- the matrices a comparison is made on ---------------------------------------------------
HELDOUT = ("pass@", "entropy", "distinct", "wrong_length", "reach@")
PER_SEED = {"groups_with_gradient": lambda r: None if r.row.get("frac_zero_std_mean") is None
            else 1 - r.row["frac_zero_std_mean"],
            "train_reward": lambda r: r.train_reward}


def metric_k(regime: Regime, metric: str) -> int:
    return regime.k_max if metric == "pass@kmax" else int(metric[5:])


def heldout(regime: Regime, run: Run, metric: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(numerator, denominator) per problem of a held-out metric of one run, at the end (None
    where it cannot be computed from what the run recorded)."""
    e = run.end
    ones = np.ones(len(e.ids))
    if metric.startswith("pass@"):
        return e.pass_at(metric_k(regime, metric)), ones
    column = {"entropy": ("entropy_sum", "tokens"), "distinct": ("distinct", None),
              "wrong_length": ("wrong_tokens", "wrong")}.get(metric)
    if column is None:
        raise ValueError(f"unknown held-out metric {metric!r}")
    num = getattr(e, column[0])
    den = ones if column[1] is None else getattr(e, column[1])
    return None if num is None or den is None else (num, den)


def known_metric(metric: str) -> bool:
    return (metric in PER_SEED or metric in ("entropy", "distinct", "wrong_length", "pass@kmax")
            or (metric.startswith("pass@") and metric[5:].isdigit())
            or (metric.startswith("reach@") and _is_fraction(metric[6:])))


def _is_fraction(text: str) -> bool:
    try:
        return 0 < float(text) <= 1
    except ValueError:
        return False


def matrices(regime: Regime, label: str, against: str, metric: str):
    """``(a_num, a_den, b_num, b_den, seeds)`` for ``label`` against ``against`` over the seeds both
    have (a held-out metric: ``(seeds, problems)`` arrays), ``(a, b, seeds)`` per-seed values for a
    training metric, or None where a run lacks what the metric needs.

    ``reach@f``: the recipe's held-out pass@1 at f of the token budget (linear between its
    evaluations, per problem) against the baseline's pass@1 at the end."""
    a_runs, b_runs = regime.runs[label], regime.runs[against]
    seeds = sorted(set(a_runs) & set(b_runs))
    if not seeds:
        return None
    if metric in PER_SEED:
        a = [PER_SEED[metric](a_runs[s]) for s in seeds]
        b = [PER_SEED[metric](b_runs[s]) for s in seeds]
        return None if None in a or None in b else (a, b, seeds)
    if metric.startswith("reach@"):
        tokens = float(metric[6:]) * regime.budget
        a = [a_runs[s].pass1_at(tokens) for s in seeds]
        if any(x is None for x in a):
            return None
        b = [b_runs[s].end.correct / b_runs[s].end.n for s in seeds]
        ones = np.ones((len(seeds), len(b[0])))
        return np.stack(a), ones, np.stack(b), ones, seeds
    a = [heldout(regime, a_runs[s], metric) for s in seeds]
    b = [heldout(regime, b_runs[s], metric) for s in seeds]
    if any(x is None for x in a + b):
        return None
    return (np.stack([x[0] for x in a]), np.stack([x[1] for x in a]),
            np.stack([x[0] for x in b]), np.stack([x[1] for x in b]), seeds)


def mean_value(regime: Regime, label: str, metric: str) -> float | None:
    """A row's mean over its seeds of a metric at the end (for choosing the best of several)."""
    values = []
    for run in regime.runs[label].values():
        if metric in PER_SEED:
            v = PER_SEED[metric](run)
        else:
            x = heldout(regime, run, metric)
            v = None if x is None or not x[1].sum() else float(x[0].sum() / x[1].sum())
        if v is not None:
            values.append(v)
    return sum(values) / len(values) if values else None
