"""EAD: Exploratory Annealed Decoding — hot early tokens, cooler later ones.

Yang et al., "Let it Calm: Exploratory Annealed Decoding for Verifiable Reinforcement
Learning", arXiv:2510.05251 (code: yangalan123/EAD-RLVR,
``verl/workers/rollout/vllm_rollout/annealed_sampling.py``). At response position t
(tokens generated so far) and training step s:

    d_s = min(d_0 + increase · s, max_decay)
    τ_t = base_temperature                                   if t < c  (warm-up)
    τ_t = max(1 + τ_max − exp(t / (exponent_scale · d_s)), τ_min)   otherwise

``exponent_scale`` = 20 is the released vLLM code; the paper/README write exp(t/d_s), i.e.
``exponent_scale`` = 1. Defaults are the script's: τ_max (``exploration_temp``) 1.2, τ_min
(``stability_temp``) 0.1, d_0 (``decay_freq``) 25, c (``warmup_tokens``) 10, increase 5.
s is the trainer's step (1 at the first update, like verl's ``global_steps``).

``reference_length`` (default None: positions as they are) sets the schedule on the run's response
length: position t is read as t · ``reference_length`` / L, L = ``train.max_new_tokens``, so a
schedule set for answers of ``reference_length`` tokens covers an L-token answer in the same
proportions (the recipe's values were set for the testbed's 12-token answers; on 56-token
answers they would reach τ_min by token 15).

Rollouts come from the annealed distribution, not from π_old at T = 1; the engine records
each token's log-prob under the distribution it was sampled from (``behaviour_logp``), and
the off-policy correction is truncated importance sampling in the policy loss:
``ppo_clip`` with ``tis_cap`` (the code's ``imp_ratio_cap``; the recipe uses 2.0).
"""
from __future__ import annotations

import math

import torch

from explorl.explore.acted import Acted
from explorl.explore.base import Decoding
from explorl.registry import register


def annealed_temperature(t: int, step: int, exploration_temp: float = 1.2, stability_temp: float = 0.1,
                         decay_freq: float = 25.0, warmup_tokens: int = 10, decay_increase: float = 5.0,
                         max_decay: float = 40000.0, exponent_scale: float = 20.0,
                         base_temperature: float = 1.0) -> float:
    if t < warmup_tokens:
        return base_temperature
    d = min(decay_freq + decay_increase * step, max_decay)
    return max(1 + exploration_temp - math.exp(t / (exponent_scale * d)), stability_temp)


@register("decoding", "ead", paper="EAD, Yang et al., arXiv:2510.05251")
class EAD(Decoding):
    engaged_when = (Acted("decode/temperature_span", ">=", 0.3, reduce="mean",
                          what="the temperature over a response spans >= 0.3 (max - min) on the regime's lengths"),)
    def __init__(self, exploration_temp: float = 1.2, stability_temp: float = 0.1, decay_freq: float = 25.0,
                 warmup_tokens: int = 10, decay_increase: float = 5.0, max_decay: float = 40000.0,
                 exponent_scale: float = 20.0, base_temperature: float = 1.0, top_p: float = 1.0,
                 reference_length: int | None = None):
        if stability_temp <= 0 or base_temperature <= 0 or exploration_temp <= 0:
            raise ValueError("decoding ead: temperatures must be > 0")
        if decay_freq <= 0 or exponent_scale <= 0 or max_decay <= 0 or decay_increase < 0 or warmup_tokens < 0:
            raise ValueError("decoding ead: need decay_freq, exponent_scale, max_decay > 0 "
                             "and decay_increase, warmup_tokens >= 0")
        if not 0 < top_p <= 1:
            raise ValueError(f"decoding ead: top_p must be in (0, 1], got {top_p}")
        if reference_length is not None and reference_length < 1:
            raise ValueError(f"decoding ead: reference_length must be >= 1 (or null), got {reference_length}")
        self.kw = dict(exploration_temp=exploration_temp, stability_temp=stability_temp, decay_freq=decay_freq,
                       warmup_tokens=warmup_tokens, decay_increase=decay_increase, max_decay=max_decay,
                       exponent_scale=exponent_scale, base_temperature=base_temperature)
        self.top_p, self.reference_length = top_p, reference_length
        self.length = None  # L of the last schedule sampled with

    def schedule(self, step: int, positions: int, length: int) -> torch.Tensor:
        """τ at positions 0..``positions``−1 of responses of at most ``length`` tokens."""
        scale = 1.0 if self.reference_length is None else self.reference_length / length
        return torch.tensor([annealed_temperature(t * scale, step, **self.kw) for t in range(positions)])

    def temperatures(self, step, max_new_tokens):
        self.length = max_new_tokens
        return self.schedule(step, max_new_tokens, max_new_tokens)

    def observe(self, stats):
        """``decode/temperature_span``: max − min of the temperature over the positions that half of
        this step's responses reached (the median length), i.e. the part of the schedule the
        responses lived through."""
        batch = stats.extras.get("batch")
        if batch is None or not len(batch.lengths):
            return {}
        reached = int(batch.lengths.float().median().item())
        if reached < 1:
            return {}
        temps = self.schedule(stats.step, reached, self.length or reached)
        return {"decode/temperature_span": float(temps.max() - temps.min())}
