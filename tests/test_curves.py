"""`explorl curves`: a run's training reward (mean over the steps since the previous point) beside
its held-out pass@k and entropy, read from a hand-made run folder."""
from __future__ import annotations

import json

import pytest

from explorl.compare.curves import format_curves, run_curves


def evaluation(p1, p16, entropy):
    return {"pass@1": {"all": p1}, "pass@16": {"all": p16}, "entropy": {"all": entropy}}


@pytest.fixture
def run(tmp_path):
    steps = [{"step": 1, "reward/mean": 0.2, "tokens/total": 100},
             {"step": 2, "reward/mean": 0.4, "tokens/total": 200,
              "heldout/pass@1": 0.31, "heldout/pass@16": 0.70, "heldout/entropy": 0.50},
             {"step": 3, "reward/mean": 0.5, "tokens/total": 300},
             {"step": 4, "reward/mean": 0.7, "tokens/total": 400}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(s) + "\n" for s in steps))
    (tmp_path / "eval.json").write_text(json.dumps({"start": evaluation(0.3, 0.8, 0.6),
                                                    "end": evaluation(0.35, 0.6, 0.3)}))
    return tmp_path


def test_curves_of_a_hand_made_run(run):
    points = run_curves(run)
    assert [p["tokens"] for p in points] == [0, 200, 400]
    assert [p["reward"] for p in points] == pytest.approx([0.2, 0.3, 0.6])  # first step; mean of 1-2; of 3-4
    assert [p["pass@16"] for p in points] == [0.8, 0.70, 0.6]
    assert [p["entropy"] for p in points] == [0.6, 0.50, 0.3]
    assert format_curves(points).splitlines()[2].split() == ["200", "2", "0.300", "0.500", "0.310", "0.700"]


def test_curves_command_prints_and_draws(run, capsys):
    from explorl.cli import main
    assert main(["curves", "--run", str(run), "--figure", str(run / "c.png")]) == 0
    assert "train reward" in capsys.readouterr().out and (run / "c.png").stat().st_size > 1000
    assert main(["curves", "--run", str(run), "--ks", "1,64"]) == 2  # pass@64 was not evaluated
    assert main(["curves", "--run", str(run / "missing")]) == 2
