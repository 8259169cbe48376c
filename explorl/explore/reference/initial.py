"""The default reference: the frozen initial policy (the model ``model.path`` or the warm start
gives), as in GRPO's KL term (arXiv:2402.03300) and RLHF's PPO penalty."""
from __future__ import annotations

from explorl.explore.base import Reference
from explorl.registry import register


@register("reference", "initial", paper="baseline: the frozen initial policy (GRPO, arXiv:2402.03300; RLHF PPO)")
class Initial(Reference):
    policy_init = "initial"

    def describe(self) -> str:
        return "reference: the initial policy"
