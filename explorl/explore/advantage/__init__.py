from explorl.explore.advantage import grpo  # noqa: F401
from explorl.explore.advantage import effective_rank, passk, repr_bonus, submodular, xrpo_novelty  # noqa: F401
from explorl.explore.advantage import tree_grpo  # noqa: F401
