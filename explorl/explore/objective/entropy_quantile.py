"""Train on the high-entropy minority: only the top-ρ tokens by entropy carry policy gradient.

Wang et al., *Beyond the 80/20 Rule: High-Entropy Minority Tokens Drive Effective
Reinforcement Learning for LLM Reasoning*, arXiv:2506.01939 (TRL ``top_entropy_quantile``):

    τ = the (1 − ρ)-quantile of H_t over the minibatch's response tokens
    weight_t = 1[H_t ≥ τ]        (ρ = 0.2 keeps the top 20%; ρ = 1 keeps every token)

This is a ``"token_mask"`` objective: the trainer multiplies the policy term by the weight
(``update.combine_terms``); regularizers such as ``kl`` stay on every token (TRL adds the KL
after masking), and the token-mean still divides by all response tokens, as in the paper's
objective. The quantile is taken over the minibatch (TRL: over the gathered batch), on the
entropy of the current policy at temperature 1, detached. The paper trains with DAPO;
``configs/recipes/entropy_quantile.yaml`` keeps the GRPO baseline to isolate the mask.
"""
from __future__ import annotations

import torch

from explorl.explore.acted import Acted
from explorl.explore.base import Objective
from explorl.explore.objective.ppo_clip import masked_mean
from explorl.registry import register


def high_entropy_mask(entropy: torch.Tensor, mask: torch.Tensor, top_quantile: float) -> tuple[torch.Tensor, float]:
    """``(weight (R, L), threshold)``: 1 where the token's entropy is in the top ``top_quantile``."""
    valid = mask > 0
    if not valid.any():
        return torch.zeros_like(entropy), float("nan")
    threshold = torch.quantile(entropy.detach()[valid].float(), 1.0 - top_quantile)
    return ((entropy.detach() >= threshold) & valid).to(entropy.dtype), float(threshold)


@register("objective", "entropy_quantile", paper="Beyond the 80/20 Rule, high-entropy minority tokens (arXiv:2506.01939)")
class EntropyQuantile(Objective):
    # loss/entropy_mask_frac is the share of tokens kept
    engaged_when = (Acted("loss/entropy_mask_frac", "<=", 0.5, what="the mask zeroes >= 50% of tokens"),)
    kind = "token_mask"
    needs = frozenset({"entropy"})

    def __init__(self, top_entropy_quantile: float = 0.2):
        if not 0 < top_entropy_quantile <= 1:
            raise ValueError(f"objective entropy_quantile: top_entropy_quantile must be in (0, 1], got {top_entropy_quantile}")
        self.rho = top_entropy_quantile

    def term(self, ctx):
        weight, threshold = high_entropy_mask(ctx.entropy, ctx.mask, self.rho)
        metrics = {"loss/entropy_mask_frac": masked_mean(weight, ctx.mask)}
        if threshold == threshold:  # undefined (NaN) without response tokens: not emitted
            metrics["loss/entropy_mask_threshold"] = threshold
        return weight, metrics
