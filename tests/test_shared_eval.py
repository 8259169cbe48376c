"""The start-of-run evaluation is computed once per starting point and shared (explorl.eval.shared)."""
from __future__ import annotations

import json

import pytest

import explorl.eval.shared as shared
from explorl.train.loop import Trainer


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("EXPLORL_HOME", str(tmp_path / "home"))
    return tmp_path


def _run(cfg, out, calls):
    trainer = Trainer(cfg, out, progress=False, log=lambda *_: None)
    real = trainer.evaluate

    def counted():
        calls.append(out.name)
        return real()

    trainer.evaluate = counted
    return trainer.run(1)


def test_runs_from_the_same_start_share_its_evaluation(home, tiny_config):
    calls = []
    first = _run(tiny_config(train={"steps": 1}), home / "grpo", calls)
    second = _run(tiny_config(recipe="clip_higher", seed=3, train={"steps": 1, "lr": 1e-3}), home / "ch", calls)
    assert calls == ["grpo", "grpo", "ch"]  # start + end, then only the end
    assert second["start"] == first["start"]
    assert json.loads((home / "ch" / "eval.json").read_text())["start"] == first["start"]


@pytest.mark.parametrize("change", [{"eval": {"samples": 4, "ks": [1, 2]}}, {"tasks": {"addition": {"digits": [1, 2]}}},
                                    {"train": {"max_new_tokens": 5}}])
def test_another_starting_point_is_evaluated_again(home, tiny_config, change):
    calls = []
    _run(tiny_config(train={"steps": 1}), home / "a", calls)
    cfg = tiny_config(**{k: v for k, v in change.items() if k != "train"},
                      train={"steps": 1, **change.get("train", {})})
    _run(cfg, home / "b", calls)
    assert calls == ["a", "a", "b", "b"]


def test_changed_code_or_sharing_off_evaluates_again(home, tiny_config, monkeypatch):
    calls = []
    _run(tiny_config(train={"steps": 1}), home / "a", calls)
    _run(tiny_config(train={"steps": 1}, eval={"share_start": False}), home / "b", calls)
    monkeypatch.setattr(shared, "source_fingerprint", lambda: "other code")
    _run(tiny_config(train={"steps": 1}), home / "c", calls)
    assert calls == ["a", "a", "b", "b", "c", "c"]


def test_a_damaged_shared_entry_is_reported_and_redone(home, tiny_config):
    calls, logged = [], []
    cfg = tiny_config(train={"steps": 1})
    _run(cfg, home / "a", calls)
    shared.start_eval_path(cfg).write_text("{not json")
    trainer = Trainer(cfg, home / "b", progress=False, log=logged.append)
    trainer.run(1)
    assert any("cannot be read" in line for line in logged)
    assert "pass@1" in json.loads(shared.start_eval_path(cfg).read_text())
