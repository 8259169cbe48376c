"""One writer per folder: an exclusive ``flock`` on ``<folder>/.lock``, held for the writer's life.

The kernel drops the lock when the holder exits, however it exits (SIGKILL included), so a
lock file left behind by a dead process never blocks anyone; only a live writer does.
"""
from __future__ import annotations

import fcntl
import os
from pathlib import Path


class FolderLocked(FileExistsError):
    """Another live process holds the folder."""


class FolderLock:
    def __init__(self, folder: str | Path, what: str = "run", name: str = ".lock"):
        self.path = Path(folder) / name
        self.what = what
        self.on_wait = None  # called once before blocking in acquire(wait=True)
        self._fh = None

    def acquire(self, wait: bool = False) -> "FolderLock":
        if self._fh is not None:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                fh.seek(0)
                holder = fh.read().strip() or "unknown"
                fh.close()
                raise FolderLocked(f"{self.path.parent}: another process (pid {holder}) is writing to this "
                                   f"{self.what}; wait for it to finish or stop it first") from None
            if self.on_wait is not None:
                self.on_wait()
            fcntl.flock(fh, fcntl.LOCK_EX)
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        self._fh = fh
        return self

    @property
    def held(self) -> bool:
        return self._fh is not None

    def release(self) -> None:
        if self._fh is not None:
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
