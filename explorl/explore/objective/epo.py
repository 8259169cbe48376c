"""EPO: entropy bonus plus a smoothing penalty that keeps entropy near its own history.

*EPO: Entropy-regularized Policy Optimization* for multi-turn LLM agents; code
WujiangXu/EPO (verl-agent: ``generate_entropy_penalty``, ``_calculate_epoch_based_entropy_weight``).

    ℓ_t = −c_ent · H_t  +  c_ent · c_smooth · w(e) · p · d_t · 1[H_t ∉ (κ_l·H̄_b, κ_r·H̄_b)]
    d_t = |H_t − H̄_b|   (``smoothing="abs"``)   or   (H_t − H̄_b)²   (``"square"``)
    w(e) = 1 − 0.2 (1 − e^{−2e/(E/2)})         for e < E/2
         = 0.8 · e^{−3(e − E/2)/(E/2)}          for e ≥ E/2

Documented choices:

- **The smoothing term has a gradient here.** In the authors' code the penalty mask is built
  from constants (``torch.where(within_range, 0, p)``), so it has no gradient with respect to
  θ and the update reduces to PPO plus an entropy bonus (METHODS.md, UNVERIFIED against later
  versions). Here the penalty is p·d_t outside the band, differentiable through H_t, as
  METHODS.md suggests; ``smoothing`` picks |·| or its square.
- **Single-turn analogue of per-turn history.** H̄_b is the historical mean entropy of
  response-position bucket b = t // ``bucket_size`` (the code keeps one per agent turn k):
  after each step the mean token entropy of the rollouts in each bucket is recorded, and
  H̄_b is the mean of those per-step values over all past steps (the code's average over
  past epochs). A bucket with no history yet gets no smoothing penalty (so the first step is
  a plain entropy bonus). The code applies the penalty only to turns k ≥ max_turns/2;
  ``late_half_only=True`` mirrors that with positions t ≥ L/2 (L = the batch's response
  width); the default applies it at every position.
- **Training progress.** The code hard-codes E = 150 epochs, its runs' length; here e = step − 1
  and E = ``total_steps`` (default 150, the code's value). ``total_steps: null`` puts the schedule
  over the run's actual length: e/E is the share of ``train.max_tokens`` generated before the
  step in a run with a token budget (the number of steps it will take is not known in advance),
  else (step − 1) / ``train.steps``. w depends on e/E only, so both are the code's schedule.
  ``phase_weighting=False`` uses w = 1.
- Defaults are the code's: κ_l = 0.8, κ_r = 1.2, p = 0.1, c_ent = 0.001, c_smooth = 1
  (the ALFWorld/ScienceWorld scripts use κ_l = 0, κ_r = 2, p = 0.1 or 0.05).
"""
from __future__ import annotations

import math

import torch

from explorl.explore.acted import Acted
from explorl.explore.base import Objective
from explorl.explore.objective.ppo_clip import masked_mean
from explorl.registry import register


def phase_weight(e: float, total: float) -> float:
    """The code's phase weight w(e) over training progress e ∈ [0, E]."""
    half = total / 2.0
    if e < half:
        return 1.0 - 0.2 * (1.0 - math.exp(-2.0 * e / half))
    return 0.8 * math.exp(-3.0 * (e - half) / half)


