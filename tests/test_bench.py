"""Smoke tests of ``explorl bench``: both benchmarks run end to end on a tiny model and end
with their one-number line."""
import re

import pytest

from explorl.cli import main

TINY = ["model.tiny.hidden_size=32", "model.tiny.layers=1", "model.tiny.heads=2", "model.tiny.kv_heads=1",
        "model.tiny.intermediate_size=64", "model.warmup.steps=20", "model.warmup.batch_size=16",
        "train.problems_per_step=4", "train.rollouts_per_problem=4", "train.max_new_tokens=6"]


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """One EXPLORL_HOME for the module, so the tiny model is warm-started once."""
    return tmp_path_factory.mktemp("explorl_home")


@pytest.fixture
def bench(home, monkeypatch, capsys):
    monkeypatch.setenv("EXPLORL_HOME", str(home))

    def run(which, *extra):
        argv = ["bench", which]
        for item in TINY:
            argv += ["--set", item]
        code = main(argv + list(extra))
        out = capsys.readouterr().out
        assert code == 0, out
        return out.strip().splitlines()

    return run


def last_number(lines, key):
    match = re.fullmatch(rf"{key}: (\d+\.\d\d)", lines[-1])
    assert match, f"last line {lines[-1]!r} is not '{key}: X'"
    value = float(match.group(1))
    assert value > 0
    return value


def test_bench_throughput_smoke(bench):
    lines = bench("throughput")
    last_number(lines, "speedup_vs_generate")
    text = "\n".join(lines)
    assert "model.generate" in text and "RolloutEngine" in text
    for stage in ("time/gen", "time/verify", "time/update"):
        assert stage in text


def test_bench_trl_smoke(bench):
    pytest.importorskip("trl")
    pytest.importorskip("datasets")
    lines = bench("trl", "--steps", "2")
    last_number(lines, "speedup_vs_trl")
    text = "\n".join(lines)
    assert "TRL GRPOTrainer" in text and "differs:" in text


def test_bench_trl_without_trl_names_the_extra(bench, monkeypatch, capsys):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "trl" else real(name, *a))
    code = main(["bench", "trl", "--steps", "1"])
    assert code == 1
    assert "pip install -e .[bench]" in capsys.readouterr().err


def test_bench_overhead_smoke(bench):
    lines = bench("overhead", "--steps", "1")
    match = re.fullmatch(r"max_overhead_vs_grpo: (-?\d+\.\d)%", lines[-1])
    assert match, lines[-1]
    text = "\n".join(lines)
    for recipe in ("grpo", "repr_bonus", "effective_rank"):
        assert recipe in text


def test_bench_scale_smoke(bench):
    lines = bench("scale", "--steps", "2")
    last_number(lines, "speedup_2_vs_1_processes")
    text = "\n".join(lines)
    assert "processes" in text and "ms/step" in text
    import torch
    if not torch.cuda.is_available():
        assert "GPU: skipped (no CUDA device visible)" in text


def test_the_gpu_rollout_comparison_runs_on_any_device():
    """The GPU half of ``bench scale``, on the CPU with a small shape: same code, other device."""
    import torch

    from explorl.bench.scale import QWEN_05B, rollout_comparison
    from explorl.config import Config
    cfg = Config()
    cfg.train.problems_per_step, cfg.train.rollouts_per_problem, cfg.train.max_new_tokens = 2, 2, 4
    shape = dict(QWEN_05B, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                 intermediate_size=64, vocab_size=1024)
    lines = rollout_comparison(cfg, torch.device("cpu"), shape, torch.float32)
    assert "RolloutEngine" in lines[1] and "model.generate" in lines[1]
