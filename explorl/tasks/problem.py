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
    ``prefix`` is the start of a response the policy continues (guidance methods that return to a
    stored prefix): it follows the rendered prompt, carries no gradient, and the verifier sees
    ``prefix + completion``.
    ``solution`` is a reference solution (worked steps) where the data has one, for methods that
    guide the policy with it; it is never shown to the policy unless such a method does so.
    """

    id: str
    prompt: str
    answer: str
    source: str
    params: dict[str, float] = field(default_factory=dict, compare=False, hash=False)
    context: str = field(default="", compare=False, hash=False)
    solution: str = field(default="", compare=False, hash=False)
    prefix: str = field(default="", compare=False, hash=False)

    def completed(self, completion: str) -> str:
        """The whole response a verifier judges: a stored ``prefix`` (the start of a response the
        policy is asked to continue, placed after the prompt) followed by the continuation."""
        return self.prefix + completion


class TaskSource:
    """A generator of problems of one kind, with its verifier.

    Subclasses set ``name`` and ``param_ranges`` (inclusive ``(low, high)`` per difficulty
    parameter) and implement ``generate`` and ``score``. ``score`` should return 0 for a
    malformed completion rather than raise: an exception counts as a verifier error.
    """

    name: str = ""
    param_ranges: dict[str, tuple[float, float]] = {}
    integer_params: bool = True
    #: The most a wrong completion may score (a verifier's format reward); ``check_task`` holds
    #: the completions that are never correct to it.
    max_wrong_reward: float = 0.0

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
        """Reward in [0, 1] of ``completion`` for ``problem``; 0 for garbage (raising is a bug)."""
        raise NotImplementedError

    # --- provided -----------------------------------------------------------------
    def extract_answer(self, completion: str) -> str | None:
        """The answer ``completion`` states, as the verifier reads it (``None``: it states none):
        the stripped completion here; a source whose verifier extracts an answer overrides this
        (methods that count distinct answers, as answer entropy, read it)."""
        return completion.strip() or None

    def reference_completion(self, problem: Problem) -> str:
        """A completion that must score 1: the reference answer written the way the verifier reads
        answers (e.g. ``\\boxed{answer}`` for a verifier that extracts boxed answers)."""
        return problem.answer

    def sample_reference(self, problem: Problem, rng: random.Random) -> str:
        """A reference completion drawn with ``rng``, for a source whose worked answers may take
        several forms (a search in a random order); the warm-up trains on these. Default: the
        one ``reference_completion``."""
        return self.reference_completion(problem)

    def text_roles(self, completion: str) -> list[str] | None:
        """The role of each character of ``completion`` in the source's worked form (e.g.
        ``decision``, ``arithmetic``), for the entropy profile (``explorl.eval.entropy_profile``);
        ``None`` where the source names none."""
        return None

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
        """``score`` checked: a number in [0, 1], else ``InvalidReward``. Exceptions of ``score``
        propagate: the trainer's guard (``explorl.tasks.guard``) counts them as verifier errors,
        so a broken verifier is never mistaken for a wrong answer."""
        reward = self.score(problem, completion)
        if isinstance(reward, (bool, str, bytes)):
            raise InvalidReward(f"source {self.name!r}: score returned {reward!r}, not a number")
        try:
            value = float(reward)
        except (TypeError, ValueError):
            raise InvalidReward(f"source {self.name!r}: score returned {reward!r}, not a number") from None
        if not 0.0 <= value <= 1.0:  # NaN fails this too
            raise InvalidReward(f"source {self.name!r}: score returned {value!r}, outside [0, 1]")
        return value


class InvalidReward(ValueError):
    """A verifier returned something that is not a reward in [0, 1]."""
