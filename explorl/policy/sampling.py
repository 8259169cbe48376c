"""Sampling one token per row, recording the log-probs the losses need; the per-token log-prob
and entropy of given tokens (``token_logp_entropy``), shared with the training forward."""
from __future__ import annotations

import torch


def token_logp_entropy(logits: torch.Tensor, ids: torch.Tensor, want_entropy: bool):
    """Per-token log-prob of ``ids`` under ``logits`` (float32), and the entropy when asked."""
    logp_all = torch.log_softmax(logits.float(), dim=-1)
    logp = logp_all.gather(-1, ids[..., None]).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1) if want_entropy else None
    return logp, entropy


def sample_next_token(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None,
                      noise: torch.Tensor | None = None):
    """Sample from softmax(logits / temperature) truncated to the top-p nucleus.

    With ``noise`` (``(R,)`` uniforms in [0, 1), one per row) the token is the inverse of the
    row's cumulative distribution at its uniform: a row's draw then depends on its own noise
    only, not on which other rows share the batch (what data-parallel ranks need to sample
    their share of a step exactly as one process would). Without it, ``torch.multinomial``
    draws from ``generator``.

    Returns ``(tokens, behaviour_logp, logp_t1, entropy_t1)``, each ``(R,)``: the log-prob of
    the sampled token under the distribution it was drawn from, under the policy at
    temperature 1 (π_old for the PPO ratio), and the temperature-1 entropy.
    """
    logits = logits.float()
    scaled = logits / temperature
    if top_p < 1.0:
        sorted_logits, order = scaled.sort(dim=-1, descending=True)
        cum = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
        drop_sorted = (cum - torch.softmax(sorted_logits, dim=-1)) >= top_p  # keep the token crossing top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        scaled = scaled.masked_fill(drop, float("-inf"))
    logp_b = torch.log_softmax(scaled, dim=-1)
    if noise is None:
        tokens = torch.multinomial(logp_b.exp(), 1, generator=generator).squeeze(-1)
    else:
        cum = logp_b.exp().cumsum(-1)
        target = noise.to(cum.device, cum.dtype)[:, None] * cum[:, -1:]
        tokens = torch.searchsorted(cum, target, right=True).squeeze(-1).clamp_max(cum.shape[-1] - 1)
    logp_t1, entropy = token_logp_entropy(logits, tokens, True)
    return tokens, logp_b.gather(-1, tokens[:, None]).squeeze(-1), logp_t1, entropy
