"""Experiment trackers, offline: MLflow (a file store under tmp_path) and W&B (offline mode) get
every step's numeric metrics under metrics.jsonl's keys and the resolved config; a resumed run
continues the same tracker runs without sending a step twice; a tracker that raises is counted
and turned off, never stopping training; a missing package or a bad key is a clear error."""
import json
import math
import shutil
import struct
import sys
from pathlib import Path

import pytest
import yaml

from explorl.config import validate
from explorl.train import trackers
from explorl.train.logging import RunLogger
from explorl.train.loop import Trainer
from run_records import run_metrics

KEYS = ("reward/mean", "loss/total", "entropy/rollout", "tokens/total", "adv/frac_zero_std")


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """No tracker reaches a server: W&B offline and quiet, MLflow on a local file store; W&B's
    own files (settings, cache, service logs) under tmp_path, not the home folder."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb-home" / name.lower()))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 asks for this to use a file store


def _mlflow(tmp_path):
    return {"tracking_uri": (tmp_path / "mlruns").as_uri(), "experiment": "tests"}


def _rows(run):
    return run_metrics(run)


def _client(tmp_path):
    from mlflow.tracking import MlflowClient
    return MlflowClient(tracking_uri=(tmp_path / "mlruns").as_uri())


def _history(client, run_id, key):
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, trackers.mlflow_key(key)))


def _wandb_records(path):
    """The records of a W&B run file (``run-<id>.wandb``): a LevelDB-style log of protobuf records."""
    from wandb.proto import wandb_internal_pb2 as pb
    data, pos, block, part = path.read_bytes(), 7, 32768, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:
            pos += left
            continue
        part += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a whole record, or its last piece
            record = pb.Record()
            record.ParseFromString(part)
            part = b""
            yield record


def _wandb_run(folder):
    """Each offline run in ``folder/wandb`` (oldest first): its id, config and history rows."""
    runs = []
    for file in sorted((folder / "wandb").glob("offline-run-*/run-*.wandb"), key=lambda p: p.parent.name):
        config, history = {}, []
        for record in _wandb_records(file):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                config.update({i.key: json.loads(i.value_json) for i in record.run.config.update})
            elif kind == "history":
                history.append({i.key or "/".join(i.nested_key): json.loads(i.value_json)
                                for i in record.history.item})
        runs.append((file.stem[len("run-"):], config, history))
    return runs


def _same(tracked, logged):
    return tracked == pytest.approx(logged, abs=1e-6, nan_ok=True)


def test_mlflow_gets_every_step_and_the_resolved_config(tmp_path, tiny_config):
    cfg = tiny_config(logging={"mlflow": _mlflow(tmp_path)}, train={"steps": 3}, eval={"every_tokens": 120})
    Trainer(cfg, tmp_path / "run", progress=False, log=lambda *_: None).run()
    rows, client = _rows(tmp_path / "run"), _client(tmp_path)
    run_id = json.loads((tmp_path / "run" / "trackers.json").read_text())["mlflow"]["run_id"]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert any("heldout/pass@1/addition" in r for r in rows)  # heldout/pass_at_1.addition in MLflow
    for key in (*KEYS, "heldout/pass@1", "heldout/pass@1/addition"):
        assert _history(client, run_id, key) == [(r["step"], pytest.approx(r[key], abs=1e-6))
                                                 for r in rows if key in r], key
    numeric = {k for r in rows for k, v in r.items() if isinstance(v, (int, float)) and k != "step"}
    numeric.remove("logging/tracker_errors/mlflow")  # known only once the tracker has been tried
    assert set(run.data.metrics) == {trackers.mlflow_key(k) for k in numeric}
    assert "rollouts/per_problem" in rows[0] and "rollouts/per_problem" not in run.data.metrics  # a list
    assert [r["logging/tracker_errors/mlflow"] for r in rows] == [0, 0, 0]
    params = run.data.params
    assert float(params["train.lr"]) == cfg.train.lr and params["recipe"] == "grpo"
    assert json.loads(params["tasks.addition.digits"]) == [1, 1] and params["logging.wandb"] == "null"
    config = Path(client.download_artifacts(run_id, "config.yaml", str(tmp_path / "artifacts")))
    assert yaml.safe_load(config.read_text()) == json.loads(json.dumps(cfg.to_dict()))  # the whole config


def test_wandb_offline_run_holds_every_step_and_the_resolved_config(tmp_path, tiny_config):
    cfg = tiny_config(logging={"wandb": {"project": "explorl-tests"}}, train={"steps": 3})
    Trainer(cfg, tmp_path / "run", progress=False, log=lambda *_: None).run()
    rows = _rows(tmp_path / "run")
    [(run_id, config, history)] = _wandb_run(tmp_path / "run")  # W&B's files sit in the run folder
    assert run_id == json.loads((tmp_path / "run" / "trackers.json").read_text())["wandb"]["id"]
    assert config["train"]["lr"] == cfg.train.lr and config["recipe"] == "grpo"
    assert config["tasks"] == {"addition": {"digits": [1, 1]}, "reversal": {"length": [2, 3]}}
    assert [h["_step"] for h in history] == [1, 2, 3]
    for h, r in zip(history, rows):
        assert all(_same(h[key], r[key]) for key in KEYS), (h, r)
        assert "rollouts/per_problem" not in h  # a list: not a metric for any sink
        assert set(h) - {"_step", "_runtime", "_timestamp"} == \
            {k for k, v in r.items() if isinstance(v, (int, float)) and k != "step"} - {"logging/tracker_errors/wandb"}


def test_nan_and_inf_reach_every_sink_as_they_are_and_lists_none(tmp_path, tiny_config):
    cfg = tiny_config(logging={"mlflow": _mlflow(tmp_path), "wandb": {}})
    (tmp_path / "run").mkdir()
    logger = RunLogger(tmp_path / "run", 0, 2, progress=False, warn=lambda *_: None, config=cfg)
    logger.log(1, {"loss/total": math.nan, "loss/grad_norm": math.inf, "rollouts/per_problem": [4, 4], "rollouts": 8})
    logger.close()
    [row] = _rows(tmp_path / "run")
    assert math.isnan(row["loss/total"]) and row["loss/grad_norm"] == math.inf and row["rollouts/per_problem"] == [4, 4]
    client = _client(tmp_path)
    run_id = json.loads((tmp_path / "run" / "trackers.json").read_text())["mlflow"]["run_id"]
    metrics = client.get_run(run_id).data.metrics
    assert math.isnan(metrics["loss/total"]) and metrics["loss/grad_norm"] == math.inf and metrics["rollouts"] == 8
    assert "rollouts/per_problem" not in metrics
    [(_, _, [history])] = _wandb_run(tmp_path / "run")
    assert math.isnan(history["loss/total"]) and history["loss/grad_norm"] == math.inf and history["rollouts"] == 8
    assert "rollouts/per_problem" not in history
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    tb = EventAccumulator(str(tmp_path / "run" / "tb")).Reload()
    assert set(tb.Tags()["scalars"]) == {"loss/total", "loss/grad_norm", "rollouts", "logging/tracker_errors/mlflow",
                                         "logging/tracker_errors/wandb"}


def test_a_resume_continues_the_same_tracker_runs_and_sends_no_step_twice(tmp_path, tiny_config):
    cfg = tiny_config(logging={"mlflow": _mlflow(tmp_path), "wandb": {}}, train={"steps": 4, "checkpoint_every": 2})
    run = tmp_path / "run"
    Trainer(cfg, run, progress=False, log=lambda *_: None).run(steps=3)
    shutil.rmtree(run / "ckpt" / "step_000003")  # killed after step 3 was logged, before its checkpoint
    resumed = Trainer(cfg, run, resume=True, progress=False, log=lambda *_: None)
    assert resumed.step == 2
    resumed.run()  # computes step 3 again, then step 4
    rows = _rows(run)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    ids = json.loads((run / "trackers.json").read_text())
    client = _client(tmp_path)
    [only] = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    assert only.info.run_id == ids["mlflow"]["run_id"] and only.info.status == "FINISHED"
    for key in KEYS:  # step 3 once, from before the kill: the same values (same seed, same run)
        assert _history(client, only.info.run_id, key) == [(r["step"], pytest.approx(r[key], abs=1e-6)) for r in rows]
    first, second = _wandb_run(run)
    assert first[0] == second[0] == ids["wandb"]["id"]
    assert [h["_step"] for h in first[2]] == [1, 2, 3] and [h["_step"] for h in second[2]] == [4]
    assert all(_same(h[k], r[k]) for h, r in zip(first[2] + second[2], rows) for k in KEYS)
    assert all(r[f"logging/tracker_errors/{name}"] == 0 for r in rows for name in ("mlflow", "wandb"))


def test_a_tracker_that_raises_is_counted_then_turned_off_and_training_goes_on(tmp_path, tiny_config, monkeypatch):
    calls = []

    def down(self, step, metrics):
        calls.append(step)
        raise ConnectionError("tracking server unreachable")

    monkeypatch.setattr(trackers.MlflowTracker, "log", down)
    monkeypatch.setattr(trackers, "MAX_IN_A_ROW", 2)  # 5 in a run; fewer here to keep the run short
    monkeypatch.setattr(trackers, "LOG_FIRST", 1)
    steps = trackers.MAX_IN_A_ROW + 2
    cfg = tiny_config(logging={"mlflow": _mlflow(tmp_path)}, train={"steps": steps, "checkpoint_every": steps})
    lines = []
    Trainer(cfg, tmp_path / "run", progress=False, log=lines.append).run()
    rows = _rows(tmp_path / "run")
    assert [r["step"] for r in rows] == list(range(1, steps + 1))  # training went on
    assert [r["logging/tracker_errors/mlflow"] for r in rows] == [1] * steps  # every missed step counted
    assert calls == list(range(1, trackers.MAX_IN_A_ROW + 1))  # then it was turned off
    failed = [line for line in lines if line.startswith("logging: mlflow failed at step")]
    assert len(failed) == 1 and "ConnectionError: tracking server unreachable" in failed[0]
    assert "further failures are counted" in failed[0]
    assert sum("turned off for the rest of this run" in line for line in lines) == 1
    run_id = json.loads((tmp_path / "run" / "trackers.json").read_text())["mlflow"]["run_id"]
    assert _client(tmp_path).get_run(run_id).info.status == "FAILED"


def test_failures_must_come_in_a_row_to_turn_a_tracker_off():
    class Flaky:
        name = "flaky"

        def __init__(self):
            self.got, self.closed = [], None

        def log(self, step, metrics):
            if step % 2:
                raise OSError("disk full")
            self.got.append(step)

        def close(self, failed=False):
            self.closed = failed

    lines = []
    guarded = trackers.Guarded(Flaky(), lines.append)
    missed = [guarded.log(step, {"x": 1.0}) for step in range(1, 21)]
    assert missed == [1, 0] * 10 and guarded.on and guarded.failures == 10
    assert len(lines) == trackers.LOG_FIRST and "further failures are counted" in lines[-1]
    guarded.close()
    guarded.close()
    assert guarded.tracker.closed is False


@pytest.mark.parametrize("key", ["wandb", "mlflow"])
def test_a_missing_package_is_a_clear_error_at_the_start(tmp_path, tiny_config, monkeypatch, key):
    monkeypatch.setitem(sys.modules, trackers.PACKAGES[key], None)  # import fails as if not installed
    cfg = tiny_config(logging={key: {}})
    with pytest.raises(ValueError, match=rf"logging\.{key} is set but .* pip install -e \.\[trackers\]"):
        validate(cfg)
    with pytest.raises(ValueError, match=r"pip install -e \.\[trackers\]"):
        Trainer(cfg, tmp_path / "run", progress=False, log=lambda *_: None).run()
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # stopped before the first step


@pytest.mark.parametrize("logging, message", [
    ({"wandb": {"mode": "onlin"}}, r"logging\.wandb\.mode: 'onlin' is not one of offline, online"),
    ({"wandb": {"projet": "x"}}, r"logging\.wandb\.projet: unknown option \(valid: project, entity, name, mode, dir\)"),
    ({"wandb": {"project": ""}}, r"logging\.wandb\.project: expected W&B project"),
    ({"mlflow": {"experiment": 3}}, r"logging\.mlflow\.experiment: expected experiment name"),
    ({"mlflow": {"uri": "x"}}, r"logging\.mlflow\.uri: unknown option \(valid: tracking_uri, experiment, run_name\)"),
])
def test_tracker_options_are_checked_naming_the_key(tiny_config, logging, message):
    with pytest.raises(ValueError, match=message):
        validate(tiny_config(logging=logging))


def test_a_tracker_that_cannot_start_stops_the_run_at_its_start_naming_the_key(tmp_path, tiny_config):
    cfg = tiny_config(logging={"wandb": {}, "mlflow": {"tracking_uri": "nosuch://tracker"}})
    (tmp_path / "run").mkdir()
    with pytest.raises(ValueError, match=r"logging\.mlflow: the tracker could not start: .*nosuch://tracker"):
        RunLogger(tmp_path / "run", 0, 1, progress=False, warn=lambda *_: None, config=cfg)
    import wandb
    assert wandb.run is None  # the W&B run started before it is finished again
    [(_, _, history)] = _wandb_run(tmp_path / "run")
    assert history == []
