"""A verifiable problem and the protocol every task source follows."""
from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Problem:
    """One prompt with a checkable answer.

    ``id`` is stable across runs (it is derived from the source, its parameters and the
    seed that generated it), so per-problem state (Knapsack, learnability, XRPO) can be
    keyed by it. ``params`` holds the numeric difficulty parameters the problem was drawn
    with, e.g. ``{"digits": 3}``. ``context`` is text the policy sees before ``prompt``
    (e.g. in-context exemplars); verifiers only ever read ``prompt`` and ``answer``.
    """

    id: str
    prompt: str
    answer: str
    source: str
    params: dict[str, float] = field(default_factory=dict, compare=False, hash=False)
    context: str = field(default="", compare=False, hash=False)


class TaskSource:
    """A generator of problems of one kind, with its verifier.

    Subclasses set ``name`` and ``param_ranges`` (inclusive ``(low, high)`` per difficulty
    parameter) and implement ``generate`` and ``score``. ``verify`` wraps ``score`` so that
    no completion, however malformed, raises or leaves [0, 1].
    """

    name: str = ""
    param_ranges: dict[str, tuple[float, float]] = {}
    integer_params: bool = True

    def __init__(self, **ranges: tuple[float, float] | list[float]):
        merged = dict(type(self).param_ranges)
        for key, value in ranges.items():
            if key not in merged:
                raise ValueError(
                    f"task source {self.name!r}: unknown difficulty parameter {key!r} "
                    f"(valid: {sorted(merged)})")
            if isinstance(value, (int, float)):
                low, high = value, value
            else:
                try:
                    if isinstance(value, (str, bytes)):
                        raise TypeError
                    low, high = (float(v) for v in value)
                except (TypeError, ValueError):
                    raise ValueError(
                        f"task source {self.name!r}: range for {key!r} must be a number or a "
                        f"[low, high] pair, got {value!r}") from None
            if low > high:
                raise ValueError(f"task source {self.name!r}: range for {key!r} has low > high: {value}")
            merged[key] = (low, high)
        self.param_ranges = merged

    # --- to implement -------------------------------------------------------------
    def generate(self, rng: random.Random, params: dict[str, float]) -> tuple[str, str]:
        """Return ``(prompt, reference_answer)`` for the given difficulty parameters."""
        raise NotImplementedError

    def score(self, problem: Problem, completion: str) -> float:
        """Reward of ``completion`` for ``problem``; may raise on garbage (``verify`` guards)."""
        raise NotImplementedError

    # --- provided -----------------------------------------------------------------
    def sample_params(self, rng: random.Random) -> dict[str, float]:
        out = {}
        for key, (low, high) in self.param_ranges.items():
            out[key] = rng.randint(int(low), int(high)) if self.integer_params else rng.uniform(low, high)
        return out

    def clip_params(self, params: dict[str, float]) -> dict[str, float]:
        """Clamp (and round, for integer sources) parameters into ``param_ranges``."""
        out = {}
        for key, (low, high) in self.param_ranges.items():
            value = min(max(float(params.get(key, low)), low), high)
            out[key] = int(round(value)) if self.integer_params else value
        return out

    def problem(self, seed: int, params: dict[str, float] | None = None) -> Problem:
        """The problem generated from ``seed`` (and ``params``, else drawn from the seed)."""
        rng = random.Random(f"{self.name}:{seed}")
        params = self.clip_params(params) if params is not None else self.sample_params(rng)
        prompt, answer = self.generate(rng, params)
        tag = "-".join(f"{k}{params[k]:g}" for k in sorted(params))
        return Problem(id=f"{self.name}/{tag}/{seed}", prompt=prompt, answer=answer,
                       source=self.name, params=dict(params))

    def sample(self, rng: random.Random, params: dict[str, float] | None = None) -> Problem:
        """A fresh training problem; the seed is drawn from ``rng`` (kept apart from eval seeds)."""
        return self.problem(rng.randrange(10**9, 2 * 10**9), params)

    def eval_set(self, n: int, seed: int = 0) -> list[Problem]:
        """A fixed held-out set: seeds below 10**9 never occur in training."""
        return [self.problem(seed * 100_000 + i) for i in range(n)]

    def verify(self, problem: Problem, completion: str) -> float:
        """``score`` made total: never raises, always returns a float in [0, 1]."""
        try:
            reward = float(self.score(problem, completion))
        except Exception:  # a verifier must survive any completion text
            return 0.0
        if reward != reward:  # NaN
            return 0.0
        return min(max(reward, 0.0), 1.0)
