"""The CLI end to end on a tiny config: warmup, train (+ resume), eval, list."""
import json
import os
import subprocess
import sys

from explorl.cli import main


def test_train_resume_eval_and_warmup(tmp_path, tiny_overrides, capsys):
    out = tmp_path / "run"
    base = ["--set", *[x for o in tiny_overrides for x in ("--set", o)][1:]]
    assert main(["train", "--out", str(out), "--steps", "2", "--quiet", *base]) == 0
    printed = capsys.readouterr().out
    assert "before training" in printed and "pass@1" in printed and "after 2 steps" in printed
    assert "interval, paired over problems" in printed and "response tokens" in printed  # start against end
    assert "pass@4" in printed  # the widest k evaluated (eval.ks [1, 4]), not only pass@1 and pass@16
    assert main(["train", "--out", str(out), "--steps", "3", "--resume", "--quiet", *base]) == 0
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2, 3]
    assert main(["eval", "--run", str(out)]) == 0
    assert "pass@1" in capsys.readouterr().out and (out / "eval_step_000003.json").exists()
    assert main(["warmup", *base]) == 0
    warm = capsys.readouterr().out
    assert "addition" in warm
    # eval without --run: the config's starting model (here the warm start), untrained
    assert main(["eval", *base]) == 0
    printed = capsys.readouterr().out
    table = warm[warm.index("source"):]
    assert f"the testbed model, before training:\n{table}" in printed


def test_errors_are_reported_not_raised(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "x"), "--set", "train.lrr=1"]) == 2
    assert "unknown config key 'train.lrr'" in capsys.readouterr().err
    assert main(["eval", "--run", str(tmp_path / "missing")]) == 2
    assert "not a run folder" in capsys.readouterr().err
    assert main(["eval", "--run", str(tmp_path), "--set", "train.lr=1"]) == 2
    assert "--set and --seed are for evaluating a config's starting model (without --run)" in capsys.readouterr().err


def test_list_through_the_installed_entry_point():
    exe = os.path.join(os.path.dirname(sys.executable), "explorl")
    cmd = [exe, "list"] if os.path.exists(exe) else [sys.executable, "-m", "explorl.cli", "list"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    for name in ("uniform", "fixed", "constant", "grpo", "ppo_clip", "kl", "entropy"):
        assert name in out
    assert "params: clip_ratio_low=0.2" in out and "arXiv" in out
