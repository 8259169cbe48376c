"""CoT2: continuous chain of thought — a thought of ``think_tokens`` soft tokens before the answer.

"Continuous Chain of Thought Enables Parallel Exploration and Reasoning", arXiv:2505.23648;
code github.com/alperengozeten/CoT2 @ 11932cb. The first ``think_tokens`` response
positions are continuous: each feeds back a mixture of token embeddings instead of one
token, so a single trace can carry several discrete traces at once; then the answer is
sampled token by token. A soft step counts as one generated position. Three samplers:

- ``mts`` (multi-token sampling, ``train/continuous_train_grpo_mts.py:241-286``): the logits
  are scaled by 1/K (``sampling_normalization``, line 245; ``scale_logits``), K tokens are
  drawn *with replacement* from softmax(z / K) (line 265) and the mean of their embeddings is
  fed (lines 285-286). The step's log-prob is that of the ordered draw,
  Σ_k log softmax(z / K)[i_k] (lines 266-269; without scaling the code divides the log-ratio by
  K, ``mts_log_prob``). The K ids are stored, so training recomputes it under π_θ; the PPO clip
  then acts per step (lines 364-369), as ``ppo_clip`` does per position. With K = 1 this is
  ordinary decoding, bit for bit (same draws, log-probs and fed embeddings; only the text
  differs: the thought is not shown to the verifier).
- ``dirichlet`` (exploration on the simplex, ``train/continuous_train_grpo_dirichlet.py:259-317``):
  on the support p ≥ ``min_prob`` (the code takes the union with π_θ's and π_ref's supports;
  π_θ = π_old when it samples, π_ref is not in the engine: the support here is π_old's), the
  probabilities are clamped to ``min_prob``, renormalised and scaled (``dirichlet_scale``,
  the code's 1) into α; w ~ Dir(α) is fed as w^T E, and the step's log-prob is log Dir(w; α)
  (``explorl.policy.soft.dirichlet_log_density``), recomputed under π_θ on the same support.
  Gamma draws are clamped to the smallest normal float (as torch's sampler does), so log w
  stays finite. The decoding temperature does not apply to these steps (the code has none).
- ``mixture``: p^T E, p = softmax(z / T) — deterministic, the "soft_teacher" read-out of a model
  trained with continuous supervision (``train/continuous_train.py:323-326``). It has no
  log-prob under the policy, so those positions carry no gradient (``UNSCORED``).

The rest of the answer follows the recipe's schedule (``temperature``, ``top_p``); the code
samples one answer token at temperature 1. Evaluation uses the same sampler (the code's
``grpo_eval_soft_steps_acc`` samples K tokens per step too). The warm start that teaches a
model to think in such steps is ``cot2_csft`` (guidance, ``explore/guidance/cot2_csft.py``).
"""
from __future__ import annotations

import torch

from explorl.explore.acted import SOFT_TOKENS_FED
from explorl.explore.base import Decoding
from explorl.policy.sampling import draw_tokens, sampling_log_probs, token_logp_entropy
from explorl.policy.soft import (DIRICHLET, MTS, UNSCORED, dirichlet_concentration, dirichlet_log_density,
                                 mts_log_prob, soft_metrics)
from explorl.policy.soft_decode import Choice, ThinkingRule, token_choice
from explorl.registry import register

SAMPLERS = ("mts", "dirichlet", "mixture")


def mts_step(logits, k: int, scale_logits: bool, temperature: float, top_p: float, generator, noise) -> Choice:
    """K tokens drawn with replacement from softmax(z / K) (tempered, top-p), their mean embedding
    fed. ``noise``: ``(Ra, K)`` uniforms, or ``(Ra,)`` for K = 1."""
    logits = logits.float()
    scaled = logits / k if scale_logits else logits
    logp_b = sampling_log_probs(scaled, temperature, top_p)
    if noise is not None and noise.dim() == 1:
        if k != 1:
            raise ValueError(f"decoding cot2: MTS with k={k} draws k tokens per step and needs k uniforms per "
                             f"step (noise of shape (rows, positions, k))")
        noise = noise[:, None]
    ids = draw_tokens(logp_b, k, generator, noise)
    weights = torch.full(ids.shape, 1.0 / k, device=logits.device)
    behaviour = logp_b.gather(-1, ids).sum(-1)
    old = mts_log_prob(logits, ids, weights, scale_logits)
    entropy = token_logp_entropy(logits, ids[:, 0], True)[1]
    rows = ids.shape[0]
    return Choice(ids[:, 0], behaviour, old, entropy, torch.full((rows,), MTS, dtype=torch.int8, device=ids.device),
                  fed=torch.ones(rows, dtype=torch.bool, device=ids.device), ids=ids, weights=weights,
                  hidden_text=torch.ones(rows, dtype=torch.bool, device=ids.device))


