"""Checkpoints survive damage: a damaged newest one is set aside and the run falls back to the
previous complete one (and still ends identical to an unbroken run); the ``latest`` pointer is
never the only record; a full disk leaves the previous checkpoint intact; trainer state loads
with ``weights_only=True`` and a checkpoint cannot run code."""
import errno
import json
import os
import pickle
import subprocess
import sys

import pytest
import torch

from explorl.train import checkpoint
from explorl.train.loop import Trainer
from run_records import metrics_without_time


def _quiet(*_):
    pass


def _final(run):
    latest = checkpoint.latest(run, warn=None)
    from safetensors.torch import load_file
    return latest.name, load_file(str(latest / "model" / "model.safetensors"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, request):
    """An unbroken 4-step run and the same run stopped after 4 steps' checkpoints for damage."""
    from conftest import make_tiny_config
    cfg = make_tiny_config(train={"steps": 4, "checkpoint_every": 1})
    root = tmp_path_factory.mktemp("ref")
    Trainer(cfg, root / "full", progress=False, log=_quiet).run()
    return cfg, root / "full"


def _damaged_run(tmp_path, cfg, damage):
    """Train to step 3, damage the newest checkpoint, resume to step 4."""
    warnings = []
    Trainer(cfg, tmp_path / "run", progress=False, log=_quiet).run(steps=3)
    newest = tmp_path / "run" / "ckpt" / "step_000003"
    damage(newest)
    Trainer(cfg, tmp_path / "run", resume=True, progress=False, log=warnings.append).run()
    return warnings


def _truncate(rel):
    def damage(folder):
        path = folder / rel
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return damage


def _flip(folder):
    path = folder / "model" / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [_truncate("model/model.safetensors"), _truncate("trainer.pt"),
                                    _truncate("model/config.json"), _flip], ids=["weights", "trainer.pt",
                                                                                 "config.json", "flipped-byte"])
def test_a_damaged_newest_checkpoint_falls_back_and_the_run_still_ends_identical(tmp_path, reference, damage):
    cfg, full = reference
    warnings = _damaged_run(tmp_path, cfg, damage)
    assert any("checkpoint" in w and "damaged" in w and "step_000003" in w for w in warnings), warnings
    assert any("resumed from" in w and "step_000002" in w for w in warnings)
    assert list((tmp_path / "run" / "ckpt").glob("step_000003.corrupt-*")), "the damaged checkpoint must be kept"
    name_a, weights_a = _final(full)
    name_b, weights_b = _final(tmp_path / "run")
    assert name_a == name_b and all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    assert metrics_without_time(full) == metrics_without_time(tmp_path / "run")
    assert json.loads((full / "eval.json").read_text()) == json.loads((tmp_path / "run" / "eval.json").read_text())


def test_without_the_latest_pointer_checkpoints_are_found_and_never_deleted(tmp_path, tiny_config):
    cfg = tiny_config(train={"steps": 3, "checkpoint_every": 1})
    Trainer(cfg, tmp_path / "run", progress=False, log=_quiet).run()
    (tmp_path / "run" / "ckpt" / "latest").unlink()
    kept = sorted(p.name for p in (tmp_path / "run" / "ckpt").glob("step_*"))
    with pytest.raises(FileExistsError, match="--resume"):
        Trainer(cfg, tmp_path / "run", progress=False, log=_quiet)
    assert sorted(p.name for p in (tmp_path / "run" / "ckpt").glob("step_*")) == kept
    assert checkpoint.latest(tmp_path / "run", warn=None).name == "step_000003"
    resumed = Trainer(cfg, tmp_path / "run", resume=True, progress=False, log=_quiet)
    assert resumed.step == 3
    resumed.close()


def test_a_full_disk_leaves_the_previous_checkpoint_intact(tmp_path, tiny_config, monkeypatch):
    cfg = tiny_config(train={"steps": 3, "checkpoint_every": 1})
    trainer = Trainer(cfg, tmp_path / "run", progress=False, log=_quiet)
    real_save = torch.save
    calls = []

    def full_disk(obj, path, *a, **k):
        calls.append(path)
        if len(calls) == 2:
            with open(path, "wb") as fh:
                fh.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, path, *a, **k)

    monkeypatch.setattr(checkpoint.torch, "save", full_disk)
    with pytest.raises(checkpoint.CheckpointError, match=r"disk is full.*step_000001 is intact"):
        trainer.run()
    ckpt = tmp_path / "run" / "ckpt"
    assert [p.name for p in ckpt.iterdir() if p.name != "latest"] == ["step_000001"]
    assert checkpoint.verify(ckpt / "step_000001") is None
    assert (ckpt / "latest").read_text() == "step_000001"


def test_trainer_state_loads_safely_for_every_kind_of_plugin_state(tmp_path, tiny_config):
    for recipe in ("learnability", "bandit", "alp_gmm", "knapsack", "xrpo", "dump"):
        cfg = tiny_config(recipe=recipe, train={"steps": 2, "checkpoint_every": 1})
        Trainer(cfg, tmp_path / recipe, progress=False, log=_quiet).run()
        path = checkpoint.latest(tmp_path / recipe, warn=None)
        torch.load(path / "trainer.pt", weights_only=True)  # raises if anything unsafe were inside
        resumed = Trainer(cfg, tmp_path / recipe, resume=True, progress=False, log=_quiet)
        assert resumed.step == 2
        resumed.close()


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_a_checkpoint_cannot_run_code_when_loaded(tmp_path, tiny_config):
    cfg = tiny_config(train={"steps": 1, "checkpoint_every": 1})
    Trainer(cfg, tmp_path / "run", progress=False, log=_quiet).run()
    path = checkpoint.latest(tmp_path / "run", warn=None)
    with open(path / "trainer.pt", "wb") as fh:
        pickle.dump({"step": _Payload()}, fh)
    checkpoint.write_manifest(path, 1)  # a forged checkpoint with a valid manifest
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        with pytest.raises(ValueError, match="refuses"):
            checkpoint.read_state(path)
    finally:
        os.chdir(cwd)
    assert not (tmp_path / "pwned").exists()


def test_two_first_time_warmups_at_once_both_succeed(tmp_path):
    code = ("from explorl.config import load_config; from explorl.policy.warmup import warmup; "
            "cfg = load_config(overrides=['model.tiny.hidden_size=16', 'model.tiny.layers=1', 'model.tiny.heads=2', "
            "'model.tiny.kv_heads=1', 'model.tiny.intermediate_size=32', 'model.warmup.steps=40', "
            "'model.warmup.batch_size=8', 'tasks={addition: {digits: [1, 1]}}']); warmup(cfg)")
    env = dict(os.environ, EXPLORL_HOME=str(tmp_path / "home"))
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert sum("warmup: saved" in o for o in outs) == 1 and sum("reusing" in o for o in outs) == 1, outs
