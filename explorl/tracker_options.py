"""The options of the experiment trackers (``logging.wandb``, ``logging.mlflow``) and their check.

The configuration checks them when it is loaded (``explorl.config.validate``), before any work;
the trackers themselves (``explorl.train.trackers``) read the package names and the error a
missing package gives. Both import from here, the level below them.
"""
from __future__ import annotations

import importlib.util
import sys

#: The options of each tracker: the types a value may have, and what it means.
KEYS = {
    "wandb": {
        "project": ((str,), "W&B project (default explorl)"),
        "entity": ((str, type(None)), "W&B team or user (default: the account's own)"),
        "name": ((str, type(None)), "run name (default: the run folder's name)"),
        "mode": ((str,), "offline (default) or online"),
        "dir": ((str, type(None)), "folder for W&B's files (default: the run folder)"),
    },
    "mlflow": {
        "tracking_uri": ((str, type(None)), "tracking URI (default: MLFLOW_TRACKING_URI or MLflow's own)"),
        "experiment": ((str,), "experiment name (default explorl)"),
        "run_name": ((str, type(None)), "run name (default: the run folder's name)"),
    },
}
PACKAGES = {"wandb": "wandb", "mlflow": "mlflow"}
WANDB_MODES = ("offline", "online")


def missing_package(key: str) -> str:
    return (f"logging.{key} is set but the {PACKAGES[key]} package is not installed: "
            f"pip install -e .[trackers] (or set logging.{key}: null)")


def installed(package: str) -> bool:
    if package in sys.modules:
        return sys.modules[package] is not None
    return importlib.util.find_spec(package) is not None


def check_config(logging) -> None:
    """The keys and values of ``logging.wandb`` / ``logging.mlflow``, and their packages."""
    for key, keys in KEYS.items():
        opts = getattr(logging, key)
        if opts is None:
            continue
        if not isinstance(opts, dict):
            raise ValueError(f"logging.{key}: expected a mapping of options ({', '.join(keys)}) or null, "
                             f"got {type(opts).__name__} {opts!r}")
        for name, value in opts.items():
            if name not in keys:
                raise ValueError(f"logging.{key}.{name}: unknown option (valid: {', '.join(keys)})")
            types, meaning = keys[name]
            if not isinstance(value, types) or (isinstance(value, str) and not value.strip()):
                raise ValueError(f"logging.{key}.{name}: expected {meaning}, got {value!r}")
        mode = opts.get("mode", "offline")
        if key == "wandb" and mode not in WANDB_MODES:
            raise ValueError(f"logging.wandb.mode: {mode!r} is not one of {', '.join(WANDB_MODES)}")
        if not installed(PACKAGES[key]):
            raise ValueError(missing_package(key))


