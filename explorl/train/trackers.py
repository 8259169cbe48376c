"""Experiment trackers: W&B (``logging.wandb``) and MLflow (``logging.mlflow``) receive every
step's numeric metrics, under the keys of ``metrics.jsonl``, and the resolved configuration.
Both are optional (``pip install -e .[trackers]``); only the training process logs.

Resume. The tracker run ids are kept in ``<run>/trackers.json``; a resumed run continues the same
W&B run (``id=…, resume="allow"``) and the same MLflow run (``run_id``). Offline, W&B writes each
session to its own ``offline-run-…`` folder under that id, and ``wandb sync`` uploads them to one
run in order. Steps after the checkpoint that the resumed run computes again already reached the
trackers before the interruption, and neither tracker can take a step back (online, W&B drops a
step lower than the run's last with a warning; offline, it does not know the earlier session's
steps; MLflow appends a second value at the same step), so they are not sent again: they keep
the first values of those steps, which equal the recomputed ones (same seed, same run) but for
the ``time/`` and ``perf/`` timings. A kill between a tracker's write and the ``metrics.jsonl``
line of the same step sends that one step again (twice in MLflow; W&B online drops it).

Values. NaN and ±inf are sent as they are. W&B records them (``NaN``, ``Infinity``); MLflow's
file store keeps them, its database stores keep NaN and clamp ±inf to the largest float.
MLflow names keep the namespace's ``/``, write later ones as ``.`` and ``@`` as ``_at_``
(``heldout/pass@1/addition`` is ``heldout/pass_at_1.addition``; see ``mlflow_key``).

Failures. A tracker that fails to start stops the run at its start with an error naming the
config key. One that raises during the run never stops training: each step it misses counts 1
in ``logging/tracker_errors/<name>`` (in ``metrics.jsonl`` and TensorBoard), the first few
failures are logged with the tracker's name, and after ``MAX_IN_A_ROW`` failures in a row the
tracker is turned off for the rest of the run, saying so.
"""
from __future__ import annotations

import importlib
import json
import re
import time
import uuid
from pathlib import Path
from typing import Protocol

from explorl.tracker_options import PACKAGES, missing_package

STATE_FILE = "trackers.json"
LOG_FIRST = 3        # failures logged in full, per tracker
MAX_IN_A_ROW = 5     # failures in a row that turn a tracker off
MLFLOW_PARAM_CHARS = 6000
MLFLOW_KEY_CHARS = 250


class Tracker(Protocol):
    name: str

    def log(self, step: int, metrics: dict[str, float]) -> None: ...

    def close(self, failed: bool = False) -> None: ...


def _import(key: str):
    try:
        return importlib.import_module(PACKAGES[key])
    except ImportError:
        raise ValueError(missing_package(key)) from None


class WandbTracker:
    name = "wandb"

    def __init__(self, opts: dict, config: dict, out: Path, state: dict, save, warn=print):
        wandb = _import("wandb")
        folder = Path(opts.get("dir") or out)
        folder.mkdir(parents=True, exist_ok=True)
        if "id" not in state:
            state["id"] = uuid.uuid4().hex[:12]
            save()  # before the run starts: a run killed during the start still continues this id
        self.id = state["id"]
        self.run = wandb.init(project=opts.get("project", "explorl"), entity=opts.get("entity"),
                              name=opts.get("name") or out.name, mode=opts.get("mode", "offline"),
                              dir=str(folder), config=config, id=self.id, resume="allow",
                              allow_val_change=True)  # a resume may change train.steps

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log(metrics, step=step)

    def close(self, failed: bool = False) -> None:
        self.run.finish(exit_code=1 if failed else 0)


def mlflow_key(key: str) -> str:
    """``key`` as an MLflow name: the namespace's ``/`` stays (MLflow groups charts by it), later
    ones become ``.`` (a file store keeps ``a/b`` as a file, so ``a/b/c`` could not sit beside
    it), ``@`` becomes ``_at_`` and any other character MLflow refuses ``_``."""
    head, slash, tail = key.replace("@", "_at_").partition("/")
    return re.sub(r"[^\w./\- ]", "_", head + slash + tail.replace("/", "."))


