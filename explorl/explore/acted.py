"""Whether a mechanism acted in a run, declared by the component and read from the run's
metrics (``metrics.jsonl``).

A method that never acted (a clip that cannot fire on-policy, a schedule that ended before the
run did, a replay buffer never replayed) is *not engaged*: its run is GRPO's by another name,
and a board must say so rather than report "no effect". Every component that is a mechanism
declares ``engaged_when`` (``explorl.explore.base.Component``): a tuple of criteria that must
all hold, each one an ``Acted`` (a logged metric reduced over the steps that logged it and
compared with a threshold), an ``AnyOf`` (one of several) or ``ALWAYS`` (the mechanism is a
fixed change of formula, e.g. Dr. GRPO's missing std division). ``None`` (the default) marks a
baseline component (uniform curriculum, fixed budget, the PPO clip of GRPO), which has nothing
to engage. The criteria follow the "engaged when" column of ``docs/hypotheses.md``.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass

OPS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}
REDUCE = ("mean", "max", "min", "sum", "range", "share")


@dataclass(frozen=True)
class Acted:
    """``reduce`` of ``metric`` over the steps that logged it, then ``op threshold``.

    ``reduce``: mean | max | min | sum | range (max − min) | share (the share of those steps where
    the metric is ``> step_above``). ``what`` says in words what the criterion checks."""

    metric: str
    op: str
    threshold: float
    reduce: str = "mean"
    step_above: float = 0.0
    what: str = ""

    def __post_init__(self):
        if self.op not in OPS:
            raise ValueError(f"Acted({self.metric!r}): op must be one of {', '.join(OPS)}, got {self.op!r}")
        if self.reduce not in REDUCE:
            raise ValueError(f"Acted({self.metric!r}): reduce must be one of {', '.join(REDUCE)}, got {self.reduce!r}")

    def describe(self) -> str:
        how = (f"share of steps with {self.metric} > {self.step_above:g}" if self.reduce == "share"
               else f"{self.reduce} {self.metric}")
        return f"{how} {self.op} {self.threshold:g}" + (f" ({self.what})" if self.what else "")

    def check(self, metrics: list[dict]) -> tuple[bool, str]:
        values = [float(m[self.metric]) for m in metrics if isinstance(m.get(self.metric), (int, float))
                  and not isinstance(m.get(self.metric), bool)]
        if not values:
            return False, f"{self.metric} never logged"
        if self.reduce == "share":
            value = sum(v > self.step_above for v in values) / len(values)
        elif self.reduce == "range":
            value = max(values) - min(values)
        elif self.reduce == "sum":
            value = sum(values)
        else:
            value = {"mean": lambda v: sum(v) / len(v), "max": max, "min": min}[self.reduce](values)
        name = f"share({self.metric} > {self.step_above:g})" if self.reduce == "share" else f"{self.reduce} {self.metric}"
        return OPS[self.op](value, self.threshold), f"{name} = {value:.4g}"


@dataclass(frozen=True)
class AnyOf:
    """At least one of ``criteria`` holds."""

    criteria: tuple

    def describe(self) -> str:
        return " or ".join(c.describe() for c in self.criteria)

    def check(self, metrics: list[dict]) -> tuple[bool, str]:
        results = [c.check(metrics) for c in self.criteria]
        return any(ok for ok, _ in results), " or ".join(note for _, note in results)


@dataclass(frozen=True)
class _Always:
    what: str = "a fixed change of formula: acts on every step"

    def describe(self) -> str:
        return f"always ({self.what})"

    def check(self, metrics: list[dict]) -> tuple[bool, str]:
        return True, "always"


ALWAYS = _Always()


def spread_ratio(probabilities) -> float:
    """Largest over smallest of a sampling distribution (1 = uniform; inf where one is 0): the
    metric the curricula log as ``curriculum/weight_ratio``."""
    values = list(probabilities)
    low = min(values)
    return float("inf") if low <= 0 else max(values) / low


#: a soft-token decoding acted: some response positions were fed a mixture of embeddings
SOFT_TOKENS_FED = Acted("decode/soft_frac", ">", 0.0, reduce="mean", what="response positions fed a soft token")

#: a distribution counts as moved away from uniform at this max/min ratio (C1's figure, used for
#: every curriculum of docs/hypotheses.md)
MOVED_FROM_UNIFORM = 1.5


def engagement(component) -> tuple | None:
    """The criteria of ``component`` (``None``: a baseline component, no mechanism)."""
    return component.engagement()


def check_run(components: list, metrics: list[dict]) -> dict:
    """Per mechanism component (by registered name), whether it acted in a run with these
    metrics: ``{"engaged": bool | None, "components": {name: {"engaged", "criteria", "notes"}}}``;
    ``engaged`` is None where no component is a mechanism (a baseline recipe)."""
    out = {}
    for component in components:
        criteria = component.engagement()
        if criteria is None:
            continue
        results = [c.check(metrics) for c in criteria]
        name = component.registered_name
        while name in out:  # two components of one name (e.g. two sft terms) keep both
            name += "'"
        out[name] = {"engaged": all(ok for ok, _ in results),
                     "criteria": [c.describe() for c in criteria], "notes": [note for _, note in results]}
    return {"engaged": all(v["engaged"] for v in out.values()) if out else None, "components": out}
