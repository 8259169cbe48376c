"""Uniform sampling over the task mix (by the mix's source weights)."""
from __future__ import annotations

from explorl.explore.base import Curriculum
from explorl.registry import register


@register("curriculum", "uniform", paper="baseline: sources by their configured weights, parameters uniform")
class Uniform(Curriculum):
    def next(self, n):
        problems = [self.tasks.sample(self.rng) for _ in range(n)]
        return problems, {}
