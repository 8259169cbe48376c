"""Loading a policy: any local or hub ``AutoModelForCausalLM`` directory, or the testbed's
tiny model built from a ``transformers`` config with the character tokenizer.

``model.dtype`` is the precision of the weights and of the forward passes; log-probs, entropies
and losses are computed in float32 from the logits (``train.update.token_logp_entropy``), and
the optimizer keeps float32 master weights (``train.optim``). ``check_dtype`` runs a small
matrix product, softmax and backward pass in the dtype first and stops with an error naming
``model.dtype`` where the device cannot: a run never falls back to another precision than its
configuration says. CPU PyTorch runs both bfloat16 and float16 (float16 slowly).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from explorl.policy.tokenizer import build_char_tokenizer

try:  # the per-shard progress bars of save/load drown the training progress bar
    from transformers.utils import logging as _hf_logging
    _hf_logging.disable_progress_bar()
except ImportError:  # pragma: no cover
    pass

FAMILIES = {"qwen2": "Qwen2Config", "llama": "LlamaConfig"}


def cache_home() -> Path:
    """Where warm-started models are kept (``EXPLORL_HOME``, default ``~/.cache/explorl``)."""
    return Path(os.environ.get("EXPLORL_HOME", Path.home() / ".cache" / "explorl"))


def config_key(*parts) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def build_tiny(family: str, alphabet: str, hidden_size: int, layers: int, heads: int, kv_heads: int,
               intermediate_size: int, max_positions: int, seed: int):
    """A freshly initialised tiny causal LM and its character tokenizer."""
    import transformers
    if family not in FAMILIES:
        raise ValueError(f"model.tiny.family: unknown family {family!r} (valid: {', '.join(FAMILIES)})")
    tokenizer = build_char_tokenizer(alphabet)
    config = getattr(transformers, FAMILIES[family])(
        vocab_size=len(tokenizer), hidden_size=hidden_size, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, intermediate_size=intermediate_size,
        max_position_embeddings=max_positions, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    return model, tokenizer


def model_folder(path: str | Path, log=print) -> str:
    """What ``model.path`` names, as a folder (or hub id) ``from_pretrained`` loads: a registered
    model name (``explorl fetch-model``) is its fetched folder, a ``.gguf`` file its converted
    folder (``explorl.policy.gguf_file``, converted on first use); anything else as it is."""
    from explorl.policy.fetch import KNOWN_MODELS, fetched_folder
    from explorl.policy.gguf_file import gguf_model_folder, is_gguf_path
    path = str(path)
    if path in KNOWN_MODELS and not os.path.exists(path):
        return str(fetched_folder(path))
    if is_gguf_path(path):
        return str(gguf_model_folder(path, log))
    return path


def load_pretrained(path: str | Path, dtype: str = "float32", log=print):
    """Load a model directory (local, or a hub id where a hub is reachable; see ``model_folder``
    for GGUF files and registered names) and its tokenizer, the weights in ``dtype`` (checked to
    work on this machine first)."""
    path = model_folder(path, log)
    if os.path.isdir(path) and not (Path(path) / "config.json").exists():
        raise FileNotFoundError(f"model.path {path!r} is a folder without config.json: not a saved model")
    AutoConfig.from_pretrained(path)  # fails early with the library's message for a bad path
    check_dtype(dtype, torch.device("cpu"))
    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def weight_shapes(folder: str | Path) -> dict[str, tuple[int, ...]] | None:
    """Name -> shape of every tensor in the safetensors files of a saved model folder, read from
    their headers (no weights are loaded); ``None`` where the folder holds no safetensors file."""
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        return None
    from safetensors import safe_open
    shapes = {}
    for file in files:
        with safe_open(str(file), "pt") as handle:
            for key in handle.keys():
                shapes[key] = tuple(handle.get_slice(key).get_shape())
    return shapes


def unwrap(model):
    """The ``transformers`` model itself: under a peft wrapper, the base model (whose layers
    hold the adapters), else ``model``."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if get_base is not None else model


def decoder_layers(model) -> list[torch.nn.Module]:
    """The model's repeated blocks, in order: the modules whose class it names in
    ``_no_split_modules`` (Qwen2DecoderLayer, GPT2Block, ...); empty when it names none."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    return [m for m in model.modules() if type(m).__name__ in names]


def check_dtype(dtype: str, device: torch.device) -> None:
    """Raise ``ValueError`` naming ``model.dtype`` unless a matrix product, its gradient and a
    softmax run in ``dtype`` on ``device``. The policy is never silently trained in another
    precision than the configuration says."""
    kind = getattr(torch, dtype)
    try:
        x = torch.ones(4, 8, dtype=kind, device=device)
        w = torch.ones(8, 8, dtype=kind, device=device, requires_grad=True)
        torch.log_softmax(x @ w, -1).float().sum().backward()
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"model.dtype: {dtype} does not run on {device} here ({str(err).splitlines()[0]}); "
                         f"use float32, or bfloat16 where the device supports it") from None


def set_dtype(model, dtype: str) -> None:
    """Cast ``model`` to ``dtype`` in place (after checking the device supports it)."""
    kind = getattr(torch, dtype)
    if next(model.parameters()).dtype != kind:
        check_dtype(dtype, next(model.parameters()).device)
        model.to(kind)


def disable_dropout(model) -> list[str]:
    """Set every dropout probability of ``model`` to 0 (modules, attention dropout rates kept as
    numbers, and the config, so a saved checkpoint says so); returns what was non-zero.

    The policy-gradient ratio compares the training forward (train mode) with the log-probs
    recorded while sampling (eval mode): with dropout on, they differ on the same tokens and
    the first minibatch is already "off-policy". LoRA's own dropout, added later, is kept.
    """
    changed = set()
    config = getattr(model, "config", None)
    for key, value in list(vars(config).items()) if config is not None else []:
        if ("dropout" in key or key.endswith("pdrop")) and isinstance(value, float) and value > 0:
            setattr(config, key, 0.0)
            changed.add(f"config.{key}={value}")
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout) and module.p > 0:
            changed.add(f"dropout p={module.p}")
            module.p = 0.0
        for key, value in list(vars(module).items()):
            if "dropout" in key and isinstance(value, float) and value > 0:
                setattr(module, key, 0.0)
                changed.add(f"{type(module).__name__}.{key}={value}")
    return sorted(changed)


def enable_gradient_checkpointing(model) -> None:
    """Recompute each layer's activations in the backward pass (non-reentrant checkpointing,
    which needs no input gradients, so frozen embeddings under LoRA are fine)."""
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise ValueError(f"model.gradient_checkpointing: {type(model).__name__} does not support gradient "
                         f"checkpointing")
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def gradient_checkpointing(model) -> bool:
    """Whether checkpointing is on for any layer of the ``transformers`` model under ``model``."""
    return any(getattr(m, "gradient_checkpointing", False) is True for m in unwrap(model).modules())


def save_atomic(model, tokenizer, path: Path) -> None:
    """``save_pretrained`` into a temporary folder, then rename it into place."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        import shutil
        shutil.rmtree(tmp)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if path.exists():
        import shutil
        shutil.rmtree(path)
    os.replace(tmp, path)
