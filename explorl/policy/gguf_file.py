"""Models from GGUF files: de-quantized once into an ordinary float model folder.

``model.path`` may name a ``.gguf`` file (the format llama.cpp runs, quantized or not).
``transformers`` reads it (``from_pretrained(folder, gguf_file=...)``, with the ``gguf``
package) and de-quantizes its weights to float32; a model loaded that way keeps a GGUF
quantization config and cannot be saved as it is, so its weights are copied into a plain model
of the same configuration, which is saved with the tokenizer (chat template included) and the
generation config. The folder is kept under ``EXPLORL_HOME/gguf/<first 16 hex digits of the
file's SHA-256>``, written into a temporary folder and renamed into place, so a run that is
stopped half-way leaves nothing a later run would take for a model. Every later run whose
``model.path`` names a file with the same content loads the folder.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

MAGIC = b"GGUF"
#: Written beside the model: where the folder came from.
SOURCE_FILE = "explorl_gguf_source.json"


def is_gguf_path(path) -> bool:
    return str(path).lower().endswith(".gguf")


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def gguf_cache_dir(sha256: str) -> Path:
    from explorl.policy.model import cache_home
    return cache_home() / "gguf" / sha256[:16]


def require_gguf_package(what: str) -> None:
    import importlib.util
    if importlib.util.find_spec("gguf") is None:
        raise ValueError(f"{what}: reading a GGUF file needs the gguf package (pip install -e .[gguf])")


def gguf_model_folder(path, log=print, what: str | None = None) -> Path:
    """The float model folder converted from the GGUF file ``path`` (converted now if it was not
    yet). ``what`` names the file in errors (default: ``model.path '<path>'``)."""
    path = Path(path)
    what = what or f"model.path {str(path)!r}"
    if not path.exists():
        raise FileNotFoundError(f"{what}: no such GGUF file")
    if not path.is_file():
        raise ValueError(f"{what}: is not a file (a GGUF model is one .gguf file)")
    try:
        with open(path, "rb") as fh:
            magic = fh.read(len(MAGIC))
        sha256 = file_sha256(path)
    except OSError as err:
        raise ValueError(f"{what}: cannot be read ({err.strerror or err})") from None
    out = gguf_cache_dir(sha256)
    if (out / "config.json").exists():
        return out
    if magic != MAGIC:
        raise ValueError(f"{what}: not a GGUF file (it does not start with the bytes {MAGIC!r})")
    require_gguf_package(what)
    log(f"model: converting {path} to a float model folder (once): {out}")
    model, tokenizer = read_gguf(path, what)
    write_folder_atomic(out, model, tokenizer, {"source": path.name, "sha256": sha256})
    return out


def read_gguf(path: Path, what: str):
    """The de-quantized float32 model of a GGUF file, as a plain (saveable) model, and its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        quantized = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                         dtype=torch.float32)
    except Exception as err:  # the library raises many kinds on a damaged or unsupported file
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ValueError(f"{what}: transformers cannot read this GGUF file ({type(err).__name__}: {first})") from None
    return plain_copy(quantized), tokenizer


def plain_copy(quantized):
    """A model of ``quantized``'s configuration without its quantization config, holding its weights."""
    import copy

    import torch
    from transformers import AutoModelForCausalLM
    config = copy.deepcopy(quantized.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict(), strict=True)
    model.generation_config = copy.deepcopy(quantized.generation_config)
    return model.eval()


def write_folder_atomic(out: Path, model, tokenizer, source: dict) -> None:
    """Save ``model`` (with its generation config) and ``tokenizer`` into a temporary folder beside
    ``out`` and rename it to ``out``. If another process put ``out`` in place first, keep theirs."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / SOURCE_FILE).write_text(json.dumps(source, indent=2) + "\n")
        try:
            os.replace(tmp, out)
        except OSError:
            if not (out / "config.json").exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
