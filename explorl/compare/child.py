"""One run of a comparison, in its own process: trains or resumes to the token budget and keeps
a heartbeat of its wall time and memory (see ``explorl.compare.study`` on wall time)."""
from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

from explorl.atomic import write_text_atomic
from explorl.compare.files import CorruptFile, _read_json, _warn
from explorl.train.logging import peak_rss_mb

HEARTBEAT_S = 1.0  # a segment's heartbeat (and parent watch) interval in the child
PARENT_ENV = "EXPLORL_COMPARE_PARENT"  # the compare process's pid, for the child's parent watch


# ---- the child process ---------------------------------------------------------------------
def _child(argv=None, started: tuple[float, float] | None = None) -> None:
    """One run, in its own process: train (or resume) to the token budget, evaluate, then write
    ``run_info.json`` with the run's wall time and peak resident memory summed / maxed over all its
    segments. ``started`` is (epoch, perf_counter) at the process's first line of Python."""
    import argparse
    started = started or (time.time(), time.perf_counter())
    # compare stops a child with SIGINT: it must raise here even if this process was started with
    # SIGINT ignored (a background job's children inherit that)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    parent = int(os.environ.get(PARENT_ENV) or 0) or None
    if parent is not None:
        _die_with_parent(parent)
    from explorl.config import add_config_args, config_from_args
    p = argparse.ArgumentParser(prog="explorl compare (run)")
    add_config_args(p)
    p.add_argument("--out", required=True)
    p.add_argument("--resume", action="store_true")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    out = Path(args.out)
    segment = Segment(out, started, resumed=args.resume, parent=parent).start()
    status = "failed"
    try:
        from explorl.train.loop import Trainer
        trainer = Trainer(config_from_args(args), out, resume=args.resume, progress=False)
        trainer.run()
        status = "done"
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the record short
        status = "interrupted"
        print("interrupted; the run continues from its last checkpoint when compare is rerun", flush=True)
        raise SystemExit(130) from None
    finally:
        segment.finish(status)
    segments = read_segments(out, log=lambda msg: print(f"warning: {msg}", flush=True))
    info = {"wall_s": round(sum(s.get("wall_s", 0.0) for s in segments), 3),
            "peak_rss_mb": max(s.get("peak_rss_mb", 0.0) for s in segments),
            "segments": len(segments), "killed_segments": sum(s.get("status") == "killed" for s in segments),
            "steps": trainer.step, "tokens": trainer.tokens}
    write_text_atomic(out / "run_info.json", json.dumps(info, indent=2))
    print(f"run_info: {info}")


def _die_with_parent(parent: int) -> None:
    """Have the kernel SIGKILL this process when its parent dies (Linux), then make sure the parent
    is still the one that started it: one that died before the signal was armed is caught here.
    Elsewhere the ``Segment`` thread's parent watch does the job within ``HEARTBEAT_S``."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes
            PR_SET_PDEATHSIG = 1
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):
            pass  # the parent watch remains
    if os.getppid() != parent:
        print(f"the compare process (pid {parent}) is gone; not starting", flush=True)
        os._exit(1)


class Segment:
    """This process's attempt at the run: ``segments/<start-epoch>-<pid>.json`` holding its status,
    wall time so far and peak memory, rewritten atomically every ``HEARTBEAT_S`` seconds by a daemon
    thread (which also exits the process if its parent changes) and once more at the end."""

    def __init__(self, out: Path, started: tuple[float, float], resumed: bool, parent: int | None):
        self.epoch, self.t0 = started
        self.resumed, self.parent = resumed, parent
        self.path = out / "segments" / f"{int(self.epoch)}-{os.getpid()}.json"
        self._lock, self._stop, self._final = threading.Lock(), threading.Event(), False

    def start(self) -> "Segment":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.write("running")
        threading.Thread(target=self._beat, name="explorl-segment", daemon=True).start()
        return self

    def write(self, status: str, final: bool = False) -> None:
        with self._lock:
            if self._final:
                return
            self._final = final
            record = {"status": status, "pid": os.getpid(), "resumed": self.resumed,
                      "started": round(self.epoch, 3), "heartbeat": round(time.time(), 3),
                      "wall_s": round(time.perf_counter() - self.t0, 3), "peak_rss_mb": round(peak_rss_mb(), 1)}
            # replaced whole (a reader never sees a part), without the disk flushes of
            # explorl.atomic.write_text_atomic: a heartbeat is rewritten every HEARTBEAT_S
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text(json.dumps(record))
            os.replace(tmp, self.path)

    def finish(self, status: str) -> None:
        self._stop.set()
        self.write(status, final=True)

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            if self.parent is not None and os.getppid() != self.parent:
                try:
                    self.write("orphaned", final=True)
                finally:
                    os._exit(1)
            try:
                self.write("running")
            except OSError as err:  # a full disk, say: keep watching the parent, try again next beat
                print(f"warning: could not write {self.path} ({err})", flush=True)


def read_segments(run_dir: Path, log=None) -> list[dict]:
    """Every segment of a run, read once none is running (the child calls it after finishing its
    own): the older ``segments.jsonl`` lines, then the heartbeat files, oldest first; one still
    ``running`` was killed, counts up to its last heartbeat and reads as ``killed``. Files or lines
    that do not parse are skipped and reported."""
    log = log or _warn
    segments = []
    legacy = run_dir / "segments.jsonl"
    if legacy.exists():
        for n, line in enumerate(legacy.read_text(errors="replace").splitlines(), 1):
            try:
                if line.strip():
                    segments.append(json.loads(line))
            except json.JSONDecodeError as err:
                log(f"{legacy}:{n}: skipped a line that does not parse ({err})")
    for path in sorted((run_dir / "segments").glob("*.json")):
        try:
            record = _read_json(path)
        except CorruptFile as err:
            log(f"{err}; that attempt's time is left out of the run's wall time")
            continue
        if record.get("status") == "running":
            record["status"] = "killed"
        segments.append(record)
    return segments

