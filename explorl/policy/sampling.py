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
    logp_b = sampling_log_probs(logits, temperature, top_p)
    tokens = draw_tokens(logp_b, 1, generator, None if noise is None else noise[:, None]).squeeze(-1)
    logp_t1, entropy = token_logp_entropy(logits, tokens, True)
    return tokens, logp_b.gather(-1, tokens[:, None]).squeeze(-1), logp_t1, entropy


def sampling_log_probs(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """Log-probs ``(R, V)`` of the distribution ``sample_next_token`` draws from: softmax(logits /
    temperature) truncated to the top-p nucleus (``-inf`` outside it)."""
    scaled = logits.float() / temperature
    if top_p < 1.0:
        sorted_logits, order = scaled.sort(dim=-1, descending=True)
        cum = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
        drop_sorted = (cum - torch.softmax(sorted_logits, dim=-1)) >= top_p  # keep the token crossing top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        scaled = scaled.masked_fill(drop, float("-inf"))
    return torch.log_softmax(scaled, dim=-1)


def draw_tokens(logp: torch.Tensor, k: int, generator: torch.Generator | None,
                noise: torch.Tensor | None = None) -> torch.Tensor:
    """``k`` tokens per row drawn with replacement from ``exp(logp)`` ``(R, V)``: ``(R, k)``.

    With ``noise`` (``(R, k)`` uniforms) each draw inverts the row's cumulative distribution at
    its uniform; else ``torch.multinomial`` draws from ``generator`` (one draw takes its
    single-sample path whether or not replacement is asked, so ``k = 1`` is the draw
    ``sample_next_token`` makes)."""
    if noise is None:
        return torch.multinomial(logp.exp(), k, replacement=True, generator=generator)
    cum = logp.exp().cumsum(-1)
    target = noise.to(cum.device, cum.dtype) * cum[:, -1:]
    return torch.searchsorted(cum, target, right=True).clamp_max(cum.shape[-1] - 1)
