"""The optimizer: AdamW over the trainable parameters only (with LoRA, the adapters), with
float32 master weights for parameters held in bfloat16 or float16.

An AdamW step is about ``lr`` per weight, far below half a bfloat16 ulp of a typical weight
(2^-9 relative): stepping the low-precision weights directly would round most updates away.
So each such parameter has a float32 master copy that the optimizer steps; the model gets a
rounded copy after every step. Its gradient is accumulated into the master's in float32 as
soon as a backward pass produces it (micro-batches add up in float32). The master copies are
part of ``state_dict``, so a resumed run continues exactly. Float32 parameters (all of them in
a float32 run, LoRA adapters always) are stepped in place, with no copy.

Full fine-tuning in bfloat16 therefore holds 2 (weights) + 4 (master) + 8 (AdamW moments)
bytes per parameter, against 4 + 8 in float32: low precision saves activation memory and
compute, not optimizer memory; LoRA over a bfloat16 base is what saves weight memory. There is
no loss scaling: with float16, gradients below its smallest subnormal (6e-8) become 0, so
prefer bfloat16 where the device has it.
"""
from __future__ import annotations

import torch

LOW_PRECISION = (torch.bfloat16, torch.float16)


def build_optimizer(model, lr: float, weight_decay: float):
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    if any(p.dtype in LOW_PRECISION for p in params):
        return MasterWeights(params, lr, weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def stepped_parameters(optimizer) -> list[torch.Tensor]:
    """The tensors the optimizer steps, whose ``.grad`` is clipped (masters where there are any)."""
    return [p for group in optimizer.param_groups for p in group["params"]]


class MasterWeights:
    """AdamW on float32 copies of the low-precision parameters (see the module docstring)."""

    def __init__(self, params, lr: float, weight_decay: float):
        self.pairs = []  # (model parameter, float32 master)
        stepped = []
        for p in params:
            if p.dtype in LOW_PRECISION:
                master = p.detach().float().clone().requires_grad_(True)
                p.register_post_accumulate_grad_hook(self._to_master(master))
                self.pairs.append((p, master))
                stepped.append(master)
            else:
                stepped.append(p)
        self.inner = torch.optim.AdamW(stepped, lr=lr, weight_decay=weight_decay)

    @staticmethod
    def _to_master(master):
        def hook(p):
            grad = p.grad.float()
            master.grad = grad if master.grad is None else master.grad.add_(grad)
            p.grad = None
        return hook

    @property
    def param_groups(self):
        return self.inner.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.inner.zero_grad(set_to_none=set_to_none)
        for p, _ in self.pairs:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        self.inner.step()
        for p, master in self.pairs:
            p.copy_(master)

    def state_dict(self) -> dict:
        return {"adamw": self.inner.state_dict(), "master": [m.detach().clone() for _, m in self.pairs]}

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        self.inner.load_state_dict(state["adamw"])
        for (p, master), saved in zip(self.pairs, state["master"], strict=True):
            master.copy_(saved)
            p.copy_(saved)
