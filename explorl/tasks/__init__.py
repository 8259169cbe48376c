"""Verifiable task sources, a registry of them, and ``TaskMix`` to sample across them."""
from __future__ import annotations

import random

from .arithmetic import Addition, Multiplication
from .countdown import Countdown
from .countdown_search import CountdownSearch
from .files import JsonlSource
from .kinds import make_task_source
from .mnns import MNNS
from .problem import Problem, TaskSource
from .scratchpad import AdditionSteps, MultiplicationSteps
from .sequences import Reversal, Sorting

#: Every character a built-in prompt or answer may use (the char-level tokenizer's vocabulary).
ALPHABET = "0123456789+-*/=(),:;<>?!. abcdefghijklmnopqrstuvwxyz"

#: The testbed's task mix (``Config().tasks``): each built-in source with its difficulty ranges.
TESTBED_MIX = {
    "addition": {"digits": [1, 4]},
    "multiplication": {"digits": [1, 3]},
    "countdown": {"numbers": [2, 4]},
    "sorting": {"length": [2, 8]},
    "reversal": {"length": [3, 10]},
}

SOURCES: dict[str, type[TaskSource]] = {
    cls.name: cls for cls in (Addition, Multiplication, Countdown, Sorting, Reversal, AdditionSteps,
                              MultiplicationSteps, CountdownSearch, MNNS)
}

__all__ = ["ALPHABET", "MNNS", "SOURCES", "Addition", "AdditionSteps", "Countdown", "CountdownSearch", "JsonlSource",
           "Multiplication", "MultiplicationSteps",
           "Problem", "Reversal", "Sorting", "TESTBED_MIX", "TaskMix", "TaskSource", "make_source"]


def make_source(name: str, **ranges) -> TaskSource:
    """Instantiate the registered source ``name`` with difficulty ``ranges`` (``key=[low, high]``)."""
    if name not in SOURCES:
        raise ValueError(f"unknown task source {name!r} (valid: {', '.join(sorted(SOURCES))})")
    return SOURCES[name](**ranges)


class TaskMix:
    """A weighted mixture of task sources, keyed by ``source.name``.

    ``weights`` defaults to uniform; a source missing from ``weights`` gets weight 1.0, and
    a source with weight 0 is never sampled (but still appears in ``eval_sets``).
    """

    def __init__(self, sources: dict[str, TaskSource], weights: dict[str, float] | None = None):
        if not sources:
            raise ValueError("TaskMix needs at least one task source")
        for key, src in sources.items():
            if key != src.name:
                raise ValueError(f"TaskMix key {key!r} differs from its source's name {src.name!r}")
        weights = dict(weights or {})
        unknown = set(weights) - set(sources)
        if unknown:
            raise ValueError(f"weights for unknown task sources {sorted(unknown)} "
                             f"(sources: {sorted(sources)})")
        self.sources = dict(sources)
        self.weights = {name: float(weights.get(name, 1.0)) for name in self.sources}
        negative = [name for name, w in self.weights.items() if not w >= 0]
        if negative:
            raise ValueError(f"task weights must be >= 0: {negative}")
        if sum(self.weights.values()) <= 0:
            raise ValueError("at least one task source needs a positive weight")

    @property
    def names(self) -> list[str]:
        return list(self.sources)

    def _source(self, name: str) -> TaskSource:
        if name not in self.sources:
            raise ValueError(f"task source {name!r} is not in this mix (sources: {self.names})")
        return self.sources[name]

    def sample(self, rng: random.Random, source: str | None = None,
               params: dict[str, float] | None = None) -> Problem:
        """A training problem from ``source`` (chosen by weight when ``None``)."""
        if source is None:
            source = rng.choices(self.names, weights=[self.weights[n] for n in self.names])[0]
        return self._source(source).sample(rng, params)

    def verify(self, problem: Problem, completion: str) -> float:
        """Reward in [0, 1] from the verifier of ``problem.source``; never raises for any completion."""
        return self._source(problem.source).verify(problem, completion)

    def extract_answer(self, problem: Problem, completion: str) -> str | None:
        """The answer ``completion`` states for ``problem``, as its source's verifier reads it."""
        return self._source(problem.source).extract_answer(completion)

    def eval_sets(self, n: int, seed: int = 0) -> dict[str, list[Problem]]:
        """``n`` fixed held-out problems per source."""
        return {name: src.eval_set(n, seed) for name, src in self.sources.items()}

    @classmethod
    def from_config(cls, cfg: dict) -> "TaskMix":
        """Build from ``{name: {"weight": w, "kind": k, <options>}}`` (``explorl.tasks.kinds``):
        without ``kind``, a built-in source and its difficulty ranges ``<param>: [low, high]``.

        Raises ``ValueError`` naming the source (and key) on an unknown source, an unknown
        key, or a malformed value.
        """
        sources, weights = {}, {}
        for name, opts in cfg.items():
            opts = {} if opts is None else opts
            if not isinstance(opts, dict):
                raise ValueError(f"task {name!r}: expected a mapping of options, got {opts!r}")
            opts = dict(opts)
            if "weight" in opts:
                weight = opts.pop("weight")
                if isinstance(weight, bool) or not isinstance(weight, (int, float)):
                    raise ValueError(f"task {name!r}: key 'weight' must be a number, got {weight!r}")
                weights[name] = weight
            sources[name] = make_task_source(name, opts)
        return cls(sources, weights)
