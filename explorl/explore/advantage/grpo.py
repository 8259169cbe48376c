"""Group-relative advantage (GRPO) and its Dr. GRPO variant.

GRPO (Shao et al., DeepSeekMath, arXiv:2402.03300): A_i = (r_i − mean_g r) / (std_g r + ε),
with the unbiased std as in verl's ``compute_grpo_outcome_advantage``; a group of one gets
A = 0. Dr. GRPO (Liu et al., arXiv:2503.20783) drops the std division: ``scale_by_std=False``
(verl ``norm_adv_by_std_in_grpo=False``, TRL ``scale_rewards="none"``).
Groups may have different sizes (variable rollout budgets): statistics use each group's own
count.
"""
from __future__ import annotations

import torch

from explorl.explore.acted import ALWAYS
from explorl.explore.base import Advantage, Groups
from explorl.registry import register


def group_mean_std(rewards: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group mean and unbiased std over the valid entries, each ``(P, 1)``."""
    n = mask.sum(1, keepdim=True)
    mean = (rewards * mask).sum(1, keepdim=True) / n.clamp_min(1)
    var = (((rewards - mean) ** 2) * mask).sum(1, keepdim=True) / (n - 1).clamp_min(1)
    return mean, var.sqrt()


@register("advantage", "grpo", paper="GRPO, DeepSeekMath (arXiv:2402.03300); Dr. GRPO (arXiv:2503.20783) with scale_by_std=false")
class GRPO(Advantage):
    kind = "estimator"
    min_group_size = 2  # group-relative: a lone rollout has no group to compare with

    def __init__(self, scale_by_std: bool = True, epsilon: float = 1e-6):
        self.scale_by_std, self.epsilon = scale_by_std, epsilon

    def engagement(self):
        """GRPO itself is the baseline; without the std division (Dr. GRPO) it is a mechanism that
        acts on every step."""
        return None if self.scale_by_std else (ALWAYS,)

    def compute(self, groups: Groups, adv=None):
        mask = groups.mask.float()
        mean, std = group_mean_std(groups.rewards, mask)
        adv = groups.rewards - mean
        if self.scale_by_std:
            adv = adv / (std + self.epsilon)
        adv = adv * mask * (groups.counts.unsqueeze(1) > 1)
        zero_std = ((std.squeeze(1) < 1e-8) & (groups.counts > 0)).float()
        return adv, {"adv/frac_zero_std": zero_std.mean().item()}
