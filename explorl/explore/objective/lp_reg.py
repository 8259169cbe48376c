"""Lp-Reg: protect low-probability "reasoning spark" tokens with a KL to a min-p proxy.

*Low-probability Tokens Sustain Exploration in Reinforcement Learning with Verifiable Reward*
(Lp-Reg); code CarlanLark/Lp-Reg-dev
(``compute_policy_loss_lp_reg``, ``apply_min_p``).

Proxy (min-p filter of π_old at the rollout temperature, then renormalise):
    keep(a) = π_old(a) ≥ κ · max_a' π_old(a');   logits[~keep] = −1e4;   π_proxy = softmax(logits)
A token is regularised when all hold: A_t < 0; it is among the bottom ρ fraction by log π_θ of
the minibatch's negative-advantage tokens (only if ⌊ρ·N_neg⌋ > 1); π_θ(o_t) < π_proxy(o_t)
(which excludes the tokens the filter calls noise, whose π_proxy ≈ 0). Its loss becomes
    ℓ_t = −A_t ρ_t + β · k3(π_θ ‖ π_proxy),   k3 = e^x − x − 1,  x = log π_proxy − log π_θ
and every other token keeps the PPO clip.

Documented choices:

- **Where π_old's full distribution comes from.** The batch stores only π_old of the sampled
  token, so the proxy is built from the update's own logits, detached. With
  ``proxy_source="first_visit"`` (default) each row's proxy is computed on its pass in
  epoch 0 (``ctx.extras["epoch"]``) and cached by row for the later epochs of the step: it
  is π_old exactly for the first minibatch, and π after fewer than ``train.minibatches``
  optimizer steps for the others, so exact in the paper's on-policy setting (one
  minibatch). ``"current"`` recomputes it from the current (detached) logits on every pass.
- **KL clamp** (code ≠ METHODS.md): verl's ``low_var_kl`` clamps the k3 *value* to [−10, 10]
  (``kl_clamp="value"``, default, as the code); METHODS.md writes the clamp on x
  (``kl_clamp="log_ratio"``, as ``objective kl``).
- Defaults from the Qwen3-14B script: κ = ``min_p_threshold`` = 0.02 (yaml default 0.1),
  ρ = ``logp_neg_k_percent`` = 0.01 (a fraction, despite the name; 0.005 for Qwen2.5-32B),
  β = ``ppo_kl_coef`` = 1, and the script's near-unclipped PPO ratio range
  ``clip_ratio_low`` = 1.0, ``clip_ratio_high`` = 9.0 (ratio clamp [0, 10]); no dual clip,
  as in the code. Positive-advantage tokens get no regulariser (``logp_pos_k_percent`` = 0).
- ρ_t on the regularised tokens is unclipped, as in the code.
"""
from __future__ import annotations

import math

import torch

from explorl.explore.acted import Acted
from explorl.explore.base import LossContext, Objective
from explorl.explore.objective.kl import k3
from explorl.explore.objective.ppo_clip import clipped_surrogate, masked_mean
from explorl.registry import register

NOISE = -1e4  # the logit the min-p filter gives to dropped tokens (as apply_min_p)


def min_p_proxy_logp(logits: torch.Tensor, token_logp: torch.Tensor, kappa: float) -> torch.Tensor:
    """log π_proxy of the sampled tokens ``(R, L)``; ``logits`` ``(R, L, V)`` define π, and
    ``token_logp`` = log π of the sampled token (so the token ids are not needed)."""
    logits = logits.detach().float()
    token_logp = token_logp.detach().float()
    logp_all = torch.log_softmax(logits, -1)
    threshold = logp_all.max(-1).values + math.log(kappa)
    keep = logp_all >= threshold[..., None]
    proxy_lse = torch.logsumexp(logits.masked_fill(~keep, NOISE), -1)
    token_logit = token_logp + torch.logsumexp(logits, -1)
    token_kept = token_logp >= threshold
    return torch.where(token_kept, token_logit, torch.full_like(token_logit, NOISE)) - proxy_lse


def k3_value_clamped(logp: torch.Tensor, target_logp: torch.Tensor) -> torch.Tensor:
    """verl ``low_var_kl``: e^x − x − 1 with x = log π_target − log π_θ, the value clamped to [−10, 10]."""
    x = target_logp - logp
    return (torch.exp(x) - x - 1.0).clamp(-10.0, 10.0)


