"""A run folder (``--out``): who writes it, whether a run may start or go on in it, and the
files a run keeps there besides its checkpoints (``config.yaml``, ``eval.json``).

A fresh run never reuses a folder holding a run; a resumed one keeps its configuration (only
the keys ``explorl.train.resume.RESUMABLE`` names may change). The folder is checked before
any work, and again once its lock (``FolderLock``) is held: the lock is taken only after every
input is checked, so a run refused at its start leaves nothing behind. Under torchrun, rank 0
alone checks, locks and writes (``writer``); the other ranks' folder does nothing.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import yaml

from explorl.atomic import write_text_atomic
from explorl.folder_lock import FolderLock
from explorl.train.faults import crash_point
from explorl.train.resume import refuse_changes, stored_config

RUN_FILES = ("config.yaml", "metrics.jsonl", "eval.json", "ckpt", "tb")


class RunFolder:
    def __init__(self, path, cfg, resume: bool, writer: bool = True, log=print):
        self.path, self.cfg, self.resume, self.writer, self.log = Path(path), cfg, resume, writer, log
        self.lock = FolderLock(self.path, "run") if writer else None

    def check(self) -> None:
        """Refuse a fresh run in a folder holding a run, and a resume that changes the run's configuration."""
        if not self.writer:
            return
        present = [name for name in RUN_FILES if (self.path / name).exists()]
        if not present:
            return
        if not self.resume:
            raise FileExistsError(f"{self.path} already holds a run ({', '.join(present)}): pass --resume to "
                                  f"continue it, or choose another --out")
        stored = stored_config(self.path)
        if stored is None:
            raise FileExistsError(f"{self.path} holds run files ({', '.join(present)}) but no config.yaml: it is "
                                  f"not a run explorl can resume; choose another --out")
        refuse_changes(stored, self.cfg.to_dict(), self.path)

    def claim(self) -> None:
        """Take the folder's lock (another live writer is an error) and check it again under it."""
        self.acquire()
        self.check()

    def acquire(self) -> None:
        if self.lock is not None:
            self.lock.acquire()

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()

    def store_config(self) -> None:
        """``config.yaml``: the resolved configuration, written when it differs from the stored one
        (a new run, or a resume that changed a resumable key)."""
        wanted = self.cfg.to_dict()
        if self.writer and stored_config(self.path) != yaml.safe_load(yaml.safe_dump(wanted, sort_keys=False)):
            write_text_atomic(self.path / "config.yaml", yaml.safe_dump(wanted, sort_keys=False))
            crash_point("config.written")

    def read_eval(self) -> dict:
        """``eval.json``; a damaged one is set aside (named with the time) and the run evaluates again."""
        path = self.path / "eval.json"
        if not path.exists():
            return {}
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as err:
            aside = path.with_name(f"eval.json.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
            path.rename(aside)
            self.log(f"warning: {path} is damaged ({err.msg}); kept as {aside.name}, evaluating again")
            return {}

    def write_eval(self, results: dict) -> None:
        if self.writer:
            write_text_atomic(self.path / "eval.json", json.dumps(results, indent=2))
