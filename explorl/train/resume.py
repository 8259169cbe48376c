"""``--resume`` continues the run it names: its configuration comes from the run folder.

Only keys that cannot change what the run already did may be given again (``RESUMABLE``):
how long it goes on, how often it saves, and how faults are policed. Any other difference
between the run's ``config.yaml`` and what the command line asks for is refused, naming the
keys, so a resumed run is never silently a different run.
"""
from __future__ import annotations

import json
from pathlib import Path

import yaml

RESUMABLE = {
    "train.steps": "total steps (the run goes on, or stops, at this count)",
    "train.max_tokens": "generated-token budget",
    "train.checkpoint_every": "how often checkpoints are written",
    "train.max_nonfinite_steps": "how many non-finite optimizer steps in a row stop the run",
    "verify.timeout": "verifier time limit",
    "verify.max_error_share": "verifier error budget",
    "verify.log_first": "faults logged in full",
    "verify.check_at_start": "the start-of-run check of the task sources",
    "verify.isolate": "whether verifiers run in a worker process",
    "train.micro_batch_size": "rollouts per forward/backward (the update is the same)",
    "model.gradient_checkpointing": "recomputing activations (the update is the same)",
    "eval.share_start": "whether the start evaluation is shared (a cache)",
    "model.device": "where the policy runs (a run moves between CPU and GPU)",
    "model.cuda_graphs": "whether decoding steps replay as CUDA graphs (the same samples)",
    "logging.wandb": "the W&B tracker",
    "logging.mlflow": "the MLflow tracker",
}


def flat(d: dict, prefix: str = "") -> dict:
    """``{"train": {"lr": 1}}`` -> ``{"train.lr": 1}`` (``tasks`` stays one value)."""
    out = {}
    for key, value in d.items():
        if isinstance(value, dict) and key != "tasks" and value:
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def differences(stored: dict, wanted: dict) -> list[str]:
    """Keys whose values differ (compared as JSON, so tuples equal lists). A key the stored
    configuration lacks because it was added to explorl after the run was made is no
    difference while the wanted value is its default (what the older code did)."""
    from explorl.config import Config
    a = flat(json.loads(json.dumps(stored)))
    b = flat(json.loads(json.dumps(wanted)))
    defaults = flat(json.loads(json.dumps(Config().to_dict())))
    newer = {k for k in b.keys() - a.keys() if k in defaults and b[k] == defaults[k]}
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k) and k not in newer)


def refuse_changes(stored: dict, wanted: dict, run_dir: Path) -> None:
    """Raise ``ValueError`` naming every key (outside ``RESUMABLE``) on which ``wanted`` differs."""
    changed = [k for k in differences(stored, wanted) if not _resumable(k)]
    if changed:
        a, b = flat(json.loads(json.dumps(stored))), flat(json.loads(json.dumps(wanted)))
        shown = "; ".join(f"{k}: {a.get(k)!r} in the run, {b.get(k)!r} asked" for k in changed[:6])
        more = f" (and {len(changed) - 6} more)" if len(changed) > 6 else ""
        raise ValueError(
            f"--resume: {run_dir} was made with another configuration: {shown}{more}. A resumed run keeps "
            f"its configuration; only {', '.join(sorted(RESUMABLE))} may change. Start a new run with "
            f"another --out to train something else.")


def _resumable(key: str) -> bool:
    return any(key == allowed or key.startswith(allowed + ".") for allowed in RESUMABLE)


def stored_config(run_dir: Path) -> dict | None:
    path = Path(run_dir) / "config.yaml"
    if not path.exists():
        return None
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML ({err}); the run folder is damaged") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping; the run folder is damaged")
    return data


def resume_config(run_dir: Path, path=None, overrides=(), recipe=None):
    """The configuration to resume ``run_dir`` with: the run's own ``config.yaml``, with only what
    the command line names explicitly (``--config``, ``--recipe``, ``--set``, ``--seed``,
    ``--steps``) applied on top. The trainer then refuses any change outside ``RESUMABLE``."""
    from explorl.config import (Config, _from_dict, apply_overrides, deep_merge, load_yaml, parse_override,
                                recipe_path, validate)
    data = stored_config(run_dir)
    if data is None:
        return None
    for keys, value in (parse_override(item) for item in overrides):
        if keys == ["recipe"]:
            recipe = value
    if path is not None:
        data = deep_merge(data, load_yaml(path))
    if recipe is not None:
        rec = load_yaml(recipe_path(recipe))
        data = deep_merge(data, rec)
        data["recipe"] = recipe
    data = apply_overrides(data, overrides)
    cfg = _from_dict(Config, data, "")
    validate(cfg)
    return cfg
