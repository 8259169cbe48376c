"""One temperature for every position, optionally with nucleus (top-p) truncation."""
from __future__ import annotations

import torch

from explorl.explore.base import Decoding
from explorl.registry import register


@register("decoding", "constant", paper="baseline: fixed-temperature sampling with top-p")
class Constant(Decoding):
    def __init__(self, temperature: float = 1.0, top_p: float = 1.0):
        if temperature <= 0:
            raise ValueError(f"decoding constant: temperature must be > 0, got {temperature}")
        if not 0 < top_p <= 1:
            raise ValueError(f"decoding constant: top_p must be in (0, 1], got {top_p}")
        self.temperature, self.top_p = temperature, top_p

    def temperatures(self, step, max_new_tokens):
        return torch.full((max_new_tokens,), float(self.temperature))
