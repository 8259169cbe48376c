"""Checkpoints: model, optimizer, every RNG and every plug-in's state, written atomically.

A checkpoint is a folder ``ckpt/step_NNNNNN`` written under a temporary name and renamed
into place; ``ckpt/latest`` (also replaced atomically) names the newest complete one.
"""
from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def save(root: Path, step: int, model, tokenizer, trainer_state: dict, keep: int = 2) -> Path:
    ckpt_dir = root / "ckpt"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    final = ckpt_dir / f"step_{step:06d}"
    tmp = ckpt_dir / f".step_{step:06d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp / "model")
    tokenizer.save_pretrained(tmp / "model")
    state = dict(trainer_state, rng={"python": random.getstate(), "numpy": np.random.get_state(),
                                     "torch": torch.get_rng_state()})
    torch.save(state, tmp / "trainer.pt")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    write_text_atomic(ckpt_dir / "latest", final.name)
    for old in sorted(ckpt_dir.glob("step_*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest(root: Path) -> Path | None:
    pointer = root / "ckpt" / "latest"
    if not pointer.exists():
        return None
    path = root / "ckpt" / pointer.read_text().strip()
    return path if path.exists() else None


def load_state(path: Path) -> dict:
    state = torch.load(path / "trainer.pt", weights_only=False)
    random.setstate(state["rng"]["python"])
    np.random.set_state(state["rng"]["numpy"])
    torch.set_rng_state(state["rng"]["torch"])
    return state
