"""Entropy bonus: ℓ_t = −c · H_t with H_t the full-vocabulary entropy at token t
(verl ``entropy_coeff``, TRL ``entropy_coef``)."""
from __future__ import annotations

from explorl.explore.base import Objective
from explorl.explore.objective.ppo_clip import masked_mean
from explorl.registry import register


@register("objective", "entropy", paper="entropy bonus (Williams & Peng 1991; verl entropy_coeff)")
class EntropyBonus(Objective):
    needs = frozenset({"entropy"})

    def __init__(self, coef: float = 0.001):
        self.coef = coef

    def term(self, ctx):
        return -self.coef * ctx.entropy, {"loss/entropy_bonus": self.coef * masked_mean(ctx.entropy.detach(), ctx.mask)}
