"""PPO clipped surrogate with decoupled clip range (DAPO clip-higher) and dual clip.

ℓ_t = −min(ρ_t A_t, clip(ρ_t, 1−ε_low, 1+ε_high) A_t), ρ_t = π_θ / π_old
(Schulman et al. 2017; DAPO, arXiv:2503.14476, for ε_high > ε_low). For A_t < 0 the loss is
also capped at −c·A_t (dual clip, verl ``clip_ratio_c``; ``None`` turns it off).
With ``tis_cap`` set, each token is weighted by min(π_old / π_behaviour, cap), the truncated
importance sampling correction used when rollouts were not drawn from π_old at T = 1
(annealed or tempered decoding).
"""
from __future__ import annotations

import torch

from explorl.explore.acted import Acted
from explorl.explore.base import LossContext, Objective
from explorl.registry import register


def clipped_surrogate(ratio, adv, eps_low, eps_high, clip_c=None):
    """Per-token PPO loss and the masks of tokens where the low / high clip is active."""
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - eps_low, 1.0 + eps_high)
    loss = torch.maximum(unclipped, clipped)
    if clip_c is not None:
        loss = torch.where(adv < 0, torch.minimum(loss, -adv * clip_c), loss)
    clipped_low = (ratio < 1.0 - eps_low) & (adv < 0)
    clipped_high = (ratio > 1.0 + eps_high) & (adv > 0)
    return loss, clipped_low, clipped_high


def truncated_is_weight(ctx: LossContext, cap: float | None) -> torch.Tensor | None:
    """min(π_old / π_behaviour, cap), detached; ``None`` when no correction is asked."""
    if cap is None:
        return None
    return torch.exp(ctx.old_logp - ctx.behaviour_logp).clamp(max=cap).detach()


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> float:
    mask = mask.float()
    return ((x.float() * mask).sum() / mask.sum().clamp_min(1.0)).item()


@register("objective", "ppo_clip", paper="PPO (arXiv:1707.06347); clip-higher from DAPO (arXiv:2503.14476)")
class PPOClip(Objective):
    kind = "policy"

    def __init__(self, clip_ratio_low: float = 0.2, clip_ratio_high: float = 0.2,
                 clip_ratio_c: float | None = 3.0, tis_cap: float | None = None):
        if clip_ratio_low < 0 or clip_ratio_high < 0:
            raise ValueError("objective ppo_clip: clip ratios must be >= 0")
        if clip_ratio_c is not None and clip_ratio_c <= 1:
            raise ValueError(f"objective ppo_clip: clip_ratio_c must be > 1, got {clip_ratio_c}")
        self.eps_low, self.eps_high = clip_ratio_low, clip_ratio_high
        self.clip_c, self.tis_cap = clip_ratio_c, tis_cap

    def engagement(self):
        """The symmetric clip is GRPO's; clip-higher (ε_high > ε_low) acts where a token's ratio
        passes 1 + ε_low with a positive advantage, which the symmetric clip would hold back."""
        if self.eps_high <= self.eps_low:
            return None
        return (Acted("loss/clip_higher_frac", ">", 0,
                      what=f"tokens with A > 0 and ratio in (1 + {self.eps_low:g}, 1 + {self.eps_high:g}]"),)

    def term(self, ctx):
        ratio = torch.exp(ctx.logp - ctx.old_logp)
        loss, low, high = clipped_surrogate(ratio, ctx.advantages, self.eps_low, self.eps_high, self.clip_c)
        weight = truncated_is_weight(ctx, self.tis_cap)
        metrics = {"loss/clip_frac_low": masked_mean(low, ctx.mask),
                   "loss/clip_frac_high": masked_mean(high, ctx.mask),
                   "loss/ratio_mean": masked_mean(ratio.detach(), ctx.mask)}
        if self.eps_high > self.eps_low:  # what clip-higher trains on that the symmetric clip would not
            freed = (ratio > 1.0 + self.eps_low) & (ratio <= 1.0 + self.eps_high) & (ctx.advantages > 0)
            metrics["loss/clip_higher_frac"] = masked_mean(freed, ctx.mask)
        if weight is not None:
            loss = loss * weight
            metrics["loss/tis_weight_mean"] = masked_mean(weight, ctx.mask)
        return loss, metrics
