"""Activation interventions: a change to the residual stream the rollout engine makes while it
samples, and only then (never in a training, scoring or evaluation forward).

An intervention names the decoder ``layer`` (0-based) at whose output it acts, and is called
there as ``intervention(h, prompt)`` with the hidden states ``h`` ``(B, T, d)``: once over the
prompts (``prompt=True``; prompts are left-padded, so ``h[:, -1]`` is each prompt's last token)
and once per decoded token (``prompt=False``, ``T = 1``). It returns the new ``h``.

A decoding plug-in hands one to the trainer (``Decoding.intervention(step)``), the trainer to
``RolloutEngine.rollout``; the engine installs it in its fast path (``fastlm``) or, in the
Hugging Face backend, as a forward hook on that layer, for the sampling only. The engine then
records the steered sampler's log-probs as ``behaviour_logp`` and takes ``old_logp`` and
``entropy`` from an unsteered forward, so the policy loss corrects the mismatch (``tis_cap``).
"""
from __future__ import annotations

import torch

POSITIONS = ("all", "generated")


class Intervention:
    layer: int

    def __call__(self, h: torch.Tensor, prompt: bool) -> torch.Tensor:
        raise NotImplementedError


class AddVector(Intervention):
    """h ← h + v at the output of ``layer``: at every position (``positions="all"``: the prompt's
    and each generated token's) or at the generated ones only (``"generated"``: each decoded
    token, and the last prompt token, whose output predicts the first response token)."""

    def __init__(self, layer: int, vector: torch.Tensor, positions: str = "all"):
        if positions not in POSITIONS:
            raise ValueError(f"positions must be one of {', '.join(POSITIONS)}, got {positions!r}")
        self.layer, self.vector, self.positions = int(layer), vector.detach().float().cpu(), positions
        self._on = {}  # the vector on each (device, dtype) it was asked for

    def _vector(self, h):
        key = (h.device, h.dtype)
        if key not in self._on:
            self._on[key] = self.vector.to(device=h.device, dtype=h.dtype)
        return self._on[key]

    def __call__(self, h, prompt):
        v = self._vector(h)
        if prompt and self.positions == "generated":
            return torch.cat([h[:, :-1], h[:, -1:] + v], dim=1)
        return h + v


class LastPromptActivations(Intervention):
    """Reads ``h[:, -1]`` on a prompt's forward (each prompt's last token) and changes nothing."""

    def __init__(self, layer: int):
        self.layer, self.rows = int(layer), None

    def __call__(self, h, prompt):
        if prompt:
            self.rows = h[:, -1].detach().float().cpu()
        return h


def check_layer(intervention: Intervention, layers: int) -> None:
    if not 0 <= intervention.layer < layers:
        raise ValueError(f"activation intervention at layer {intervention.layer}: the model has {layers} decoder "
                         f"layers (0 to {layers - 1})")
