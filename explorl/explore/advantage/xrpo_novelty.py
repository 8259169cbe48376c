"""XRPO novelty sharpening: extra advantage for correct but unlikely responses.

XRPO (*eXplore–eXploit GRPO*; the official code UIUC-MLSys/XRPO was not available), from the
third-party reimplementation grpo_composer ``core/advantages/novelty_sharpening.py``:

    s_i = (1/|o_i|) Σ_t log π(o_{i,t})              (``Groups.logp_mean``: π_old at T = 1)
    η_i = exp(s_i − mean_j s_j)                      (within the group; < 1 if less likely)
    A_i ← A_i + min(max(λ (1 − η_i), 0), κ · A_i)    for correct responses

Documented choices: "correct" is reward ≥ 1; the bonus is applied only where A_i > 0 (for
A_i ≤ 0 the cap κ·A_i would turn it into a penalty; with GRPO every correct response of a
mixed group has A_i > 0 and all-correct groups have A = 0, so nothing changes there);
λ = κ = 1 are the reimplementation's defaults, the paper's values are UNVERIFIED.
"""
from __future__ import annotations

import torch

from explorl.explore.acted import Acted
from explorl.explore.base import Advantage, Groups
from explorl.registry import register


@register("advantage", "xrpo_novelty", paper="XRPO novelty-guided advantage sharpening (3rd-party grpo_composer)")
class XRPONovelty(Advantage):
    kind = "shaper"
    engaged_when = (Acted("adv/novelty_sharpened", ">", 0, what="sharpened correct responses per step > 0"),)

    def __init__(self, novelty_coef: float = 1.0, kappa: float = 1.0):
        if kappa < 0:
            raise ValueError(f"advantage xrpo_novelty: kappa must be >= 0, got {kappa}")
        self.lam, self.kappa = novelty_coef, kappa

    def compute(self, groups: Groups, adv):
        mask = groups.mask.float()
        s = groups.logp_mean.float()
        mean_s = (s * mask).sum(1, keepdim=True) / mask.sum(1, keepdim=True).clamp_min(1.0)
        eta = torch.exp((s - mean_s) * mask)
        bonus = torch.minimum((self.lam * (1.0 - eta)).clamp_min(0.0), self.kappa * adv)
        apply = (groups.rewards >= 1.0) & (mask > 0) & (adv > 0)
        bonus = torch.where(apply, bonus, torch.zeros_like(bonus))
        n = apply.sum().clamp_min(1)
        return adv + bonus, {"adv/novelty_bonus_mean": float(bonus.sum() / n),
                             "adv/novelty_frac": float(apply.float().sum() / mask.sum().clamp_min(1.0)),
                             "adv/novelty_sharpened": float((bonus > 0).sum())}
