"""VERL: advantage shaping from the effective rank of each response's hidden states.

*Beyond the Exploration–Exploitation Trade-off: A Hidden-State Approach for LLM Reasoning in
RLVR* (Velocity-Exploiting Rank-Learning); code hf618/VERL (``metrics_utils.py``,
``reward_manager_versions.py``, ``TRAINING_CONFIG.md``). On H ∈ R^{T×d}, a response's hidden
states:

    ER(H)  = exp(−Σ p log p),  p = S / ΣS,  S = singular values of H − mean_rows(H)
    ERV    = mean_t diff_t,   diff_t = ER(H[:t]) − mean(ER of the earlier prefixes),  t = s, 2s, …
    ERA    = mean_t (diff_t − diff_{t−s})
    dev_m  = clip((m_i − EMA_m) / (|EMA_m| + 1e-8), −5, 5)
    τ_i    = sigmoid(1.5 · dev_ERA);  w = τ·[0, 0, 1] + (1 − τ)·[0, 1, 0]   over [ERA, ERV, ER]
    aux_i  = g · Σ_m w_m tanh(dev_m),   g = w_global · (1 − (EMA_perf + 1)/2)
    A_i   ← A_i + min(ReLU(aux_i), |A_i| / κ),   κ = 2

Documented choices:

- **Hidden states.** The policy's (``groups.extras["engine"]``, no_grad) final normed layer at
  the positions ``response_logits(..., return_hidden=True)`` returns (the last prompt token
  and the response tokens but the last); the paper's layer is UNVERIFIED (a patched vLLM).
  Singular values by ``torch.linalg.svdvals`` in float64 (the code: eigenvalues of the Gram
  matrix, i.e. the same S; METHODS.md mentions ``svd_lowrank``).
- **Prefixes** as the code: prefix lengths t = s, 2s, … ≤ T (stride s = ``stride``, 40 in the
  code); the first prefix has no diff; after the strided prefixes the full response adds one
  more diff when the last prefix stopped short of T − 1 (``include_full``).
- **Short responses.** ER of a matrix with no spread (T = 1, or identical rows) is 1 (p is
  all zero, the code's batched path gives exp(0) = 1). A response too short for two diffs
  has ERA = 0, for one diff ERV = 0 (an empty mean is 0).
- **EMA** as the code: every EMA starts at 0; the first step only records (no aux, the code
  needs the previous step's metrics); each step then updates EMA ← 0.7·EMA + 0.3·(batch mean)
  after shaping (α = ``ema_alpha`` = 0.3, TRAINING_CONFIG; the class default in code is 0.7).
  EMA_perf tracks the batch mean of the score 2r − 1 (the code's score is in [−1, 1]; our
  rewards are in [0, 1]), so (EMA_perf + 1)/2 is a running accuracy. ``fixed_global_weight``
  (the code's ``aux_fix``) uses g = w_global. State is checkpointed.
"""
from __future__ import annotations

import torch

from explorl.explore.acted import Acted
from explorl.explore.base import Advantage, Groups
from explorl.registry import register

METRICS = ("era", "erv", "er")


def effective_rank(h: torch.Tensor) -> float:
    """exp of the entropy of the normalised singular values of the row-centred ``h`` (T, d)."""
    h = h.double()
    s = torch.linalg.svdvals(h - h.mean(0, keepdim=True))
    total = s.sum()
    if total <= 1e-12:
        return 1.0
    p = s / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def rank_metrics(h: torch.Tensor, stride: int, include_full: bool = True) -> dict[str, float]:
    """ER, ERV and ERA of one response's hidden states ``h`` (T, d)."""
    T = h.shape[0]
    history, diffs = [], []
    lengths = list(range(stride, T + 1, stride))
    if include_full and lengths and lengths[-1] < T - 1:
        lengths.append(T)
    for t in lengths:
        er = effective_rank(h[:t])
        if history:
            diffs.append(er - sum(history) / len(history))
        history.append(er)
    accel = [b - a for a, b in zip(diffs, diffs[1:])]
    return {"er": effective_rank(h) if T else 1.0,
            "erv": sum(diffs) / len(diffs) if diffs else 0.0,
            "era": sum(accel) / len(accel) if accel else 0.0}


