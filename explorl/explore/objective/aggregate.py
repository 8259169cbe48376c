"""Token aggregation of a per-token loss, kept apart from the loss itself (as verl's agg_loss).

- ``token-mean`` (DAPO): Σ_{i,t} ℓ_{i,t} / Σ_{i,t} m_{i,t}.
- ``seq-mean-token-mean`` (original GRPO): mean_i (Σ_t ℓ_{i,t} m_{i,t} / Σ_t m_{i,t}).
- ``seq-mean-token-sum-norm`` (Dr. GRPO): Σ_{i,t} ℓ_{i,t} m_{i,t} / (N_seq · L), with L the
  constant maximum response length, so no length bias enters through the normaliser.
"""
from __future__ import annotations

import torch

MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")


def aggregate(loss: torch.Tensor, mask: torch.Tensor, mode: str, max_length: int | None = None) -> torch.Tensor:
    """Reduce ``loss`` ``(R, L)`` over the response tokens marked by ``mask`` to a scalar."""
    mask = mask.to(loss.dtype)
    if mode == "token-mean":
        return (loss * mask).sum() / mask.sum().clamp_min(1.0)
    if mode == "seq-mean-token-mean":
        per_seq = (loss * mask).sum(-1) / mask.sum(-1).clamp_min(1.0)
        return per_seq.mean()
    if mode == "seq-mean-token-sum-norm":
        length = max_length if max_length is not None else loss.shape[-1]
        return (loss * mask).sum() / (loss.shape[0] * length)
    raise ValueError(f"unknown loss_agg_mode {mode!r} (valid: {', '.join(MODES)})")
