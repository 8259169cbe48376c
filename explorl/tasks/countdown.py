"""Countdown: reach a target from given numbers with ``+ - *`` and parentheses.

Prompt ``"3,5,7>22:"`` means: using each of 3, 5, 7 at most once, write an expression whose
value is 22 (e.g. ``"3*5+7"``). Completions are parsed by a small recursive-descent parser
(never ``eval``); unary minus and division are not allowed.
"""
from __future__ import annotations

import itertools
import random
from collections import Counter

from .problem import Problem, TaskSource

MAX_COMPLETION_CHARS = 64  # longer completions score 0 without parsing
MAX_TARGET = 999
_PRECEDENCE = {"+": 1, "-": 1, "*": 2}


def parse_expression(text: str) -> tuple[int, list[int]]:
    """Return ``(value, numbers_used)`` of an integer expression over ``+ - * ( )``.

    Spaces are ignored. Raises ``ValueError`` on any other character, on unary minus, on
    unbalanced parentheses or trailing tokens, and on input over ``MAX_COMPLETION_CHARS``.
    """
    if len(text) > MAX_COMPLETION_CHARS:
        raise ValueError("expression too long")
    tokens: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == " ":
            i += 1
        elif ch in "0123456789":
            j = i
            while j < len(text) and text[j] in "0123456789":
                j += 1
            tokens.append(text[i:j])
            i = j
        elif ch in "+-*()":
            tokens.append(ch)
            i += 1
        else:
            raise ValueError(f"unexpected character {ch!r}")
    used: list[int] = []
    pos = 0

    def peek() -> str | None:
        return tokens[pos] if pos < len(tokens) else None

    def expr() -> int:
        nonlocal pos
        value = term()
        while peek() in ("+", "-"):
            op = tokens[pos]
            pos += 1
            rhs = term()
            value = value + rhs if op == "+" else value - rhs
        return value

    def term() -> int:
        nonlocal pos
        value = factor()
        while peek() == "*":
            pos += 1
            value *= factor()
        return value

    def factor() -> int:
        nonlocal pos
        tok = peek()
        if tok is None:
            raise ValueError("unexpected end of expression")
        pos += 1
        if tok == "(":
            value = expr()
            if peek() != ")":
                raise ValueError("missing ')'")
            pos += 1
            return value
        if tok.isdigit():
            used.append(int(tok))
            return int(tok)
        raise ValueError(f"unexpected token {tok!r}")

    value = expr()
    if pos != len(tokens):
        raise ValueError(f"trailing token {tokens[pos]!r}")
    return value, used


def parse_prompt(prompt: str) -> tuple[list[int], int]:
    """``"3,5,7>22:"`` -> ``([3, 5, 7], 22)``."""
    numbers, target = prompt.rstrip(":").split(">")
    return [int(n) for n in numbers.split(",")], int(target)


def _build(rng: random.Random, items: list[int]):
    if len(items) == 1:
        return items[0]
    split = rng.randint(1, len(items) - 1)
    return (rng.choice("+-*"), _build(rng, items[:split]), _build(rng, items[split:]))


def _value(node) -> int:
    if isinstance(node, int):
        return node
    op, left, right = node
    a, b = _value(left), _value(right)
    return a + b if op == "+" else a - b if op == "-" else a * b


def _render(node, parent: str | None = None, right: bool = False) -> str:
    """Infix text with only the parentheses the precedence rules need."""
    if isinstance(node, int):
        return str(node)
    op, left, rhs = node
    text = f"{_render(left, op)}{op}{_render(rhs, op, right=True)}"
    if parent is not None and (
        _PRECEDENCE[parent] > _PRECEDENCE[op] or (right and parent == "-" and _PRECEDENCE[op] == 1)
    ):
        return f"({text})"
    return text


def countdown_solutions(numbers: list[int], target: int, order: str, limit: int, max_nodes: int = 200_000):
    """Up to ``limit`` distinct expressions over ``numbers`` (each used at most once) equal to
    ``target``, found by a depth-first search over combinations in the given ``order``."""
    ops = "+-*" if order == "ascending" else "*+-"
    found, seen, nodes = [], set(), [0]

    def search(items):
        nodes[0] += 1
        if len(found) >= limit or nodes[0] > max_nodes:
            return
        for _, tree in items:
            if _value(tree) == target:
                text = _render(tree)
                if text not in seen and isinstance(tree, tuple):
                    seen.add(text)
                    found.append(text)
        if len(items) < 2:
            return
        for (i, a), (j, b) in itertools.permutations(enumerate(items), 2):
            if len(found) >= limit:
                return
            for op in ops:
                if op == "+" and i > j or op == "*" and i > j:  # commutative: one order is enough
                    continue
                rest = [x for k, x in enumerate(items) if k not in (i, j)]
                search(rest + [(None, (op, a[1], b[1]))])

    start = sorted(numbers, reverse=order == "descending")
    search([(None, n) for n in start])
    return found


class Countdown(TaskSource):
    """``numbers`` values in 1..``max_value``; target reachable from a subset of >= 2 of them.

    The target lies in 1..``MAX_TARGET`` and is never one of the given numbers (else echoing
    that number would solve the problem without any arithmetic). The reference answer is the
    expression that produced it, but any valid expression scores 1.0.
    """

    name = "countdown"
    param_ranges = {"numbers": (2, 5), "max_value": (3, 20)}

    def generate(self, rng: random.Random, params: dict[str, float]) -> tuple[str, str]:
        count = max(2, int(params["numbers"]))
        numbers = [rng.randint(1, max(1, int(params["max_value"]))) for _ in range(count)]
        for _ in range(50):
            subset = rng.sample(numbers, rng.randint(2, count))
            tree = _build(rng, subset)
            if 1 <= _value(tree) <= MAX_TARGET and _value(tree) not in numbers:
                break
        else:  # the sum of all the numbers always qualifies: it exceeds each of them (>= 2 positives)
            tree = numbers[0]
            for x in numbers[1:]:
                tree = ("+", tree, x)
        prompt = f"{','.join(map(str, numbers))}>{_value(tree)}:"
        return prompt, _render(tree)

    def score(self, problem: Problem, completion: str) -> float:
        if not isinstance(completion, str) or len(completion) > 4 * MAX_COMPLETION_CHARS:
            return 0.0
        numbers, target = parse_prompt(problem.prompt)
        try:
            value, used = parse_expression(completion.strip())
        except ValueError:
            return 0.0
        if Counter(used) - Counter(numbers):  # a number not given, or used too often
            return 0.0
        return 1.0 if value == target else 0.0
