"""Per-step metrics to ``metrics.jsonl``, TensorBoard and the experiment trackers, a progress bar, the
stage clock, and the peak memory a step reports (``perf/``)."""
from __future__ import annotations

import json
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from tqdm import tqdm

STAGES = ("curriculum", "allocate", "gen", "verify", "guide", "advantage", "augment", "update", "observe")


class StageClock:
    """Exclusive wall time per stage into ``metrics["time/<stage>"]``: a stage nested in another
    (generation inside a budget's ``collect`` or a guidance ``augment``) counts only for itself,
    so the stages of a step add up to its wall clock."""

    def __init__(self, metrics: dict):
        self.metrics = metrics
        self._nested: list[float] = []

    @contextmanager
    def __call__(self, stage: str):
        start = time.perf_counter()
        self._nested.append(0.0)
        try:
            yield
        finally:
            elapsed = time.perf_counter() - start
            inner = self._nested.pop()
            key = f"time/{stage}"
            self.metrics[key] = self.metrics.get(key, 0.0) + elapsed - inner
            if self._nested:
                self._nested[-1] += elapsed


@contextmanager
def timer(metrics: dict, key: str):
    start = time.perf_counter()
    yield
    metrics[key] = metrics.get(key, 0.0) + time.perf_counter() - start


def read_metrics_lines(path: Path, warn=print) -> list[str]:
    """The lines of a metrics file; a last line cut short by a crash is dropped with a warning,
    an unreadable line anywhere else is an error that names it."""
    if not path.exists():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    for number, line in enumerate(lines, 1):
        try:
            json.loads(line)
        except json.JSONDecodeError as err:
            if number == len(lines):
                warn(f"warning: {path}: dropping its last line, cut short by an interrupted write ({err.msg})")
                return lines[:-1]
            raise ValueError(f"{path}: line {number} is not valid JSON ({err.msg}); the file is damaged") from None
    return lines


class RunLogger:
    """Each step's metrics to ``metrics.jsonl`` (all of them), and the numeric ones under the same
    keys to TensorBoard and to the experiment trackers ``config.logging`` names
    (``explorl.train.trackers``)."""

    def __init__(self, out: Path, start_step: int, total_steps: int, progress: bool = True, warn=print,
                 config=None):
        self.path = out / "metrics.jsonl"
        # steps up to here already reached the trackers: a resume recomputes them, the trackers keep theirs
        self.sent_until = self._truncate_after(start_step, warn)
        self.trackers = []
        if config is not None:
            from explorl.train.trackers import build
            self.trackers = build(config, out, warn)
        from torch.utils.tensorboard import SummaryWriter
        self.tb = SummaryWriter(str(out / "tb"), purge_step=start_step + 1 if start_step else None)
        self.bar = tqdm(total=total_steps, initial=start_step, desc="train", disable=not progress,
                        file=sys.stderr, dynamic_ncols=True, mininterval=0.5)

    def _truncate_after(self, step: int, warn) -> int:
        """On resume, drop lines logged after the checkpoint so the file matches an unbroken run;
        the last step the file held (0 if none)."""
        if not self.path.exists():
            return 0
        from explorl.atomic import write_text_atomic
        rows = [(json.loads(line)["step"], line) for line in read_metrics_lines(self.path, warn)]
        write_text_atomic(self.path, "".join(line + "\n" for n, line in rows if n <= step))
        return max((n for n, _ in rows), default=0)

    def log(self, step: int, metrics: dict) -> None:
        scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
        if self.trackers:  # before the metrics line: a kill in between repeats a step, never loses one
            fresh = step > self.sent_until
            missed = {f"logging/tracker_errors/{t.name}": t.log(step, dict(scalars)) if fresh else 0
                      for t in self.trackers}
            metrics, scalars = {**metrics, **missed}, {**scalars, **missed}
        record = {"step": step, **{k: round(v, 6) if isinstance(v, float) else v for k, v in metrics.items()}}
        with self.path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
        for key, value in scalars.items():
            self.tb.add_scalar(key, value, step)
        self.bar.update(1)
        self.bar.set_postfix(reward=f"{metrics.get('reward/mean', 0):.3f}",
                             tok_s=f"{metrics.get('perf/tokens_per_s', 0):.0f}")

    def sync(self) -> None:
        """Flush the metrics to disk (before a checkpoint, so the two agree after a power cut)."""
        if self.path.exists():
            fd = os.open(self.path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        self.tb.flush()

    def close(self) -> None:
        failed = sys.exc_info()[0] is not None  # closed while an exception ends the run
        for tracker in self.trackers:
            tracker.close(failed)
        self.tb.close()
        self.bar.close()


def peak_rss_mb() -> float:
    """This process's peak resident set size in MiB (``ru_maxrss`` is KiB on Linux, bytes on macOS)."""
    import resource
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024


def reset_peak_memory(device) -> None:
    if device.type == "cuda":
        import torch
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device) -> dict:
    """``perf/peak_rss_mb``: the process's peak resident memory so far (it never decreases over a
    process); ``perf/peak_cuda_mb``: the step's peak CUDA allocation, when the policy is on a GPU."""
    out = {"perf/peak_rss_mb": peak_rss_mb()}
    if device.type == "cuda":
        import torch
        out["perf/peak_cuda_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out
