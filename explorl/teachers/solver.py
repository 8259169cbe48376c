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

from explorl.registry import register
from explorl.tasks.countdown import countdown_solutions, parse_prompt
from explorl.teachers import Teacher

SIMPLE = ("addition", "multiplication", "sorting", "reversal", "addition_steps", "multiplication_steps")


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
