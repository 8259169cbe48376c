"""A training run killed with SIGKILL 20 times, at random moments and inside its checkpoint,
evaluation and metrics writes, and resumed each time, ends identical to an uninterrupted run."""
import pytest

from explorl.train.crashtest import crashtest


@pytest.mark.slow
def test_twenty_kills_lose_nothing(tmp_path, tiny_overrides):
    sets = [o for o in tiny_overrides if not o.startswith(("train.steps=", "train.checkpoint_every="))]
    args = [x for o in sets + ["train.steps=40", "train.checkpoint_every=2"] for x in ("--set", o)]
    report = crashtest(tmp_path, args, total_steps=40, kills=20, seed=0, log=print)
    print(report)
    assert report["kills"] >= 20
    assert {"config.written", "eval.start_computed", "eval.end_computed"} <= set(report["by_point"])
    assert any(k.startswith("checkpoint.") for k in report["by_point"])
    assert report["by_point"].get("random step", 0) + report["by_point"].get("random time", 0) >= 5
    assert report["identical"], report["differences"]
