"""Soft tokens: response positions whose input is a mixture of token embeddings, w^T E.

A decoding step normally feeds back the embedding E[y] of the token it sampled. A *soft*
step feeds a weighted sum Σ_s w_s E[i_s] instead: the probability-weighted mixture p^T E of
continuous chain of thought, the mean of K sampled tokens' embeddings (CoT2's MTS), a
Dirichlet draw on the simplex, or a mixture with a marker token's embedding (SwiReasoning).
A soft token counts as one generated position, like any other.

``SoftInputs`` records, per response position of a batch, what was fed and how the
position's log-prob is defined, so that the training forward feeds the same inputs and
recomputes the same log-probs:

- ``fed`` ``(R, L)``: the input at this position was ``Σ_s weights[..., s] · E[ids[..., s]]``
  (``ids`` ``(R, L, S)``; ``ids=None`` means dense: ``S`` is the vocabulary and ``ids`` its
  every token, as for a full mixture p^T E), not E[response_ids] alone;
- ``rule`` ``(R, L)``: ``TOKEN`` (log π of the response token, the ordinary case), ``MTS``
  (Σ_k log softmax(z / K)[i_k] over the K ids with weight > 0; with ``mts_scale_logits`` off,
  (1/K) Σ_k log softmax(z)[i_k]), ``DIRICHLET`` (log Dir(w; α) with α built from softmax(z) on
  the support w > 0, ``dirichlet_log_density``) or ``UNSCORED`` (the position has no log-prob
  under the policy, e.g. a deterministic latent step: it is left out of the loss);
- ``tag`` ``(R, L)``: what the method that decided the step chose there, for its own use
  (CTRLS: the latent action; −1: nothing).

The embedding of a soft input calls the model's embedding module on the ids (so a LoRA
adapter on it takes part) and weights the rows: with one id of weight 1 it is the embedding of
that token, bit for bit. Storage is ``R × L × S`` weights: small for K sampled ids, a
vocabulary per position for dense mixtures (the testbed's vocabulary is ~60 tokens; with a
large vocabulary keep the thinking segment short, or evaluate without recording:
``ThinkingRule.record``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from explorl.policy.sampling import token_logp_entropy

TOKEN, MTS, DIRICHLET, UNSCORED = range(4)
RULES = ("token", "mts", "dirichlet", "unscored")


@dataclass
class SoftInputs:
    fed: torch.Tensor                  # (R, L) bool
    rule: torch.Tensor                 # (R, L) int8, one of TOKEN, MTS, DIRICHLET, UNSCORED
    weights: torch.Tensor              # (R, L, S) float
    ids: torch.Tensor | None = None    # (R, L, S) long; None: dense over the vocabulary
    params: dict = field(default_factory=dict)  # what the log-prob rules need (dirichlet_scale, ...)
    tag: torch.Tensor | None = None    # (R, L) long, -1 where unused

    def __post_init__(self):
        if self.tag is None:
            self.tag = torch.full(self.fed.shape, -1, dtype=torch.long)

    @property
    def size(self) -> int:
        return self.fed.shape[0]

    @property
    def width(self) -> int:
        return self.fed.shape[1]

    def rows(self, rows: torch.Tensor) -> "SoftInputs":
        rows = torch.as_tensor(rows, dtype=torch.long)
        return SoftInputs(self.fed[rows], self.rule[rows], self.weights[rows],
                          None if self.ids is None else self.ids[rows], dict(self.params), self.tag[rows])

    def to_dense(self, vocab: int) -> "SoftInputs":
        if self.ids is None:
            return self
        dense = torch.zeros(*self.fed.shape, vocab, dtype=self.weights.dtype)
        dense.scatter_add_(-1, self.ids, self.weights)
        return SoftInputs(self.fed, self.rule, dense, None, dict(self.params), self.tag)

    @staticmethod
    def plain(size: int, width: int, like: "SoftInputs") -> "SoftInputs":
        """Rows of ordinary tokens, shaped to join ``like`` (a batch of rows without soft inputs)."""
        S = like.weights.shape[-1]
        return SoftInputs(torch.zeros(size, width, dtype=torch.bool), torch.zeros(size, width, dtype=torch.int8),
                          torch.zeros(size, width, S, dtype=like.weights.dtype),
                          None if like.ids is None else torch.zeros(size, width, S, dtype=torch.long),
                          dict(like.params))

    @staticmethod
    def concat(parts: list["SoftInputs | None"], sizes: list[int], widths: list[int]) -> "SoftInputs | None":
        """Join the records of consecutive batches (``None`` for a batch of ordinary rows),
        padded to the widest; records of different kinds meet as dense ones."""
        known = [p for p in parts if p is not None]
        if not known:
            return None
        params = known[0].params
        if any(p.params != params for p in known):
            raise ValueError(f"cannot join soft-token records made with different settings: "
                             f"{[p.params for p in known]}")
        if len({p.ids is None for p in known}) > 1:
            vocab = next(p.weights.shape[-1] for p in known if p.ids is None)
            known = [p.to_dense(vocab) for p in known]
            parts = [None if p is None else p.to_dense(vocab) for p in parts]
        like = known[0]
        if like.ids is not None:  # sparse records may hold different numbers of ids per position
            S = max(p.weights.shape[-1] for p in known)
            parts = [None if p is None else p._pad_support(S) for p in parts]
            like = parts[next(i for i, p in enumerate(parts) if p is not None)]
        width = max(widths)
        parts = [(SoftInputs.plain(n, w, like) if p is None else p)._pad_width(width)
                 for p, n, w in zip(parts, sizes, widths)]
        return SoftInputs(torch.cat([p.fed for p in parts]), torch.cat([p.rule for p in parts]),
                          torch.cat([p.weights for p in parts]),
                          None if like.ids is None else torch.cat([p.ids for p in parts]), dict(params),
                          torch.cat([p.tag for p in parts]))

    def _pad_width(self, width: int) -> "SoftInputs":
        extra = width - self.width
        if extra == 0:
            return self
        pad2 = lambda x: torch.nn.functional.pad(x, (0, extra))  # noqa: E731
        pad3 = lambda x: torch.nn.functional.pad(x, (0, 0, 0, extra))  # noqa: E731
        return SoftInputs(pad2(self.fed), pad2(self.rule), pad3(self.weights),
                          None if self.ids is None else pad3(self.ids), dict(self.params),
                          torch.nn.functional.pad(self.tag, (0, extra), value=-1))

    def _pad_support(self, S: int) -> "SoftInputs":
        extra = S - self.weights.shape[-1]
        if extra == 0:
            return self
        pad = lambda x: torch.nn.functional.pad(x, (0, extra))  # noqa: E731
        return SoftInputs(self.fed, self.rule, pad(self.weights), pad(self.ids), dict(self.params), self.tag)

    # ---- what the training forward needs -------------------------------------------------------
    def input_embeddings(self, embed, inputs: torch.Tensor) -> torch.Tensor:
        """The embeddings of response inputs ``inputs`` ``(R, T)`` (the response tokens a
        forward feeds, T <= L), with the soft positions' mixtures in place of their tokens'."""
        T = inputs.shape[1]
        return mix_embeddings(embed, inputs, self.fed[:, :T].to(inputs.device),
                              None if self.ids is None else self.ids[:, :T].to(inputs.device),
                              self.weights[:, :T].to(inputs.device))

    def rescore(self, logits: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
        """``logp`` ``(R, L)`` (token log-probs from ``logits`` ``(R, L, V)``) with the MTS and
        Dirichlet positions' log-probs put in (``UNSCORED`` positions keep theirs: the loss
        mask leaves them out)."""
        rule = self.rule.to(logits.device)
        out = logp
        mts = rule == MTS
        if mts.any():
            ids, w = self.ids, self.weights
            if ids is None:
                raise ValueError("an MTS position needs its sampled ids (a sparse soft-token record)")
            at = mts.nonzero(as_tuple=True)
            value = mts_log_prob(logits[at], ids.to(logits.device)[at], w.to(logits.device)[at],
                                 self.params.get("mts_scale_logits", True))
            out = out.index_put(at, value.to(out.dtype))
        dirichlet = rule == DIRICHLET
        if dirichlet.any():
            if self.ids is not None:
                raise ValueError("a Dirichlet position needs its weights over the vocabulary (a dense record)")
            at = dirichlet.nonzero(as_tuple=True)
            value = dirichlet_log_density(logits[at], self.weights.to(logits.device)[at],
                                          self.params["dirichlet_scale"], self.params["dirichlet_min_prob"])
            out = out.index_put(at, value.to(out.dtype))
        return out

    def scored_mask(self) -> torch.Tensor:
        """``(R, L)`` float: 1 where the position has a log-prob under the policy."""
        return (self.rule != UNSCORED).float()


def mix_embeddings(embed, tokens: torch.Tensor, fed: torch.Tensor, ids: torch.Tensor | None,
                   weights: torch.Tensor) -> torch.Tensor:
    """``embed(tokens)`` with ``Σ_s weights[.., s] · embed(ids[.., s])`` at the ``fed`` positions
    (``ids=None``: the weights run over the whole vocabulary)."""
    h = embed(tokens)
    if not bool(fed.any()):
        return h
    w = weights[fed].to(h.dtype)
    if ids is None:
        table = embed(torch.arange(w.shape[-1], device=tokens.device))
        mixed = w @ table
    else:
        mixed = (embed(ids[fed]) * w[..., None]).sum(-2)
    return h.index_put(fed.nonzero(as_tuple=True), mixed)


def mts_log_prob(logits: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor,
                 scale_logits: bool = True) -> torch.Tensor:
    """CoT2's multi-token sampling: the log-prob of K tokens drawn with replacement from
    softmax(z / K) (``scale_logits``; the code's ``sampling_normalization``) is the sum of their
    log-probs, Σ_k log softmax(z / K)[i_k]; without scaling, (1/K) Σ_k log softmax(z)[i_k].
    ``ids``/``weights`` ``(N, S)``: the K ids are the entries of weight > 0. ``logits`` ``(N, V)``."""
    valid = weights > 0
    k = valid.sum(-1, keepdim=True).clamp_min(1)
    scaled = logits.float() / k if scale_logits else logits.float()
    logp = torch.log_softmax(scaled, -1).gather(-1, ids)
    total = torch.where(valid, logp, torch.zeros_like(logp)).sum(-1)
    return total if scale_logits else total / k.squeeze(-1)


def dirichlet_concentration(logits: torch.Tensor, support: torch.Tensor, scale: float, min_prob: float):
    """CoT2's Dirichlet exploration (``continuous_train_grpo_dirichlet.py:259-291``): on the
    support, probabilities softmax(z) clamped to ``min_prob``, renormalised, times ``scale``;
    0 off the support."""
    p = torch.softmax(logits.float(), -1).clamp_min(min_prob) * support
    return scale * p / p.sum(-1, keepdim=True)


def dirichlet_log_density(logits: torch.Tensor, weights: torch.Tensor, scale: float, min_prob: float) -> torch.Tensor:
    """log Dir(w; α) on the support w > 0, α = ``dirichlet_concentration``:
    lgamma(Σα) − Σ lgamma(α_i) + Σ (α_i − 1) log w_i. ``logits``, ``weights`` ``(N, V)``."""
    support = weights > 0
    alpha = dirichlet_concentration(logits, support, scale, min_prob)
    safe_alpha = torch.where(support, alpha, torch.ones_like(alpha))
    log_w = torch.where(support, weights.float(), torch.ones_like(alpha)).log()
    terms = torch.where(support, (safe_alpha - 1) * log_w - torch.lgamma(safe_alpha), torch.zeros_like(alpha))
    return torch.lgamma(alpha.sum(-1)) + terms.sum(-1)


def response_logp_entropy(logits: torch.Tensor, batch, rows: torch.Tensor | None, want_entropy: bool):
    """Per-position log-prob and entropy of ``batch``'s responses (``rows``; all when ``None``)
    from the training forward's ``logits``: the token's log-prob, or the soft step's rule."""
    ids = batch.response_ids if rows is None else batch.response_ids[rows]
    logp, entropy = token_logp_entropy(logits, ids.to(logits.device), want_entropy)
    soft = getattr(batch, "soft", None)
    if soft is None:
        return logp, entropy
    return (soft if rows is None else soft.rows(rows)).rescore(logits, logp), entropy


def soft_metrics(batch) -> dict[str, float]:
    """``decode/soft_frac``: share of response positions fed a soft token; ``decode/unscored_frac``:
    share without a log-prob under the policy (left out of the loss). None without soft tokens."""
    soft = getattr(batch, "soft", None)
    if soft is None:
        return {}
    mask = batch.mask
    total = float(mask.sum().clamp_min(1))
    return {"decode/soft_frac": float((soft.fed.float() * mask).sum()) / total,
            "decode/unscored_frac": float(((soft.rule == UNSCORED).float() * mask).sum()) / total}