@register("objective", "epo", paper="EPO, entropy-regularized policy optimization for LLM agents (code WujiangXu/EPO)")
class EPO(Objective):
    engaged_when = (Acted("loss/epo_phase_weight", ">=", 0.5, reduce="share", step_above=0.1,
                          what="the phase weight is > 0.1 on at least half the steps"),)
    needs = frozenset({"entropy"})
    state_keys = ("hist_sum", "hist_count", "total", "run_tokens", "tokens_seen")

    def __init__(self, entropy_coef: float = 0.001, smooth_coef: float = 1.0, kappa_low: float = 0.8,
                 kappa_high: float = 1.2, smooth_penalty: float = 0.1, total_steps: int | None = 150,
                 bucket_size: int = 1, smoothing: str = "abs", late_half_only: bool = False,
                 phase_weighting: bool = True):
        if kappa_low > kappa_high:
            raise ValueError(f"objective epo: kappa_low ({kappa_low}) > kappa_high ({kappa_high})")
        if (total_steps is not None and total_steps < 1) or bucket_size < 1:
            raise ValueError("objective epo: total_steps (or null: the run's length) and bucket_size must be >= 1")
        if smoothing not in ("abs", "square"):
            raise ValueError(f"objective epo: smoothing must be 'abs' or 'square', got {smoothing!r}")
        self.c_ent, self.c_smooth, self.p = entropy_coef, smooth_coef, smooth_penalty
        self.kappa_low, self.kappa_high = kappa_low, kappa_high
        self.total, self.bucket, self.smoothing = total_steps, bucket_size, smoothing
        self.late_half_only, self.phase_weighting = late_half_only, phase_weighting
        self.hist_sum: list[float] = []
        self.hist_count: list[int] = []
        self.run_tokens = None  # with total_steps null in a run with a token budget: the budget
        self.tokens_seen = 0    # generated tokens observed so far

    def before_training(self, ctx) -> dict:
        """With ``total_steps: null``, the run's length: its token budget, else its steps."""
        if self.total is not None or self.run_tokens is not None:
            return {}
        length = ctx.run_length
        if length.get("max_tokens"):
            self.run_tokens = int(length["max_tokens"])
            return {"phase schedule over tokens": self.run_tokens}
        self.total = int(length["steps"])
        return {"phase schedule over steps": self.total}

    def progress(self, step: int) -> float:
        """e/E of the phase weight: the share of the run done before ``step``."""
        if self.run_tokens is not None:
            return min(self.tokens_seen / self.run_tokens, 1.0)
        if self.total is None:
            raise ValueError("objective epo: total_steps is null but the run's length was never set (before_training "
                             "did not run and the checkpoint holds none)")
        return max(step - 1, 0) / self.total

    def weight(self, step: int) -> float:
        return phase_weight(self.progress(step), 1.0) if self.phase_weighting else 1.0

    def history(self, length: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """H̄ per response position ``(length,)`` and whether the position has history."""
        hbar, has = torch.zeros(length, device=device), torch.zeros(length, dtype=torch.bool, device=device)
        for t in range(length):
            b = t // self.bucket
            if b < len(self.hist_count) and self.hist_count[b] > 0:
                hbar[t], has[t] = self.hist_sum[b] / self.hist_count[b], True
        return hbar, has

    def smoothing_penalty(self, entropy: torch.Tensor, mask: torch.Tensor, step: int):
        """Per-token smoothing loss (with gradient through ``entropy``) and the out-of-band mask."""
        L = entropy.shape[1]
        hbar, has = self.history(L, entropy.device)
        hbar, has = hbar[None].to(entropy.dtype), has[None].expand_as(entropy)
        h = entropy.detach()
        outside = has & (mask > 0) & ~((h > self.kappa_low * hbar) & (h < self.kappa_high * hbar))
        if self.late_half_only:
            outside = outside & (torch.arange(L, device=entropy.device) >= L / 2)[None]
        dev = (entropy - hbar).abs() if self.smoothing == "abs" else (entropy - hbar) ** 2
        scale = self.c_ent * self.c_smooth * self.weight(step) * self.p
        return scale * dev * outside.to(entropy.dtype), outside

    def term(self, ctx):
        smooth, outside = self.smoothing_penalty(ctx.entropy, ctx.mask, ctx.step)
        return -self.c_ent * ctx.entropy + smooth, {
            "loss/epo_entropy_bonus": self.c_ent * masked_mean(ctx.entropy.detach(), ctx.mask),
            "loss/epo_out_of_band_frac": masked_mean(outside, ctx.mask),
            "loss/epo_smooth": masked_mean(smooth.detach(), ctx.mask),
            "loss/epo_phase_weight": self.weight(ctx.step)}

    def observe(self, stats):
        self.tokens_seen += int(stats.tokens)
        batch = stats.extras.get("batch")
        if batch is None:
            return {}
        entropy, mask = batch.entropy.float(), batch.mask.float()
        L = entropy.shape[1]
        for b in range((L + self.bucket - 1) // self.bucket):
            cols = slice(b * self.bucket, (b + 1) * self.bucket)
            n = float(mask[:, cols].sum())
            if n == 0:
                continue
            while len(self.hist_sum) <= b:
                self.hist_sum.append(0.0)
                self.hist_count.append(0)
            self.hist_sum[b] += float((entropy[:, cols] * mask[:, cols]).sum()) / n
            self.hist_count[b] += 1
        return {"entropy/epo_history_buckets": float(len(self.hist_count))}
