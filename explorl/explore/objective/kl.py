"""KL penalty to the frozen reference policy with the k3 estimator (Schulman's "low-var KL").

ℓ_t = β (e^x − x − 1), x = log π_ref − log π_θ clamped to [−10, 10] (verl ``low_var_kl``,
``kl_loss_coef``; TRL ``beta``).
"""
from __future__ import annotations

import torch

from explorl.explore.base import Objective
from explorl.explore.objective.ppo_clip import masked_mean
from explorl.registry import register


def k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    x = (ref_logp - logp).clamp(-10.0, 10.0)
    return torch.exp(x) - x - 1.0


@register("objective", "kl", paper="KL to reference, k3 estimator (verl low_var_kl; GRPO, arXiv:2402.03300)")
class KL(Objective):
    needs = frozenset({"ref_logp"})

    def __init__(self, coef: float = 0.001):
        self.coef = coef

    def term(self, ctx):
        kl = k3(ctx.logp, ctx.ref_logp)
        return self.coef * kl, {"loss/kl": masked_mean(kl.detach(), ctx.mask)}
