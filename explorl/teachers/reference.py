"""The reference solution of each problem: a data file's solution field (``solution_key``) where
the data has one, else the reference answer written as the source's verifier reads it.

A solution field is worked steps whose final answer may not be in the form the verifier
extracts (a ``#### 72`` line where the verifier reads ``\\boxed{}``); a candidate the verifier
does not score 1 is completed with the reference answer, and dropped if it still fails.
"""
from __future__ import annotations

from explorl.registry import register
from explorl.teachers import Teacher


@register("teacher", "reference", paper="reference solutions (a data file's solution field, or the answer)")
class Reference(Teacher):
    def __init__(self, use_solution: bool = True):
        self.use_solution = use_solution

    def bind(self, tasks, engine, verify) -> None:
        self.tasks, self.verify = tasks, verify

    def solutions(self, problem, n, ctx=None):
        answer = self.tasks.sources[problem.source].reference_completion(problem)
        if not (self.use_solution and problem.solution):
            return [answer][:n]
        for candidate in (problem.solution, f"{problem.solution}\n{answer}"):
            if self.verify([problem], [candidate])[0] >= 1.0:
                return [candidate][:n]
        return [answer][:n]
