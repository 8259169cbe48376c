"""Pass@k training: the closed-form advantage of a group under the pass@k reward.

Chen et al., *Pass@k Training for Adaptively Balancing Exploration and Exploitation of Large
Reasoning Models*, arXiv:2508.10751 (RUCAIBox/Passk_Training ``code/passk_adv.py``). For a
group of N rollouts with c correct, the reward of a k-subset is max of its rewards; averaging
over all C(N, k) subsets gives

    ρ̄ = 1 − C(N−c, k) / C(N, k)              σ = sqrt(ρ̄ (1 − ρ̄))
    A_pos = (1 − ρ̄) / (σ + 1e-6)
    A_neg = (1 − ρ̄ − C(N−c−1, k−1) / C(N−1, k−1)) / (σ + 1e-6)

every correct rollout gets A_pos and every wrong one A_neg. This replaces GRPO (an estimator).

Documented choices:

- "Correct" means reward ≥ 1 (the code tests ``val == 1``; the testbed's rewards are 0/1).
- Groups of different sizes use their own N. The formula needs N ≥ k (the code divides by
  C(N, k) = 0 otherwise). For a group with N < k, ``fallback="grpo"`` (default) gives it the
  GRPO advantage (std-normalised), ``"clamp"`` uses k = N (pass@N over all N rollouts: no
  subset can miss a correct answer, so every advantage is 0), ``"zero"`` gives 0.
- The default k = 4 is not from the paper's configs (UNVERIFIED: the README gives no k).
"""
from __future__ import annotations

from math import comb

import torch

from explorl.explore.advantage.grpo import GRPO
from explorl.explore.acted import Acted
from explorl.explore.base import Advantage, Groups
from explorl.registry import register


def _comb(n: int, k: int) -> int:
    return comb(n, k) if 0 <= k <= n else 0


def passk_advantages(n: int, c: int, k: int, eps: float = 1e-6) -> tuple[float, float]:
    """(A_pos, A_neg) for c correct of n rollouts under pass@k (needs n ≥ k ≥ 1)."""
    rho = 1.0 - _comb(n - c, k) / _comb(n, k)
    sigma = (rho * (1.0 - rho)) ** 0.5
    a_pos = (1.0 - rho) / (sigma + eps)
    a_neg = (1.0 - rho - _comb(n - c - 1, k - 1) / _comb(n - 1, k - 1)) / (sigma + eps)
    return a_pos, a_neg


@register("advantage", "passk", paper="Pass@k Training (arXiv:2508.10751)")
class PassK(Advantage):
    kind = "estimator"
    min_group_size = 2  # group-relative: a lone rollout has no group to compare with
    engaged_when = (Acted("adv/passk_mixed_groups", ">=", 0.1,
                          what="groups with mixed rewards get the pass@k advantage (>= 10% of groups)"),)

    def __init__(self, k: int = 4, fallback: str = "grpo", epsilon: float = 1e-6):
        if k < 1:
            raise ValueError(f"advantage passk: k must be >= 1, got {k}")
        if fallback not in ("grpo", "clamp", "zero"):
            raise ValueError(f"advantage passk: fallback must be grpo, clamp or zero, got {fallback!r}")
        self.k, self.fallback, self.epsilon = k, fallback, epsilon

    def compute(self, groups: Groups, adv=None):
        mask = groups.mask.float()
        correct = (groups.rewards >= 1.0) & (mask > 0)
        out = torch.zeros_like(groups.rewards, dtype=torch.float)
        grpo = None
        short = mixed = 0
        for p, (n, c) in enumerate(zip(groups.counts.long().tolist(), correct.sum(1).tolist())):
            if n == 0:
                continue
            k = self.k
            if n < k:
                short += 1
                if self.fallback == "zero":
                    continue
                if self.fallback == "grpo":
                    if grpo is None:
                        grpo, _ = GRPO(epsilon=self.epsilon).compute(groups, None)
                    out[p] = grpo[p]
                    continue
                k = n
            a_pos, a_neg = passk_advantages(n, c, k, self.epsilon)
            mixed += 0 < c < n
            out[p] = torch.where(correct[p], torch.tensor(a_pos), torch.tensor(a_neg))
        out = out * mask
        groups_n = max(len(groups.problems), 1)
        return out, {"adv/passk_short_groups": short / groups_n, "adv/passk_mixed_groups": mixed / groups_n}
