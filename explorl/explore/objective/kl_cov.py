"""KL-Cov: a KL penalty on the few tokens with the largest covariance.

Cui et al., *The Entropy Mechanism of Reinforcement Learning for Reasoning Language Models*,
arXiv:2505.22617 (verl ``compute_policy_loss_kl_cov``):

    Cov_t = (A_t − mean A) · (log π_θ(o_t) − mean log π_θ)      over the minibatch's valid tokens
    the top k = max(1, ⌊r·N⌋) tokens by Cov:  ℓ_t = −A_t ρ_t + β |log π_θ(o_t) − log π_old(o_t)|
    every other token:                         ℓ_t = −A_t ρ_t

Documented choices:

- **No PPO clip** (code): verl's KL-Cov uses the unclipped −A·ρ for every token; the KL term
  is the trust region. ``ppo_clip_others=True`` instead gives the unselected tokens the PPO
  clip (``clip_ratio_low``/``clip_ratio_high``), an option, not the paper's code.
- β (``ppo_kl_coef``): verl's function falls back to 1.0 and its yaml sets 0.1; the default
  here is 1.0. r (``kl_cov_ratio``) = 2e-4; the paper's per-model k values are UNVERIFIED
  (some copies of the code pass r as a percent, i.e. /100).
- |log π_θ − log π_old| has zero gradient where π_θ = π_old (the first pass over a batch), as
  in verl; the penalty acts from the second minibatch or epoch on.
"""
from __future__ import annotations

import torch

from explorl.explore.acted import Acted
from explorl.explore.base import LossContext, Objective
from explorl.explore.objective.clip_cov import token_covariance
from explorl.explore.objective.ppo_clip import clipped_surrogate, masked_mean
from explorl.registry import register


@register("objective", "kl_cov", paper="KL-Cov, The Entropy Mechanism of RL for Reasoning LMs (arXiv:2505.22617)")
class KLCov(Objective):
    engaged_when = (Acted("loss/kl_cov_frac", ">", 0, what="tokens penalised per step > 0"),)
    kind = "policy"

    def __init__(self, kl_cov_ratio: float = 2e-4, ppo_kl_coef: float = 1.0, ppo_clip_others: bool = False,
                 clip_ratio_low: float = 0.2, clip_ratio_high: float = 0.2):
        if not 0 < kl_cov_ratio <= 1:
            raise ValueError(f"objective kl_cov: kl_cov_ratio must be in (0, 1], got {kl_cov_ratio}")
        self.ratio, self.coef, self.clip_others = kl_cov_ratio, ppo_kl_coef, ppo_clip_others
        self.eps_low, self.eps_high = clip_ratio_low, clip_ratio_high

    def select(self, ctx: LossContext) -> torch.Tensor:
        """Boolean ``(R, L)``: the top-covariance tokens that get the KL penalty."""
        valid = (ctx.mask > 0).flatten()
        idx = valid.nonzero().squeeze(-1)
        chosen = torch.zeros_like(valid)
        if len(idx):
            cov = token_covariance(ctx.advantages, ctx.logp, ctx.mask).flatten()[idx]
            k = max(1, int(len(idx) * self.ratio))
            chosen[idx[torch.topk(cov, k).indices]] = True
        return chosen.view_as(ctx.mask)

    def term(self, ctx):
        log_ratio = ctx.logp - ctx.old_logp
        ratio = torch.exp(log_ratio)
        if self.clip_others:
            base, _, _ = clipped_surrogate(ratio, ctx.advantages, self.eps_low, self.eps_high)
        else:
            base = -ctx.advantages * ratio
        chosen = self.select(ctx)
        penalised = -ctx.advantages * ratio + self.coef * log_ratio.abs()
        loss = torch.where(chosen, penalised, base)
        return loss, {"loss/kl_cov_frac": masked_mean(chosen, ctx.mask),
                      "loss/kl_cov_abs_kl": masked_mean(log_ratio.detach().abs(), ctx.mask),
                      "loss/ratio_mean": masked_mean(ratio.detach(), ctx.mask)}
