"""What a run folder holds, read for tests that inspect or compare runs."""
from __future__ import annotations

import json
from pathlib import Path


def run_metrics(run_dir: Path) -> list[dict]:
    """Every line of the run's metrics.jsonl."""
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def metrics_without_time(run_dir: Path) -> list[dict]:
    """The run's metrics without the ``time/`` and ``perf/`` keys, which differ between two
    executions of the same run."""
    return [{k: v for k, v in row.items() if not k.startswith(("time/", "perf/"))} for row in run_metrics(run_dir)]


def unbroken_and_resumed(cfg, tmp_path: Path, stop_after: int = 1) -> tuple[list[dict], list[dict]]:
    """``cfg`` trained unbroken in ``tmp_path/full``, and in ``tmp_path/part`` stopped after
    ``stop_after`` steps and resumed; both runs' metrics without time."""
    from explorl.train.loop import Trainer
    quiet = {"progress": False, "log": lambda *_: None}
    Trainer(cfg, tmp_path / "full", **quiet).run()
    Trainer(cfg, tmp_path / "part", **quiet).run(stop_after)
    Trainer(cfg, tmp_path / "part", resume=True, **quiet).run()
    return metrics_without_time(tmp_path / "full"), metrics_without_time(tmp_path / "part")
