"""Run configuration: YAML in, validated dataclasses out, errors that name the bad key.

Resolution order (later wins): dataclass defaults (the embedded testbed) < the config file
< the recipe named by ``recipe`` (``configs/recipes/NAME.yaml`` or a path) < ``--set
key=value`` overrides. A recipe defines a method, so the keys it sets (its components, and
e.g. Dr. GRPO's ``train.loss_agg_mode``) win over the environment the config file describes.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from explorl.registry import _check_type, coerce

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
RECIPE_DIR = CONFIG_DIR / "recipes"
DEFAULT_CONFIG = CONFIG_DIR / "testbed.yaml"


@dataclass
class TinyModel:
    family: str = "qwen2"
    hidden_size: int = 128
    layers: int = 4
    heads: int = 4
    kv_heads: int = 2
    intermediate_size: int = 384
    max_positions: int = 128
    seed: int = 0


@dataclass
class Warmup:
    """Supervised warm start of the tiny model on the task mix (cached by its config)."""
    steps: int = 800
    batch_size: int = 64
    lr: float = 2e-3
    tasks: dict | None = None  # the mix to warm up on; None = the run's ``tasks``


@dataclass
class ModelConfig:
    path: str | None = None          # a saved AutoModelForCausalLM folder or hub id; None = testbed model
    tiny: TinyModel = field(default_factory=TinyModel)
    warmup: Warmup = field(default_factory=Warmup)
    backend: str = "auto"            # auto | fast | hf
    dtype: str = "float32"


@dataclass
class TrainConfig:
    steps: int = 150
    problems_per_step: int = 32
    rollouts_per_problem: int = 8
    max_new_tokens: int = 12
    lr: float = 5e-5
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    ppo_epochs: int = 2
    minibatches: int = 2
    loss_agg_mode: str = "token-mean"
    checkpoint_every: int = 50
    max_tokens: int | None = None    # stop once this many response tokens were generated
    deterministic: bool = True       # torch deterministic algorithms: same seed, same run, bit for bit


@dataclass
class EvalConfig:
    problems_per_source: int = 32
    samples: int = 64
    ks: list = field(default_factory=lambda: [1, 2, 4, 8, 16, 32, 64])
    temperature: float = 1.0
    seed: int = 1234
    every_tokens: int | None = None  # also evaluate whenever training crosses a multiple of this


@dataclass
class Config:
    seed: int = 0
    recipe: str | None = None
    tasks: dict = field(default_factory=lambda: {
        "addition": {"digits": [1, 4]},
        "multiplication": {"digits": [1, 3]},
        "countdown": {"numbers": [2, 4]},
        "sorting": {"length": [2, 8]},
        "reversal": {"length": [3, 10]},
    })
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    curriculum: Any = "uniform"
    budget: Any = "fixed"
    decoding: Any = "constant"
    advantage: list = field(default_factory=lambda: ["grpo"])
    objective: list = field(default_factory=lambda: ["ppo_clip"])

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _from_dict(cls, data: dict, where: str):
    if not isinstance(data, dict):
        raise ValueError(f"{where or 'config'}: expected a mapping, got {type(data).__name__} {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        if key not in fields:
            raise ValueError(f"unknown config key {path!r} (valid keys: {', '.join(fields)})")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _from_dict(hint, value or {}, path)
        else:
            if hint is not Any:
                value = coerce(value, hint)
                _check_type(path, value, hint)
            kwargs[key] = value
    return cls(**kwargs)


def deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "tasks":
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the top level must be a mapping of keys, got {type(data).__name__}")
    return data


def recipe_path(name: str) -> Path:
    path = Path(name)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return path
    candidate = RECIPE_DIR / f"{name}.yaml"
    if not candidate.exists():
        known = ", ".join(sorted(p.stem for p in RECIPE_DIR.glob("*.yaml")))
        raise ValueError(f"recipe {name!r} not found in {RECIPE_DIR} (known: {known})")
    return candidate


def parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ValueError(f"--set {item!r}: expected key=value, e.g. train.lr=1e-5")
    key, raw = item.split("=", 1)
    return key.strip().split("."), yaml.safe_load(raw)


def resolve(path: str | Path | None = None, overrides: list[str] = (), recipe: str | None = None) -> dict:
    """The merged configuration as a plain dict (before validation)."""
    data = load_yaml(path or DEFAULT_CONFIG)
    sets = [parse_override(item) for item in overrides]
    for keys, value in sets:
        if keys == ["recipe"]:
            recipe = value
    recipe = recipe or data.get("recipe")
    merged = data
    if recipe:
        rec = load_yaml(recipe_path(recipe))
        if "recipe" in rec:
            raise ValueError(f"recipe {recipe!r}: a recipe cannot name another recipe")
        merged = deep_merge(data, rec)
    merged["recipe"] = recipe
    for keys, value in sets:
        node = merged
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ValueError(f"--set {'.'.join(keys)}: {k!r} is not a section")
        node[keys[-1]] = value
    return merged


def load_config(path: str | Path | None = None, overrides: list[str] = (), recipe: str | None = None) -> Config:
    cfg = _from_dict(Config, resolve(path, overrides, recipe), "")
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Cross-field checks, with the reason in the message."""
    from explorl.explore.objective.aggregate import MODES
    t = cfg.train
    if t.loss_agg_mode not in MODES:
        raise ValueError(f"train.loss_agg_mode: {t.loss_agg_mode!r} is not one of {', '.join(MODES)}")
    for key in ("steps", "problems_per_step", "rollouts_per_problem", "max_new_tokens", "ppo_epochs", "minibatches"):
        if getattr(t, key) < 1:
            raise ValueError(f"train.{key}: must be >= 1, got {getattr(t, key)}")
    if t.minibatches > t.problems_per_step:
        raise ValueError(f"train.minibatches ({t.minibatches}) cannot exceed train.problems_per_step "
                         f"({t.problems_per_step}): minibatches split whole groups")
    if max(cfg.eval.ks) > cfg.eval.samples:
        raise ValueError(f"eval.ks: pass@{max(cfg.eval.ks)} needs eval.samples >= {max(cfg.eval.ks)}, "
                         f"got {cfg.eval.samples}")
    if cfg.eval.every_tokens is not None and cfg.eval.every_tokens < 1:
        raise ValueError(f"eval.every_tokens: must be >= 1 or null, got {cfg.eval.every_tokens}")
    if cfg.model.backend not in ("auto", "fast", "hf"):
        raise ValueError(f"model.backend: {cfg.model.backend!r} is not one of auto, fast, hf")
    if not cfg.tasks:
        raise ValueError("tasks: at least one task source is needed")
