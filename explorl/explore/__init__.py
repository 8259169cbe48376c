"""Exploration plug-ins, one sub-package per level; importing registers them."""
from explorl.explore import advantage, budget, curriculum, decoding, guidance, objective, reference, rollout  # noqa: F401