def dirichlet_step(logits, scale: float, min_prob: float, generator) -> Choice:
    """w ~ Dir(α) on the support softmax(z) >= ``min_prob`` (``dirichlet_concentration``), fed as w^T E."""
    logits = logits.float()
    support = torch.softmax(logits, -1) >= min_prob
    alpha = dirichlet_concentration(logits, support, scale, min_prob)
    gamma = torch._standard_gamma(torch.where(support, alpha, torch.ones_like(alpha)), generator=generator)
    gamma = gamma.clamp_min(torch.finfo(gamma.dtype).tiny) * support
    w = gamma / gamma.sum(-1, keepdim=True)
    logp = dirichlet_log_density(logits, w, scale, min_prob)
    tokens = w.argmax(-1)
    rows = tokens.shape[0]
    entropy = token_logp_entropy(logits, tokens, True)[1]
    return Choice(tokens, logp, logp, entropy, torch.full((rows,), DIRICHLET, dtype=torch.int8, device=w.device),
                  fed=torch.ones(rows, dtype=torch.bool, device=w.device), weights=w,
                  hidden_text=torch.ones(rows, dtype=torch.bool, device=w.device))


def mixture_step(logits, temperature: float) -> Choice:
    """p^T E with p = softmax(z / temperature): deterministic, no log-prob under the policy."""
    logits = logits.float()
    p = torch.softmax(logits / temperature, -1)
    tokens = p.argmax(-1)
    rows = tokens.shape[0]
    zero = torch.zeros(rows, device=p.device)
    entropy = token_logp_entropy(logits, tokens, True)[1]
    return Choice(tokens, zero, zero, entropy, torch.full((rows,), UNSCORED, dtype=torch.int8, device=p.device),
                  fed=torch.ones(rows, dtype=torch.bool, device=p.device), weights=p,
                  hidden_text=torch.ones(rows, dtype=torch.bool, device=p.device))


class CoT2Steps(ThinkingRule):
    """The first ``think_tokens`` positions soft (by ``sampler``), the rest ordinary tokens."""

    def __init__(self, think_tokens: int, sampler: str, k: int, scale_logits: bool, dirichlet_scale: float,
                 min_prob: float, record: bool = True):
        self.think_tokens, self.sampler, self.k = think_tokens, sampler, k
        self.scale_logits, self.dirichlet_scale, self.min_prob = scale_logits, dirichlet_scale, min_prob
        self.record = record
        self.support = k if sampler == "mts" else None
        self.params = ({"mts_scale_logits": scale_logits} if sampler == "mts" else
                       {"dirichlet_scale": dirichlet_scale, "dirichlet_min_prob": min_prob} if sampler == "dirichlet"
                       else {})

    def step(self, t, logits, temperature, top_p, generator, noise, hidden):
        if t >= self.think_tokens:
            return token_choice(logits, temperature, top_p, generator, noise)
        if self.sampler == "mts":
            return mts_step(logits, self.k, self.scale_logits, temperature, top_p, generator, noise)
        if self.sampler == "dirichlet":
            if generator is None:
                raise ValueError("decoding cot2: the Dirichlet sampler draws from the engine's generator; "
                                 "sampling with given noise is not supported")
            return dirichlet_step(logits, self.dirichlet_scale, self.min_prob, generator)
        return mixture_step(logits, temperature)


@register("decoding", "cot2", paper="CoT2, continuous chain of thought (arXiv:2505.23648): MTS and Dirichlet sampling")
class CoT2(Decoding):
    engaged_when = (SOFT_TOKENS_FED,)

    def __init__(self, think_tokens: int = 3, sampler: str = "mts", k: int = 3, scale_logits: bool = True,
                 dirichlet_scale: float = 1.0, min_prob: float = 1e-3, temperature: float = 1.0, top_p: float = 1.0):
        if sampler not in SAMPLERS:
            raise ValueError(f"decoding cot2: sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
        if think_tokens < 1 or k < 1:
            raise ValueError(f"decoding cot2: need think_tokens >= 1 and k >= 1, got {think_tokens} and {k}")
        if dirichlet_scale <= 0 or not 0 < min_prob < 1:
            raise ValueError("decoding cot2: need dirichlet_scale > 0 and 0 < min_prob < 1")
        if temperature <= 0 or not 0 < top_p <= 1:
            raise ValueError("decoding cot2: need temperature > 0 and top_p in (0, 1]")
        self.think_tokens, self.sampler, self.k, self.scale_logits = think_tokens, sampler, k, scale_logits
        self.dirichlet_scale, self.min_prob = dirichlet_scale, min_prob
        self.temperature, self.top_p = temperature, top_p

    def temperatures(self, step, max_new_tokens):
        return torch.full((max_new_tokens,), float(self.temperature))

    def thinking(self, step, evaluating=False):
        return CoT2Steps(self.think_tokens, self.sampler, self.k, self.scale_logits, self.dirichlet_scale,
                         self.min_prob, record=not evaluating)

    def observe(self, stats):
        return soft_metrics(stats.extras["batch"])
