"""Procedural solvers for the testbed sources: a teacher that always knows an answer.

Addition, multiplication, sorting and reversal have one correct answer, so one solution (the
reference answer, written as the source's verifier reads it). Countdown has many: the solver
searches for expressions over the given numbers in an ``order`` of its own —
``ascending`` combines the smallest numbers first and tries ``+ - *``, ``descending`` the
largest first and tries ``* + -`` — so two solver teachers of different orders give genuinely
different solutions (``3*5+7`` against ``7+3*5``, or another route to the target), which is
what multi-teacher methods choose between; for ``countdown_search`` the expression is written as
its verifier reads it (``>3*5+7``: the answer, with no search shown). Sources it has no solver
for get none.
"""
from __future__ import annotations

import itertools

from explorl.registry import register
from explorl.tasks.countdown import _render, _value, parse_prompt
from explorl.teachers import Teacher

SIMPLE = ("addition", "multiplication", "sorting", "reversal", "addition_steps", "multiplication_steps")


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


@register("teacher", "solver", paper="procedural solvers for the testbed sources (countdown: search orders)")
class Solver(Teacher):
    def __init__(self, order: str = "ascending", max_nodes: int = 200_000):
        if order not in ("ascending", "descending"):
            raise ValueError(f"teacher solver: order must be ascending or descending, got {order!r}")
        self.order, self.max_nodes = order, max_nodes

    def bind(self, tasks, engine, verify) -> None:
        self.tasks = tasks

    def solutions(self, problem, n, ctx=None):
        if problem.source == "countdown" or problem.prompt.count(">") == 1 and problem.prompt.endswith(":"):
            try:
                numbers, target = parse_prompt(problem.prompt)
            except ValueError:
                return []
            found = countdown_solutions(numbers, target, self.order, n, self.max_nodes)
            source = getattr(self, "tasks", None) and self.tasks.sources.get(problem.source)
            write = getattr(source, "write_answer", None)  # countdown_search reads the answer after '>'
            return [write(text) for text in found] if write else found
        if problem.source in SIMPLE:
            return [self.tasks.sources[problem.source].reference_completion(problem)][:n]
        return []
