"""Guidance: how teacher, reference, replayed and prefix-conditioned samples enter a group."""
from explorl.explore.guidance import sft  # noqa: F401
