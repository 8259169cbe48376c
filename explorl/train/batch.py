"""The values that flow through one step: a batch of rollouts and its per-group views."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from explorl.explore.base import Groups
from explorl.tasks.problem import Problem


@dataclass
class RolloutBatch:
    """P problems, R = Σ counts responses. Response tensors are ``(R, Lc)``, right-padded.

    ``prompt_ids`` ``(P, Lp)`` are left-padded; ``group[r]`` is the problem of response r.
    ``mask`` marks generated tokens (the EOS included). ``behaviour_logp`` is the log-prob
    under the sampling distribution, ``old_logp`` under π_old at temperature 1.
    """

    problems: list[Problem]
    counts: list[int]
    group: torch.Tensor
    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    response_ids: torch.Tensor
    mask: torch.Tensor
    behaviour_logp: torch.Tensor
    old_logp: torch.Tensor
    entropy: torch.Tensor
    texts: list[str]
    rewards: torch.Tensor | None = None
    advantages: torch.Tensor | None = None   # (R,) sequence-level
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return self.response_ids.shape[0]

    @property
    def lengths(self) -> torch.Tensor:
        return self.mask.sum(-1)

    @property
    def tokens(self) -> int:
        return int(self.mask.sum().item())

    def slot(self) -> torch.Tensor:
        """Position of each response within its group, ``(R,)``."""
        starts = torch.tensor([0] + self.counts[:-1]).cumsum(0)
        return torch.arange(self.size) - starts[self.group]

    def to_groups(self, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scatter per-response ``values`` ``(R,)`` into a padded ``(P, G)`` grid and its mask."""
        P, G = len(self.counts), max(self.counts)
        grid = values.new_zeros(P, G)
        mask = torch.zeros(P, G)
        grid[self.group, self.slot()] = values
        mask[self.group, self.slot()] = 1.0
        return grid, mask

    def from_groups(self, grid: torch.Tensor) -> torch.Tensor:
        return grid[self.group, self.slot()]

    def groups(self) -> Groups:
        rewards, mask = self.to_groups(self.rewards.float())
        lengths, _ = self.to_groups(self.lengths.float())
        mean_logp = (self.old_logp * self.mask).sum(-1) / self.lengths.clamp_min(1)
        logp_mean, _ = self.to_groups(mean_logp)
        return Groups(rewards=rewards, mask=mask, lengths=lengths, logp_mean=logp_mean,
                      problems=self.problems, extras=dict(self.extras))