@register("advantage", "effective_rank", paper="VERL, hidden-state effective rank shaping (code hf618/VERL)")
class EffectiveRank(Advantage):
    engaged_when = (Acted("adv/rank_changed_frac", ">=", 0.05, what="the auxiliary term changes >= 5% of advantages"),)
    kind = "shaper"
    state_keys = ("ema", "ema_perf", "steps")

    def __init__(self, stride: int = 40, ema_alpha: float = 0.3, modulation_gain: float = 1.5,
                 global_weight: float = 1.0, kappa: float = 2.0, fixed_global_weight: bool = False,
                 w_explore: list = (0.0, 0.0, 1.0), w_exploit: list = (0.0, 1.0, 0.0), include_full: bool = True):
        if stride < 1 or kappa <= 0:
            raise ValueError("advantage effective_rank: stride must be >= 1 and kappa > 0")
        if len(w_explore) != 3 or len(w_exploit) != 3:
            raise ValueError("advantage effective_rank: w_explore and w_exploit weigh [ERA, ERV, ER] (3 numbers)")
        self.stride, self.alpha, self.gain = stride, ema_alpha, modulation_gain
        self.global_weight, self.kappa, self.fixed = global_weight, kappa, fixed_global_weight
        self.w_explore = torch.tensor([float(w) for w in w_explore], dtype=torch.float64)
        self.w_exploit = torch.tensor([float(w) for w in w_exploit], dtype=torch.float64)
        self.include_full = include_full
        self.ema = {m: 0.0 for m in METRICS}
        self.ema_perf = 0.0
        self.steps = 0

    @torch.no_grad()
    def metrics(self, engine, batch) -> dict[str, torch.Tensor]:
        _, hidden = engine.response_logits(batch, return_hidden=True)
        hidden = hidden.double().cpu()
        rows = [rank_metrics(hidden[i, : int(n)], self.stride, self.include_full)
                for i, n in enumerate(batch.lengths.tolist())]
        return {m: torch.tensor([r[m] for r in rows], dtype=torch.float64) for m in METRICS}

    def aux(self, values: dict[str, torch.Tensor]) -> torch.Tensor:
        """aux_i per response from its metrics and the current EMAs."""
        dev = {m: ((values[m] - self.ema[m]) / (abs(self.ema[m]) + 1e-8)).clamp(-5.0, 5.0) for m in METRICS}
        tau = torch.sigmoid(self.gain * dev["era"])[:, None]
        w = tau * self.w_explore + (1 - tau) * self.w_exploit
        g = self.global_weight if self.fixed else self.global_weight * (1.0 - (self.ema_perf + 1.0) / 2.0)
        return g * (w * torch.stack([torch.tanh(dev[m]) for m in METRICS], -1)).sum(-1)

    def shape(self, adv: torch.Tensor, aux: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        bonus = torch.minimum(torch.relu(aux), adv.abs() / self.kappa)
        return adv + bonus * mask

    def compute(self, groups: Groups, adv):
        batch, engine = groups.extras["batch"], groups.extras["engine"]
        mask = groups.mask.float()
        values = self.metrics(engine, batch)
        out = {f"adv/{m}_mean": float(values[m].mean()) for m in METRICS}
        shaped = adv
        if self.steps > 0:
            aux, _ = batch.to_groups(self.aux(values).float())
            shaped = self.shape(adv, aux, mask)
            out["adv/rank_aux_mean"] = float((aux * mask).sum() / mask.sum().clamp_min(1.0))
            out["adv/rank_shaping_mean"] = float(((shaped - adv) * mask).sum() / mask.sum().clamp_min(1.0))
            changed = ((shaped - adv).abs() > 1e-8) & (mask > 0)
            out["adv/rank_changed_frac"] = float(changed.sum() / mask.sum().clamp_min(1.0))
        a = self.alpha
        for m in METRICS:
            self.ema[m] = (1 - a) * self.ema[m] + a * float(values[m].mean())
        score = (2.0 * groups.rewards - 1.0) * mask
        self.ema_perf = (1 - a) * self.ema_perf + a * float(score.sum() / mask.sum().clamp_min(1.0))
        self.steps += 1
        return shaped, out