def flat_params(config: dict, prefix: str = "") -> dict[str, str]:
    """``{"train": {"lr": 5e-05}}`` -> ``{"train.lr": "5e-05"}``: strings as they are, other values as JSON."""
    out = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            out.update(flat_params(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value if isinstance(value, str) else json.dumps(value, default=str)
    return out


class MlflowTracker:
    name = "mlflow"

    def __init__(self, opts: dict, config: dict, out: Path, state: dict, save, warn=print):
        _import("mlflow")
        import yaml
        from mlflow.entities import Param
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient
        from mlflow.tracking.context.registry import resolve_tags
        self.client = MlflowClient(tracking_uri=opts.get("tracking_uri"))
        self.run_id = state.get("run_id")
        known = {}
        if self.run_id:
            try:
                known = self.client.get_run(self.run_id).data.params
                self.client.update_run(self.run_id, status="RUNNING")
            except MlflowException as err:
                warn(f"warning: logging.mlflow: the run's MLflow run {self.run_id} is not in "
                     f"{self.client.tracking_uri} ({err.message}); starting a new MLflow run")
                self.run_id = None
        if not self.run_id:
            name = opts.get("experiment", "explorl")
            experiment = self.client.get_experiment_by_name(name)
            experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(name)
            run = self.client.create_run(experiment_id, run_name=opts.get("run_name") or out.name,
                                         tags=resolve_tags())
            self.run_id = state["run_id"] = run.info.run_id
            save()
        # params are set once (MLflow refuses to change one): a resume adds only new keys, and
        # config.yaml (the whole resolved config, untruncated) shows the resumed run's values
        params, long_keys = [], []
        for key, value in flat_params(config).items():
            key = mlflow_key(key)
            if len(key) > MLFLOW_KEY_CHARS:
                long_keys.append(key)
            elif key not in known:
                cut = value if len(value) <= MLFLOW_PARAM_CHARS else value[:MLFLOW_PARAM_CHARS - 3] + "..."
                params.append(Param(key, cut))
        if long_keys:
            warn(f"warning: logging.mlflow: {len(long_keys)} config keys are longer than MLflow's "
                 f"{MLFLOW_KEY_CHARS} characters and are only in the config.yaml artifact ({long_keys[0]}...)")
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params a call
            self.client.log_batch(self.run_id, params=params[i:i + 100])
        try:  # the artifact store can be another service (S3, ...): without it the params still tell the config
            self.client.log_text(self.run_id, yaml.safe_dump(config, sort_keys=False), "config.yaml")
        except Exception as err:  # noqa: BLE001
            warn(f"warning: logging.mlflow: config.yaml could not be stored as an artifact "
                 f"({type(err).__name__}: {err}); the config is in the run's params")

    def log(self, step: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(mlflow_key(k), float(v), now, step)
                                                    for k, v in metrics.items()])

    def close(self, failed: bool = False) -> None:
        self.client.set_terminated(self.run_id, "FAILED" if failed else "FINISHED")


class Guarded:
    """A tracker whose failures are counted and logged, never raised; after ``max_in_a_row``
    failures in a row it is turned off."""

    def __init__(self, tracker: Tracker, warn=print, log_first: int = LOG_FIRST, max_in_a_row: int = MAX_IN_A_ROW):
        self.tracker, self.name, self.warn = tracker, tracker.name, warn
        self.log_first, self.max_in_a_row = log_first, max_in_a_row
        self.failures, self.in_a_row, self.on, self.closed = 0, 0, True, False

    def log(self, step: int, metrics: dict[str, float]) -> int:
        """1 if this step did not reach the tracker (it raised, or is off), else 0."""
        if not self.on:
            return 1
        try:
            self.tracker.log(step, metrics)
        except Exception as err:  # noqa: BLE001 - any tracker fault is counted, never fatal
            self.failures += 1
            self.in_a_row += 1
            if self.failures <= self.log_first:
                more = " (further failures are counted, not logged)" if self.failures == self.log_first else ""
                self.warn(f"logging: {self.name} failed at step {step}: {type(err).__name__}: {err}{more}")
            if self.in_a_row >= self.max_in_a_row:
                self.on = False
                self.warn(f"logging: {self.name} failed {self.in_a_row} steps in a row; it is turned off for "
                          f"the rest of this run (missed steps count in logging/tracker_errors/{self.name}; "
                          f"metrics.jsonl and TensorBoard have every step)")
                self.close(failed=True)
            return 1
        self.in_a_row = 0
        return 0

    def close(self, failed: bool = False) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.tracker.close(failed)
        except Exception as err:  # noqa: BLE001
            self.warn(f"logging: {self.name} failed to close: {type(err).__name__}: {err}")


def _read_state(path: Path, warn) -> dict:
    if not path.exists():
        return {}
    try:
        state = json.loads(path.read_text())
        if isinstance(state, dict):
            return state
    except json.JSONDecodeError:
        pass
    warn(f"warning: {path} is damaged; the trackers start new runs")
    return {}


def build(cfg, out: Path, warn=print) -> list[Guarded]:
    """The trackers ``cfg.logging`` asks for, started (or continued, on resume); an error that names
    the config key if one cannot start."""
    from explorl.atomic import write_text_atomic
    out = Path(out)
    path = out / STATE_FILE
    state = _read_state(path, warn)
    config = cfg.to_dict()

    def save():
        write_text_atomic(path, json.dumps(state, indent=2))

    started = []
    try:
        for key, cls in (("wandb", WandbTracker), ("mlflow", MlflowTracker)):
            opts = getattr(cfg.logging, key)
            if opts is None:
                continue
            try:
                tracker = cls(opts, config, out, state.setdefault(key, {}), save, warn)
            except Exception as err:
                if isinstance(err, ValueError) and str(err).startswith(f"logging.{key}"):
                    raise
                raise ValueError(f"logging.{key}: the tracker could not start: {type(err).__name__}: {err}") from err
            started.append(Guarded(tracker, warn, LOG_FIRST, MAX_IN_A_ROW))
    except BaseException:
        for tracker in started:
            tracker.close(failed=True)
        raise
    return started
