"""AEPO: entropy control by REINFORCE on temperature-tempered samples.

*Arbitrary Entropy Policy Optimization* (AEPO); code 597358816/AEPO (EasyR1,
``ray_trainer.py::fit``, the ``alg == "AEPO"`` branch):

    ∇J = ∇J_GRPO + α · E_{o ~ π_θ^T}[ ∇ log π_θ(o|q) · R(q, o) ]
    T = T_high (1.2) if H ≤ H_target else T_low (0.8)

Each step, for a quarter of the batch's problems, n more rollouts are drawn at temperature T
(n = the problem's group size) and given their own GRPO advantages; samples with A > 0.05 (the
correct answers of mixed groups) are kept with advantage 1 (REINFORCE, reward 1, no baseline);
m = min(``reinforce_sample_num``, #kept), halved when H > H_target. Their old log-probs are those
of π_old at temperature 1 (the engine records them as ``old_logp``), so the PPO ratio is taken
against the T = 1 policy with no importance correction: the tempered distribution acts as a
regulariser. H is a running estimate updated in ``observe``: by default the mean negative
log-prob of the sampled tokens under π_old (``entropy_source="sampled_nll"``, the code's
``actor/entropy_loss``, measured on the whole update batch, tempered samples included);
``"entropy"`` uses the full-vocabulary rollout entropy (``StepStats.entropy``). Before the
first observation the current batch's value is used.

Documented choices:

- **Overwrite vs. append.** The code overwrites the first m GRPO samples of the flat batch.
  With ``replace=True`` (default) the first m rollouts of the batch (in group order) are
  dropped and the m tempered samples are appended as extra groups (``RolloutBatch.concat``;
  a tempered group holds only the kept samples of one problem, which may also appear among
  the GRPO groups); the batch keeps its size. ``replace=False`` only appends. The advantages
  of the remaining GRPO rollouts are those computed on their full groups.
- The quarter of problems is the first ⌊P/4⌋ (at least 1) of the batch (the curriculum
  already draws them at random).
- α is realised by the overwrite ratio, as in the code; ``reinforce_advantage`` (default 1)
  is the advantage given to the tempered samples.
- Defaults: H_target (``entropy_target``) = 0.5 from the config (the README's best run uses
  0.75), T_high = 1.2, T_low = 0.8, ``reinforce_sample_num`` = 60, threshold 0.05.

The loss term itself is zero: AEPO acts through the batch (``augment``).
"""
from __future__ import annotations

import torch

from explorl.explore.advantage.grpo import GRPO
from explorl.explore.acted import Acted
from explorl.explore.base import Objective
from explorl.registry import register


def select_rows(batch, rows: torch.Tensor):
    """The sub-batch of the responses ``rows`` (groups keep their order; partial groups allowed)."""
    rows = torch.as_tensor(rows, dtype=torch.long).sort().values
    groups = batch.group[rows]
    keep = torch.unique(groups)
    remap = torch.full((len(batch.problems),), -1, dtype=torch.long)
    remap[keep] = torch.arange(len(keep))
    counts = torch.bincount(remap[groups], minlength=len(keep)).tolist()
    return batch._with_rows(rows, [batch.problems[g] for g in keep.tolist()], counts, remap[groups], keep)


def sampled_nll(batch) -> float:
    """−mean log π_old(sampled token) over the response tokens (a sample estimate of entropy)."""
    mask = batch.mask.float()
    return float(-(batch.old_logp * mask).sum() / mask.sum().clamp_min(1.0))


def _pad_id(batch) -> int:
    pad = batch.response_ids[batch.mask == 0]
    return int(pad[0]) if len(pad) else 0


@register("objective", "aepo", paper="AEPO, Arbitrary Entropy Policy Optimization (code 597358816/AEPO)")
class AEPO(Objective):
    engaged_when = (Acted("aepo/added", ">", 0, what="tempered REINFORCE samples used per step > 0"),)
    state_keys = ("entropy_estimate",)

    def __init__(self, entropy_target: float = 0.5, temp_high: float = 1.2, temp_low: float = 0.8,
                 problem_fraction: float = 0.25, reinforce_sample_num: int = 60, advantage_threshold: float = 0.05,
                 reinforce_advantage: float = 1.0, replace: bool = True, entropy_source: str = "sampled_nll"):
        if not 0 < problem_fraction <= 1:
            raise ValueError(f"objective aepo: problem_fraction must be in (0, 1], got {problem_fraction}")
        if temp_high <= 0 or temp_low <= 0:
            raise ValueError("objective aepo: temperatures must be > 0")
        if entropy_source not in ("sampled_nll", "entropy"):
            raise ValueError(f"objective aepo: entropy_source must be 'sampled_nll' or 'entropy', got {entropy_source!r}")
        self.target, self.temp_high, self.temp_low = entropy_target, temp_high, temp_low
        self.fraction, self.max_samples, self.threshold = problem_fraction, reinforce_sample_num, advantage_threshold
        self.reinforce_advantage, self.replace, self.entropy_source = reinforce_advantage, replace, entropy_source
        self.entropy_estimate = None

    def temperature(self, entropy: float) -> float:
        return self.temp_high if entropy <= self.target else self.temp_low

    def term(self, ctx):
        return torch.zeros_like(ctx.logp), {}

    def augment(self, batch, sampler):
        entropy = self.entropy_estimate if self.entropy_estimate is not None else sampled_nll(batch)
        temp = self.temperature(entropy)
        n = max(1, int(len(batch.problems) * self.fraction))
        extra = sampler(batch.problems[:n], batch.counts[:n], temp)
        adv, _ = GRPO().compute(extra.groups(), None)
        kept = (extra.from_groups(adv) > self.threshold).nonzero().squeeze(-1)
        m = min(self.max_samples, len(kept))
        if entropy > self.target:
            m //= 2
        metrics = {"aepo/temperature": temp, "aepo/entropy_estimate": entropy,
                   "aepo/tempered_rollouts": float(extra.size), "aepo/kept": float(len(kept)), "aepo/added": float(m)}
        if m == 0:
            metrics["aepo/replaced"] = 0.0
            return batch, metrics
        tempered = select_rows(extra, kept[:m])
        tempered.advantages = torch.full((m,), float(self.reinforce_advantage))
        drop = min(m, batch.size) if self.replace else 0
        parts = [select_rows(batch, torch.arange(drop, batch.size))] if drop < batch.size else []
        out = type(batch).concat(parts + [tempered], _pad_id(batch))
        out.extras = dict(batch.extras)
        metrics["aepo/replaced"] = float(drop)
        return out, metrics

    def observe(self, stats):
        batch = stats.extras.get("batch")
        if self.entropy_source == "sampled_nll" and batch is not None:
            self.entropy_estimate = sampled_nll(batch)
        else:
            self.entropy_estimate = float(stats.entropy)
        return {"aepo/entropy_next": self.entropy_estimate}
