"""LoRA adapters through peft (``model.lora``): only the adapters train, the base stays frozen.

- **Wrapping.** ``add_lora`` injects ``peft`` LoRA layers in place of the target modules; the
  adapter weights start from a seeded draw (``lora_B`` = 0, so the policy starts as the base)
  and are kept in float32 even when the base is bfloat16/float16 (peft's default).
- **Reference policy.** KL-type terms and ``repr_bonus`` compare with the base model: that is
  the same model with its adapters switched off (``AdaptersOff``), so no second copy of the
  base weights is held in memory.
- **Checkpoints.** ``save_pretrained`` of a peft model writes the adapters only
  (``adapter_model.safetensors``, ``adapter_config.json``). The base is rebuilt from the run's
  configuration (``model.path`` or the cached warm start) and must match the SHA-256 of its
  weights recorded at save time (``base_fingerprint``), so a changed base is refused instead of
  resumed silently.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from explorl.policy.model import unwrap

#: ``model.lora`` keys and their defaults. ``target_modules: null`` = peft's default for the
#: architecture (e.g. q_proj, v_proj for Llama/Qwen2; c_attn for GPT-2); ``all-linear`` = every linear layer.
DEFAULTS = {"r": 8, "alpha": 16.0, "dropout": 0.0, "target_modules": None}
ADAPTER_FILE = "adapter_model.safetensors"


def is_lora(model) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "disable_adapter")


def add_lora(model, lora: dict, seed: int):
    """``model`` wrapped with trainable LoRA adapters as ``lora`` (``model.lora``) describes."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ValueError("model.lora: needs the peft package (pip install -e .[lora])") from None
    opts = {**DEFAULTS, **lora}
    config = LoraConfig(r=opts["r"], lora_alpha=opts["alpha"], lora_dropout=opts["dropout"],
                        target_modules=opts["target_modules"], task_type="CAUSAL_LM")
    with torch.random.fork_rng(devices=[]):  # a seeded adapter init that leaves the global RNG as it was
        torch.manual_seed(seed)
        try:
            return get_peft_model(model, config)
        except ValueError as err:
            raise ValueError(f"model.lora.target_modules: {err}") from None


class AdaptersOff:
    """The reference policy of a LoRA run: ``engine``'s model with its adapters disabled,
    under no_grad and in eval mode. It answers ``response_logits`` as an engine does."""

    def __init__(self, engine):
        self.engine = engine

    @property
    def model(self):
        return self.engine.model

    @property
    def device(self):
        return self.engine.device

    @torch.no_grad()
    def response_logits(self, batch, rows=None, return_hidden=False):
        model = self.engine.model
        was_training = model.training
        model.eval()
        try:
            with model.disable_adapter():
                return self.engine.response_logits(batch, rows, return_hidden)
        finally:
            model.train(was_training)


def load_adapters(model, folder: Path) -> None:
    """Load the adapter weights saved in ``folder`` into the LoRA model ``model``."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file
    path = Path(folder) / ADAPTER_FILE
    if not path.exists():
        raise FileNotFoundError(f"{folder}: no {ADAPTER_FILE}; not the checkpoint of a model.lora run")
    result = set_peft_model_state_dict(model, load_file(str(path)))
    unexpected = list(getattr(result, "unexpected_keys", []))
    missing = [k for k in getattr(result, "missing_keys", []) if "lora_" in k]
    if unexpected or missing:
        raise ValueError(f"{path}: the saved adapters do not fit this model.lora configuration "
                         f"(unexpected: {unexpected[:3]}, missing: {missing[:3]})")


def base_fingerprint(model) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of the frozen base weights (adapters excluded)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(unwrap(model).state_dict().items()):
        if "lora_" in name:
            continue
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()
