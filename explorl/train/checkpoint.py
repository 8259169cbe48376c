"""Checkpoints: model, optimizer, every RNG and every plug-in's state, written so that no crash
can leave a run without a complete one.

A checkpoint is a folder ``ckpt/step_NNNNNN`` holding ``model/`` (``save_pretrained``),
``trainer.pt`` and ``manifest.json`` (size and SHA-256 of every file). It is written under a
temporary name, every file is flushed to disk, and only then renamed into place; the pointer
``ckpt/latest`` is a hint, never the only record. ``latest`` scans the ``step_*`` folders newest
first and returns the first whose manifest matches its files, warning about (and setting aside)
any newer one that does not. Older checkpoints are pruned only once a newer one is complete.

With ``model.lora``, ``model/`` holds the adapters only (``adapter_model.safetensors``,
``adapter_config.json``, covered by the manifest like any file) and the tokenizer; the frozen
base is rebuilt from the run's configuration, and ``trainer.pt`` records the SHA-256 of its
weights (``base_model_sha256``), which ``check_base`` compares before a resume or an evaluation
uses the adapters. The optimizer state includes the float32 master weights of a
bfloat16/float16 run (``train/optim.py``).

``trainer.pt`` is read with ``torch.load(weights_only=True)``: it holds tensors and plain
Python values only (random and NumPy RNG states and plug-in state are encoded into those), so
a checkpoint from someone else cannot run code when loaded.
"""
from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from explorl.atomic import fsync_path, write_text_atomic
from explorl.errors import RunStopped
from explorl.train.faults import crash_point

MANIFEST = "manifest.json"


class CheckpointError(RunStopped):
    """A checkpoint could not be written; the previous complete one is left as it was."""


# ---- plug-in state in types weights_only loading allows --------------------------------------
def encode_state(value, where: str = "state"):
    """Turn plug-in state into tensors, numbers, strings, lists, tuples and str/int-keyed dicts."""
    from explorl.tasks.problem import Problem
    if value is None or isinstance(value, (bool, int, float, str, torch.Tensor)):
        return value
    if isinstance(value, random.Random):
        return {"__state__": "random", "value": encode_state(value.getstate(), where)}
    if isinstance(value, np.ndarray):
        return {"__state__": "ndarray", "dtype": str(value.dtype), "value": torch.from_numpy(value.copy())}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Problem):
        return {"__state__": "problem", "value": {f.name: encode_state(getattr(value, f.name), where)
                                                  for f in dataclasses.fields(value)}}
    if isinstance(value, (set, frozenset)):
        return {"__state__": "set", "value": [encode_state(v, where) for v in sorted(value, key=repr)]}
    if isinstance(value, tuple):
        return tuple(encode_state(v, where) for v in value)
    if isinstance(value, list):
        return [encode_state(v, where) for v in value]
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value):
            return {k: encode_state(v, f"{where}.{k}") for k, v in value.items()}
        return {"__state__": "items", "value": [(encode_state(k, where), encode_state(v, where))
                                                for k, v in value.items()]}
    raise TypeError(f"{where}: a {type(value).__name__} cannot be saved in a checkpoint; keep plug-in state "
                    f"in tensors, numbers, strings, lists, dicts, random.Random, NumPy arrays or Problems")


def decode_state(value):
    from explorl.tasks.problem import Problem
    if isinstance(value, list):
        return [decode_state(v) for v in value]
    if isinstance(value, tuple):
        return tuple(decode_state(v) for v in value)
    if not isinstance(value, dict):
        return value
    kind = value.get("__state__")
    if kind is None:
        return {k: decode_state(v) for k, v in value.items()}
    inner = value["value"]
    if kind == "random":
        rng = random.Random()
        rng.setstate(decode_state(inner))
        return rng
    if kind == "ndarray":
        return inner.numpy().astype(value["dtype"], copy=True)
    if kind == "problem":
        return Problem(**{k: decode_state(v) for k, v in inner.items()})
    if kind == "set":
        return {decode_state(v) for v in inner}
    if kind == "items":
        return {_hashable(decode_state(k)): decode_state(v) for k, v in inner}
    raise ValueError(f"unknown encoded state kind {kind!r}")


def _hashable(key):
    return tuple(_hashable(k) for k in key) if isinstance(key, (list, tuple)) else key


def rng_state() -> dict:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"python": random.getstate(), "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos,
                                                   has_gauss, gauss),
            "torch": torch.get_rng_state()}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])


