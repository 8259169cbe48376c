"""Integer addition and multiplication, e.g. ``"347+82="`` -> ``"429"``."""
from __future__ import annotations

import random

from .problem import Problem, TaskSource


def _operand(rng: random.Random, digits: int) -> int:
    """A uniform integer with exactly ``digits`` digits (one digit includes 0)."""
    if digits <= 1:
        return rng.randint(0, 9)
    return rng.randint(10 ** (digits - 1), 10**digits - 1)


def _operands(rng: random.Random, digits: int) -> tuple[int, int]:
    """Two operands of 1..``digits`` digits, at least one with exactly ``digits``."""
    digits = max(1, int(digits))
    exact = _operand(rng, digits)
    other = _operand(rng, rng.randint(1, digits))
    return (exact, other) if rng.random() < 0.5 else (other, exact)


def exact_match(problem: Problem, completion: str) -> float:
    """1.0 iff ``completion`` equals the reference answer up to surrounding whitespace."""
    return 1.0 if completion.strip() == problem.answer else 0.0


class Addition(TaskSource):
    """``a+b=`` with operands of up to ``digits`` digits; answer is the decimal sum."""

    name = "addition"
    param_ranges = {"digits": (1, 5)}

    def generate(self, rng: random.Random, params: dict[str, float]) -> tuple[str, str]:
        a, b = _operands(rng, params["digits"])
        return f"{a}+{b}=", str(a + b)

    score = staticmethod(exact_match)


class Multiplication(TaskSource):
    """``a*b=`` with operands of up to ``digits`` digits; answer is the decimal product."""

    name = "multiplication"
    param_ranges = {"digits": (1, 3)}

    def generate(self, rng: random.Random, params: dict[str, float]) -> tuple[str, str]:
        a, b = _operands(rng, params["digits"])
        return f"{a}*{b}=", str(a * b)

    score = staticmethod(exact_match)
