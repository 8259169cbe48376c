"""Per-step metrics to ``metrics.jsonl`` and TensorBoard, and a progress bar."""
from __future__ import annotations

import json
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from tqdm import tqdm


@contextmanager
def timer(metrics: dict, key: str):
    start = time.perf_counter()
    yield
    metrics[key] = metrics.get(key, 0.0) + time.perf_counter() - start


class RunLogger:
    def __init__(self, out: Path, start_step: int, total_steps: int, progress: bool = True):
        self.path = out / "metrics.jsonl"
        self._truncate_after(start_step)
        from torch.utils.tensorboard import SummaryWriter
        self.tb = SummaryWriter(str(out / "tb"), purge_step=start_step + 1 if start_step else None)
        self.bar = tqdm(total=total_steps, initial=start_step, desc="train", disable=not progress,
                        file=sys.stderr, dynamic_ncols=True, mininterval=0.5)

    def _truncate_after(self, step: int) -> None:
        """On resume, drop lines logged after the checkpoint so the file matches an unbroken run."""
        if not self.path.exists():
            return
        from explorl.train.checkpoint import write_text_atomic
        keep = [line for line in self.path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        write_text_atomic(self.path, "".join(line + "\n" for line in keep))

    def log(self, step: int, metrics: dict) -> None:
        record = {"step": step, **{k: round(v, 6) if isinstance(v, float) else v for k, v in metrics.items()}}
        with self.path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
        for key, value in metrics.items():
            if isinstance(value, (int, float)):
                self.tb.add_scalar(key, value, step)
        self.bar.update(1)
        self.bar.set_postfix(reward=f"{metrics.get('reward/mean', 0):.3f}",
                             tok_s=f"{metrics.get('perf/tokens_per_s', 0):.0f}")

    def close(self) -> None:
        self.tb.close()
        self.bar.close()
