"""Loading a policy: any local or hub ``AutoModelForCausalLM`` directory, or the testbed's
tiny model built from a ``transformers`` config with the character tokenizer."""
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


def load_pretrained(path: str | Path, dtype: str = "float32"):
    """Load a model directory (local, or a hub id where a hub is reachable) and its tokenizer."""
    path = str(path)
    if os.path.isdir(path) and not (Path(path) / "config.json").exists():
        raise FileNotFoundError(f"model.path {path!r} is a folder without config.json: not a saved model")
    AutoConfig.from_pretrained(path)  # fails early with the library's message for a bad path
    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


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
