"""time/step is the wall clock of the whole step and the stage timers add up to it, hidden-state
work in the advantage stage included."""

from explorl.train.logging import STAGES
from explorl.train.loop import Trainer
from run_records import run_metrics


def test_stage_times_add_up_to_the_step_and_cover_the_advantage_stage(tmp_path, tiny_config):
    cfg = tiny_config(recipe="effective_rank", train={"steps": 3})
    Trainer(cfg, tmp_path / "run", progress=False, log=lambda *_: None).run()
    rows = run_metrics(tmp_path / "run")
    for row in rows:
        stages = sum(row[f"time/{s}"] for s in STAGES if f"time/{s}" in row)
        assert abs(stages - row["time/step"]) <= 0.03 * row["time/step"] + 2e-3, (stages, row["time/step"])
        for stage in ("curriculum", "allocate", "gen", "verify", "advantage", "update", "observe"):
            assert row[f"time/{stage}"] > 0, stage
    # the effective-rank shaper runs a hidden-state forward and SVDs: that is advantage time
    assert max(r["time/advantage"] for r in rows) > 10 * max(r["time/curriculum"] for r in rows)


def test_nested_stages_count_once():
    import time

    from explorl.train.logging import StageClock
    m = {}
    clock = StageClock(m)
    with clock("augment"):
        time.sleep(0.02)
        with clock("gen"):
            time.sleep(0.03)
    assert 0.015 < m["time/augment"] < 0.03 and m["time/gen"] >= 0.03
