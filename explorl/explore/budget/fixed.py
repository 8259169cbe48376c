"""The same number of rollouts for every problem (GRPO's group size)."""
from __future__ import annotations

from explorl.explore.base import Budget
from explorl.registry import register


@register("budget", "fixed", paper="baseline: GRPO group size (DeepSeekMath, arXiv:2402.03300)")
class Fixed(Budget):
    def __init__(self, n: int | None = None):
        """``n`` rollouts per problem; ``None`` takes ``train.rollouts_per_problem``."""
        if n is not None and n < 1:
            raise ValueError(f"budget fixed: n must be >= 1, got {n}")
        self.n = n

    def fewest_rollouts(self, rollouts_per_problem):
        return self.n if self.n is not None else rollouts_per_problem

    def allocate(self, problems, total):
        n = self.n if self.n is not None else max(1, total // max(1, len(problems)))
        return [n] * len(problems), {"budget/rollouts": float(n * len(problems))}
