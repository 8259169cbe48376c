"""Clip-Cov: PPO loss with the gradient of a few high-covariance tokens cut.

Cui et al., *The Entropy Mechanism of Reinforcement Learning for Reasoning Language Models*,
arXiv:2505.22617 (verl ``compute_policy_loss_clip_cov``). Entropy falls in proportion to the
covariance between a token's log-probability and its advantage; Clip-Cov stops the gradient of
a random few of the tokens that drive it:

    Cov_t = (A_t − mean A) · (log π_θ(o_t) − mean log π_θ)      over the minibatch's valid tokens
    among tokens NOT already clipped by PPO with lb < Cov_t < ub, draw ⌊r·N⌋ (at least 1)
    uniformly at random; their per-token loss is multiplied by 0 (no loss, no gradient)

Defaults from verl: r = ``clip_cov_ratio`` = 2e-4, lb = 1, ub = 5 (SPEAR uses r = 0.02,
ub = 40); the PPO part uses clip 0.2/0.2 and, as in verl's function, no dual clip
(``clip_ratio_c=None``; set it to add one). N counts the minibatch's valid tokens, as verl's
micro-batch. The random draw uses the update's generator (``ctx.extras["generator"]``), so a
run is reproducible.
"""
from __future__ import annotations

import torch

from explorl.explore.acted import Acted
from explorl.explore.base import LossContext, Objective
from explorl.explore.objective.ppo_clip import clipped_surrogate, masked_mean
from explorl.registry import register


def token_covariance(adv: torch.Tensor, logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(A − mean A)(log π − mean log π) per token, means over the valid tokens; detached."""
    mask = mask.float()
    n = mask.sum().clamp_min(1.0)
    adv, logp = adv.detach().float(), logp.detach().float()
    return (adv - (adv * mask).sum() / n) * (logp - (logp * mask).sum() / n)


def generator_of(ctx: LossContext) -> torch.Generator:
    gen = ctx.extras.get("generator")
    return gen if gen is not None else torch.Generator().manual_seed(ctx.step)


@register("objective", "clip_cov", paper="Clip-Cov, The Entropy Mechanism of RL for Reasoning LMs (arXiv:2505.22617)")
class ClipCov(Objective):
    engaged_when = (Acted("loss/clip_cov_frac", ">", 0, what="tokens cut per step > 0"),)
    kind = "policy"

    def __init__(self, clip_cov_ratio: float = 2e-4, clip_cov_lb: float = 1.0, clip_cov_ub: float = 5.0,
                 clip_ratio_low: float = 0.2, clip_ratio_high: float = 0.2, clip_ratio_c: float | None = None):
        if not 0 < clip_cov_ratio <= 1:
            raise ValueError(f"objective clip_cov: clip_cov_ratio must be in (0, 1], got {clip_cov_ratio}")
        if clip_cov_lb >= clip_cov_ub:
            raise ValueError(f"objective clip_cov: clip_cov_lb ({clip_cov_lb}) must be < clip_cov_ub ({clip_cov_ub})")
        self.ratio, self.lb, self.ub = clip_cov_ratio, clip_cov_lb, clip_cov_ub
        self.eps_low, self.eps_high, self.clip_c = clip_ratio_low, clip_ratio_high, clip_ratio_c

    def select(self, ctx: LossContext, clipped: torch.Tensor) -> torch.Tensor:
        """Boolean ``(R, L)``: the tokens whose gradient is cut."""
        valid = ctx.mask > 0
        cov = token_covariance(ctx.advantages, ctx.logp, ctx.mask)
        band = valid & ~clipped & (cov > self.lb) & (cov < self.ub)
        candidates = band.flatten().nonzero().squeeze(-1)
        chosen = torch.zeros_like(valid).flatten()
        if len(candidates):
            n = max(int(self.ratio * int(valid.sum())), 1)
            perm = torch.randperm(len(candidates), generator=generator_of(ctx))
            chosen[candidates[perm[:n].to(candidates.device)]] = True
        return chosen.view_as(valid)

    def term(self, ctx):
        ratio = torch.exp(ctx.logp - ctx.old_logp)
        loss, low, high = clipped_surrogate(ratio, ctx.advantages, self.eps_low, self.eps_high, self.clip_c)
        unclipped = -ctx.advantages * ratio
        clipped = (loss.detach() != unclipped.detach()) & (ctx.mask > 0)  # PPO (or dual) clip already stops these
        cut = self.select(ctx, clipped)
        loss = loss * (~cut).to(loss.dtype)
        return loss, {"loss/clip_frac_low": masked_mean(low, ctx.mask),
                      "loss/clip_frac_high": masked_mean(high, ctx.mask),
                      "loss/clip_cov_frac": masked_mean(cut, ctx.mask),
                      "loss/ratio_mean": masked_mean(ratio.detach(), ctx.mask)}
