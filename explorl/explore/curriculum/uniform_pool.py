"""Uniform sampling over the learnability curriculum's fixed pool: its control.

Learnability (``explorl.explore.curriculum.learnability``) trains on a fixed pool of
``pool_size`` problems per source and samples them ∝ p(1 − p). Part of any gain could come from
the pool alone (seeing the same 64 problems again and again, memorising them), not from the
prioritisation. This curriculum draws the very same pool (the same draws from the same rng at
``bind``, so with the same run seed the same problems) and samples it by the sources' weights
only, every pool problem of a source alike, without replacement within a batch as learnability
does. ``learnability`` − ``uniform_pool`` is the prioritisation's own effect.
"""
from __future__ import annotations

from explorl.explore.curriculum.learnability import Learnability
from explorl.registry import register


@register("curriculum", "uniform_pool", paper="control of learnability (arXiv:2502.12272): its pool, sampled uniformly")
class UniformPool(Learnability):
    engaged_when = None  # a control: no mechanism of its own

    def __init__(self, pool_size: int = 64):
        super().__init__(pool_size=pool_size)

    def priority(self, problem) -> float:
        return 1.0
