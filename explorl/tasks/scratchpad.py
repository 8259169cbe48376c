"""Arithmetic with its working written out: responses of 25–100 tokens that end in the answer.

``addition_steps``: ``"4738+925="``, worked column by column from the right, each column as
``a+b+carry=sum``, then ``>`` and the answer::

    8+5+0=13;3+2+1=6;7+9+0=16;4+0+1=5;>5663

``multiplication_steps``: ``"347*26="``, one partial product per digit of the second factor,
each added to the running total at its place value, then ``>`` and the answer::

    347*6=2082;347*2=694;2082+6940=9022;>9022

The reference completion (what the warm start learns, and a reference teacher gives) is the
worked form; the verifier reads only the answer after the last ``>`` (exact match), as RLVR
verifiers read a final answer, so a policy may shorten, change or drop the working. These are
the testbed's long-reasoning sources: entropy along a response, forking tokens, decoding
schedules and length effects have a response to act on.
"""
from __future__ import annotations

import random

from .arithmetic import _operand
from .problem import Problem, TaskSource

ANSWER_MARK = ">"


def final_answer(completion: str) -> str | None:
    """The text after the last ``>`` (stripped), or ``None`` when there is none."""
    if ANSWER_MARK not in completion:
        return None
    return completion.rsplit(ANSWER_MARK, 1)[1].strip()


def answer_after_mark(problem: Problem, completion: str) -> float:
    return 1.0 if final_answer(completion) == problem.answer else 0.0


def column_addition(a: int, b: int) -> str:
    """``a+b`` worked column by column from the right, carries written out."""
    da, db = str(a)[::-1], str(b)[::-1]
    steps, carry = [], 0
    for i in range(max(len(da), len(db))):
        x = int(da[i]) if i < len(da) else 0
        y = int(db[i]) if i < len(db) else 0
        total = x + y + carry
        steps.append(f"{x}+{y}+{carry}={total}")
        carry = total // 10
    return ";".join(steps) + f";{ANSWER_MARK}{a + b}"


def long_multiplication(a: int, b: int) -> str:
    """``a*b`` as one partial product per digit of ``b`` added to a running total."""
    steps, total = [], None
    for place, digit in enumerate(reversed(str(b))):
        part = a * int(digit)
        steps.append(f"{a}*{digit}={part}")
        shifted = part * 10**place
        if total is None:
            total = shifted
        else:
            steps.append(f"{total}+{shifted}={total + shifted}")
            total += shifted
    return ";".join(steps) + f";{ANSWER_MARK}{a * b}"


class AdditionSteps(TaskSource):
    """``a+b=`` with both operands of ``digits`` digits, worked by columns."""

    name = "addition_steps"
    param_ranges = {"digits": (4, 8)}

    def generate(self, rng: random.Random, params: dict[str, float]) -> tuple[str, str]:
        a, b = _operand(rng, int(params["digits"])), _operand(rng, int(params["digits"]))
        return f"{a}+{b}=", str(a + b)

    def reference_completion(self, problem: Problem) -> str:
        a, b = (int(x) for x in problem.prompt[:-1].split("+"))
        return column_addition(a, b)

    score = staticmethod(answer_after_mark)

    def extract_answer(self, completion: str) -> str | None:
        return final_answer(completion) or None


class MultiplicationSteps(TaskSource):
    """``a*b=`` with a first factor of ``digits`` digits and a second of ``factor_digits``."""

    name = "multiplication_steps"
    param_ranges = {"digits": (2, 3), "factor_digits": (2, 3)}

    def generate(self, rng: random.Random, params: dict[str, float]) -> tuple[str, str]:
        a, b = _operand(rng, int(params["digits"])), _operand(rng, int(params["factor_digits"]))
        return f"{a}*{b}=", str(a * b)

    def reference_completion(self, problem: Problem) -> str:
        a, b = (int(x) for x in problem.prompt[:-1].split("*"))
        return long_multiplication(a, b)

    score = staticmethod(answer_after_mark)

    def extract_answer(self, completion: str) -> str | None:
        return final_answer(completion) or None
