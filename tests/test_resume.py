"""--resume continues the run it names: its config comes from the run folder; only keys that
cannot change the past may be given again; a folder holding another run is refused."""

import pytest
import yaml

from explorl.cli import main
from explorl.train.loop import Trainer
from run_records import metrics_without_time


def _sets(tiny_overrides):
    return [x for o in tiny_overrides if not o.startswith(("recipe=", "seed=", "train.steps="))
            for x in ("--set", o)]


def test_the_readme_example_resumes_clip_higher_seed_1(tmp_path, tiny_overrides, capsys):
    """explorl train --out runs/ch --recipe clip_higher --set train.steps=80 --seed 1, then
    explorl train --out runs/ch --resume --steps 120 (here 2 then 3 steps)."""
    base = _sets(tiny_overrides)
    out, full = tmp_path / "ch", tmp_path / "full"
    assert main(["train", "--out", str(out), "--recipe", "clip_higher", "--set", "train.steps=2", "--seed", "1",
                 "--quiet", *base]) == 0
    assert main(["train", "--out", str(out), "--resume", "--steps", "3", "--quiet"]) == 0
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["recipe"] == "clip_higher" and cfg["seed"] == 1 and cfg["train"]["steps"] == 3
    assert cfg["objective"][0]["clip_ratio_high"] == 0.28
    assert main(["train", "--out", str(full), "--recipe", "clip_higher", "--set", "train.steps=3", "--seed", "1",
                 "--quiet", *base]) == 0
    assert metrics_without_time(out) == metrics_without_time(full)


@pytest.mark.parametrize("change, named", [
    (["--seed", "0"], "seed"),
    (["--recipe", "grpo"], "objective"),
    (["--set", "train.lr=1e-3"], "train.lr"),
    (["--set", "eval.samples=2", "--set", "eval.ks=[1, 2]"], "eval.ks"),
])
def test_a_resume_that_would_change_the_run_is_refused_naming_the_keys(tmp_path, tiny_overrides, capsys,
                                                                       change, named):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--recipe", "clip_higher", "--seed", "1", "--quiet",
                 *_sets(tiny_overrides), "--set", "train.steps=1"]) == 0
    before = (out / "config.yaml").read_text()
    capsys.readouterr()
    assert main(["train", "--out", str(out), "--resume", "--steps", "2", "--quiet", *change]) == 2
    err = capsys.readouterr().err
    assert "another configuration" in err and named in err and "only" in err
    assert (out / "config.yaml").read_text() == before  # nothing rewritten


def test_a_fresh_run_refuses_a_folder_left_by_another_run(tmp_path, tiny_config):
    cfg = tiny_config(train={"steps": 1, "checkpoint_every": 5})
    out = tmp_path / "run"
    trainer = Trainer(cfg, out, progress=False, log=lambda *_: None)
    trainer._write_eval({"start": trainer.evaluate()})  # a run killed before its first checkpoint
    trainer.close()
    other = tiny_config(seed=3, train={"steps": 1, "checkpoint_every": 5})
    with pytest.raises(FileExistsError, match="already holds a run"):
        Trainer(other, out, progress=False, log=lambda *_: None)
    with pytest.raises(ValueError, match=r"another configuration: seed: 0 in the run, 3 asked"):
        Trainer(other, out, resume=True, progress=False, log=lambda *_: None)
    logged = []
    resumed = Trainer(cfg, out, resume=True, progress=False, log=logged.append)  # same config: starts over
    assert resumed.step == 0 and any("starting from step 0" in line for line in logged)
    resumed.close()


def test_a_key_added_since_the_run_was_made_is_no_change_at_its_default():
    from explorl.config import Config
    from explorl.train.resume import differences
    stored = Config().to_dict()
    del stored["train"]["rollout_batch_size"]  # as written by an explorl that did not have the key
    wanted = Config().to_dict()
    assert differences(stored, wanted) == []
    wanted["train"]["rollout_batch_size"] = 64  # not the default: the older run did something else
    assert differences(stored, wanted) == ["train.rollout_batch_size"]