# ---- manifest ---------------------------------------------------------------------------------
def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_manifest(folder: Path, step: int) -> None:
    files = {str(p.relative_to(folder)): {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in _files(folder)}
    for p in _files(folder):
        fsync_path(p)
    (folder / MANIFEST).write_text(json.dumps({"step": step, "files": files}, indent=1))
    fsync_path(folder / MANIFEST)


def verify(folder: Path) -> str | None:
    """``None`` if every file of the checkpoint matches its manifest, else what is wrong."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        files = manifest["files"]
    except FileNotFoundError:
        return "no manifest.json (an unfinished or foreign checkpoint)"
    except (ValueError, KeyError, TypeError) as err:
        return f"unreadable manifest.json ({err})"
    for name, want in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != want["bytes"]:
            return f"{name} has {path.stat().st_size} bytes, the manifest says {want['bytes']}"
        if _sha256(path) != want["sha256"]:
            return f"{name} does not match its checksum"
    extra = {str(p.relative_to(folder)) for p in _files(folder)} - set(files)
    if extra:
        return f"files not in the manifest: {sorted(extra)}"
    return None


# ---- save / find / load -----------------------------------------------------------------------
def save(root: Path, step: int, model, tokenizer, trainer_state: dict, keep: int = 2, weights=None) -> Path:
    """Write ``ckpt/step_<step>`` completely or not at all; raise ``CheckpointError`` (leaving the
    previous checkpoints intact) when the disk refuses. ``weights`` (a state dict) are saved in
    place of ``model``'s own (the full weights gathered from a sharded model)."""
    ckpt_dir = Path(root) / "ckpt"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    final = ckpt_dir / f"step_{step:06d}"
    tmp = ckpt_dir / f".step_{step:06d}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp / "model", **({} if weights is None else {"state_dict": weights}))
        tokenizer.save_pretrained(tmp / "model")
        crash_point("checkpoint.model_written")
        state = encode_state(dict(trainer_state, rng=rng_state()), "trainer state")
        torch.save(state, tmp / "trainer.pt")
        crash_point("checkpoint.state_written")
        write_manifest(tmp, step)
        fsync_path(tmp)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        reason = "the disk is full" if err.errno == errno.ENOSPC else str(err)
        previous = latest(root, warn=None)
        raise CheckpointError(f"could not write checkpoint {final}: {reason}; "
                              f"{'the previous checkpoint ' + previous.name + ' is intact' if previous else 'no earlier checkpoint exists'}"
                              ) from err
    if final.exists():  # a corrupt or stale folder of the same step (we fell back past it)
        _set_aside(final, "replaced by a new save of the same step")
    os.replace(tmp, final)
    fsync_path(ckpt_dir)
    crash_point("checkpoint.renamed")
    write_text_atomic(ckpt_dir / "latest", final.name)
    _prune(ckpt_dir, final, keep)
    return final


def _prune(ckpt_dir: Path, newest: Path, keep: int) -> None:
    """Remove complete checkpoints older than the ``keep`` newest, and stale temporary folders."""
    for tmp in ckpt_dir.glob(".step_*.tmp"):
        pid = tmp.name.rsplit(".", 2)[-2]
        if pid == str(os.getpid()) or not _alive(pid):
            shutil.rmtree(tmp, ignore_errors=True)
    older = [p for p in _step_dirs(ckpt_dir) if p.name < newest.name]
    for old in older[: max(0, len(older) - (keep - 1))]:
        shutil.rmtree(old, ignore_errors=True)


def _alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def _step_dirs(ckpt_dir: Path) -> list[Path]:
    return sorted(p for p in ckpt_dir.glob("step_*") if p.is_dir() and p.name[5:].isdigit())


def _set_aside(path: Path, why: str) -> Path:
    aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
    os.replace(path, aside)
    return aside


def latest(root: Path, warn=print) -> Path | None:
    """The newest complete, intact checkpoint of a run, found by scanning ``ckpt/step_*`` (the
    ``latest`` pointer is not trusted alone). A newer checkpoint that fails its manifest is set
    aside as ``step_N.corrupt-…`` with a warning, never deleted. ``warn=None`` only looks."""
    ckpt_dir = Path(root) / "ckpt"
    if not ckpt_dir.is_dir():
        return None
    for path in reversed(_step_dirs(ckpt_dir)):
        problem = verify(path)
        if problem is None:
            return path
        if warn is not None:
            aside = _set_aside(path, problem)
            warn(f"warning: checkpoint {path} is damaged ({problem}); set aside as {aside.name}, "
                 f"falling back to the previous complete checkpoint")
    return None


def has_checkpoint(root: Path) -> bool:
    """Whether any checkpoint folder exists (complete or not): such a run folder is never reused."""
    ckpt_dir = Path(root) / "ckpt"
    return ckpt_dir.is_dir() and bool(_step_dirs(ckpt_dir))


def read_state(path: Path) -> dict:
    """The trainer state of a checkpoint, loaded safely, without touching the global RNGs."""
    import pickle
    try:
        state = torch.load(Path(path) / "trainer.pt", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(f"{Path(path) / 'trainer.pt'}: holds objects that a safe load refuses; explorl never "
                         f"runs code from a checkpoint ({str(err).splitlines()[0]})") from None
    return decode_state(state)


def check_base(path: Path, fingerprint: str) -> None:
    """Raise ``ValueError`` unless the LoRA checkpoint ``path`` was trained on the base model
    whose weights hash to ``fingerprint`` (``policy.lora.base_fingerprint``)."""
    saved = read_state(path).get("base_model_sha256")
    if saved != fingerprint:
        raise ValueError(f"{path} holds LoRA adapters trained on a base model whose weights hash to "
                         f"{str(saved)[:12]}…, but the base built from this run's model.path or warm start "
                         f"hashes to {fingerprint[:12]}…: the adapters would be applied to other weights. "
                         f"Restore the base model the run was trained on, or start a new run.")


def load_state(path: Path) -> dict:
    """The trainer state of a checkpoint; restores the global Python, NumPy and torch RNGs."""
    state = read_state(path)
    set_rng_state(state["rng"])
    return state