@register("objective", "lp_reg", paper="Lp-Reg, Low-probability Tokens Sustain Exploration in RLVR (code CarlanLark/Lp-Reg-dev)")
class LpReg(Objective):
    engaged_when = (Acted("loss/lp_reg_frac", ">", 0, what="regularised tokens per step > 0"),)
    kind = "policy"
    needs = frozenset({"logits"})

    def __init__(self, min_p_threshold: float = 0.02, logp_neg_k_percent: float = 0.01, ppo_kl_coef: float = 1.0,
                 clip_ratio_low: float = 1.0, clip_ratio_high: float = 9.0, clip_ratio_c: float | None = None,
                 kl_clamp: str = "value", proxy_source: str = "first_visit"):
        if not 0 < min_p_threshold <= 1:
            raise ValueError(f"objective lp_reg: min_p_threshold must be in (0, 1], got {min_p_threshold}")
        if not 0 <= logp_neg_k_percent <= 1:
            raise ValueError(f"objective lp_reg: logp_neg_k_percent is a fraction in [0, 1], got {logp_neg_k_percent}")
        if kl_clamp not in ("value", "log_ratio"):
            raise ValueError(f"objective lp_reg: kl_clamp must be 'value' or 'log_ratio', got {kl_clamp!r}")
        if proxy_source not in ("first_visit", "current"):
            raise ValueError(f"objective lp_reg: proxy_source must be 'first_visit' or 'current', got {proxy_source!r}")
        self.kappa, self.rho, self.coef = min_p_threshold, logp_neg_k_percent, ppo_kl_coef
        self.eps_low, self.eps_high, self.clip_c = clip_ratio_low, clip_ratio_high, clip_ratio_c
        self.kl = k3_value_clamped if kl_clamp == "value" else k3
        self.proxy_source = proxy_source
        self._cache_step, self._cache = None, {}

    def proxy(self, ctx: LossContext) -> torch.Tensor:
        """log π_proxy of the sampled tokens; cached by row on epoch 0, read back on later epochs."""
        fresh = min_p_proxy_logp(ctx.logits, ctx.logp, self.kappa)
        epoch = ctx.extras.get("epoch")
        if self.proxy_source == "current" or ctx.rows is None or epoch is None:
            return fresh
        if epoch == 0 or self._cache_step != ctx.step:
            if self._cache_step != ctx.step:
                self._cache_step, self._cache = ctx.step, {}
            self._cache.update({row: fresh[i].clone() for i, row in enumerate(ctx.rows.tolist())})
            return fresh
        out = fresh.clone()
        for i, row in enumerate(ctx.rows.tolist()):
            cached = self._cache.get(row)
            if cached is not None and cached.shape == out[i].shape:
                out[i] = cached.to(out.device)
        return out

    def select(self, ctx: LossContext, proxy_logp: torch.Tensor) -> torch.Tensor:
        """Boolean ``(R, L)``: the negative-advantage, low-probability, non-noise tokens."""
        logp = ctx.logp.detach()
        neg = ((ctx.mask > 0) & (ctx.advantages < 0)).flatten()
        idx = neg.nonzero().squeeze(-1)
        chosen = torch.zeros_like(neg)
        k = int(len(idx) * self.rho)
        if k > 1:
            chosen[idx[torch.topk(logp.flatten()[idx], k, largest=False).indices]] = True
        return chosen.view_as(logp) & (logp < proxy_logp)

    def term(self, ctx):
        ratio = torch.exp(ctx.logp - ctx.old_logp)
        loss, low, high = clipped_surrogate(ratio, ctx.advantages, self.eps_low, self.eps_high, self.clip_c)
        proxy_logp = self.proxy(ctx)
        chosen = self.select(ctx, proxy_logp)
        kl = self.kl(ctx.logp, proxy_logp)
        loss = torch.where(chosen, -ctx.advantages * ratio + self.coef * kl, loss)
        n = chosen.sum().clamp_min(1)
        return loss, {"loss/clip_frac_low": masked_mean(low, ctx.mask),
                      "loss/clip_frac_high": masked_mean(high, ctx.mask),
                      "loss/lp_reg_frac": masked_mean(chosen, ctx.mask),
                      "loss/lp_reg_kl": float((kl.detach() * chosen).sum() / n),
                      "loss/ratio_mean": masked_mean(ratio.detach(), ctx.mask)}
