"""Run configuration: YAML in, validated dataclasses out, errors that name the bad key.

Resolution order (later wins): dataclass defaults (the embedded testbed) < the config file
< the recipe named by ``recipe`` (``configs/recipes/NAME.yaml`` or a path) < ``--set
key=value`` overrides. A recipe defines a method, so the keys it sets (its components, and
e.g. Dr. GRPO's ``train.loss_agg_mode``) win over the environment the config file describes.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from explorl.registry import _check_type, coerce
from explorl.tasks import TESTBED_MIX

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
    steps: int = 1000
    batch_size: int = 64
    lr: float = 2e-3
    tasks: dict | None = None  # the mix to warm up on; None = the run's ``tasks``
    seed: int | None = None    # the order of the warm-up data; None = model.tiny.seed (which also seeds the init)
    references_per_problem: int = 1  # each problem this many times per batch, each with its own drawn reference


@dataclass
class VLLMOptions:
    """The colocated vLLM engine of ``model.backend: vllm`` (``explorl.policy.vllm_engine``)."""
    gpu_memory_utilization: float = 0.3  # vLLM's share of each GPU (weights and KV cache), beside training
    enable_sleep_mode: bool = False  # free vLLM's weights and KV cache between rollouts (pushed again after)
    max_model_len: int | None = None  # prompt + response tokens vLLM plans for; None = the model's own


@dataclass
class ModelConfig:
    path: str | None = None          # a saved AutoModelForCausalLM folder or hub id; None = testbed model
    tiny: TinyModel = field(default_factory=TinyModel)
    warmup: Warmup = field(default_factory=Warmup)
    backend: str = "auto"            # auto | fast | hf | vllm (rollouts on GPU through vLLM, README "Scaling out")
    vllm: VLLMOptions = field(default_factory=VLLMOptions)
    dtype: str = "float32"           # float32 | bfloat16 | float16
    device: str = "auto"             # auto (CUDA when present, else CPU) | cpu | cuda; one device per process
    lora: dict | None = None         # {r, alpha, dropout, target_modules} trains LoRA adapters; None = full fine-tuning
    gradient_checkpointing: bool = False  # recompute activations in the backward pass (less memory, more time)
    cuda_graphs: Any = "auto"        # auto (on a CUDA device with the fast path) | true | false: decode by CUDA graphs


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
    micro_batch_size: int | None = None  # rollouts per forward/backward (gradient accumulation); None = a whole minibatch
    rollout_batch_size: int | None = None  # rollouts decoded at once (bounds the KV cache); None = a whole step's
    recompute_old_logp: bool = False  # π_old from a training forward, not the sampler (pair with ppo_clip's tis_cap)
    deterministic: bool = True       # torch deterministic algorithms: same seed, same run, bit for bit
    parallel: str = "none"           # none | ddp | fsdp (data parallel over torchrun's processes; README "Scaling out")
    max_nonfinite_steps: int = 3     # optimizer steps skipped in a row for a non-finite loss/grad before the run stops


@dataclass
class VerifyConfig:
    """Every verification runs under a time limit and an exception guard; faults are counted."""
    timeout: float = 5.0             # seconds per verification; a hung verifier is abandoned and scores 0
    max_error_share: float = 0.1     # errors + time-outs + invalid rewards, as a share of a step's verifications
    log_first: int = 5               # how many faults are logged in full (source and completion)
    check_at_start: bool = True      # run a quick check_task on every source before training
    isolate: bool = True             # verifiers in a worker process (a hang is abandoned even in C code)


@dataclass
class EvalConfig:
    problems_per_source: int = 32
    samples: int = 64
    ks: list = field(default_factory=lambda: [1, 2, 4, 8, 16, 32, 64])
    temperature: float = 1.0
    seed: int = 1234
    every_tokens: int | None = None  # also evaluate whenever training crosses a multiple of this
    every_samples: int | None = None  # samples per problem in those evaluations along the way; None = samples
    share_start: bool = True         # reuse the start evaluation of an identical starting point (explorl.eval.shared)


@dataclass
class PromptConfig:
    """How a task prompt becomes the model's input."""
    template: str = "raw"            # raw | chat (the tokenizer's chat template) | a format string with {prompt}
    system: str | None = None        # system prompt (chat template only)


@dataclass
class LoggingConfig:
    """Where metrics go besides metrics.jsonl and TensorBoard (optional extras)."""
    wandb: dict | None = None        # {project, entity, name, mode (online | offline), dir}
    mlflow: dict | None = None       # {tracking_uri, experiment, run_name}


@dataclass
class Config:
    seed: int = 0
    recipe: str | None = None
    tasks: dict = field(default_factory=lambda: copy.deepcopy(TESTBED_MIX))
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    verify: VerifyConfig = field(default_factory=VerifyConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    curriculum: Any = "uniform"
    budget: Any = "fixed"
    decoding: Any = "constant"
    rollout: Any = "flat"          # the shape of a group: flat (independent samples) or a tree (tree, ets, dts)
    advantage: list = field(default_factory=lambda: ["grpo"])
    objective: list = field(default_factory=lambda: ["ppo_clip"])
    guidance: list = field(default_factory=list)     # guidance methods (luffy, ampo, sft, ...); none by default
    teachers: dict = field(default_factory=dict)     # name -> {kind: solver | reference | model | self, ...}
    reference: Any = field(default_factory=lambda: {"kind": "initial"})  # KL reference: initial | soup (SALSA)

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
            # an empty section (``train:`` with every key commented out) reads as null
            kwargs[key] = _from_dict(hint, {} if value is None else value, path)
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
    if path.is_dir():
        raise ValueError(f"{path}: is a directory, not a YAML config file")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        line = path.read_bytes()[:err.start].count(b"\n") + 1
        raise ValueError(f"{path}: line {line}: not UTF-8 text ({err.reason})") from None
    except OSError as err:
        raise ValueError(f"{path}: cannot be read ({err.strerror or err})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML: {err}") from None
    if data is None:
        data = {}
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
    keys = [k.strip() for k in key.split(".")]
    if not all(keys):
        raise ValueError(f"--set {item!r}: the key {key.strip()!r} has an empty part; expected e.g. train.lr=1e-5")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ValueError(f"--set {'.'.join(keys)}: the value {raw!r} is not valid YAML ({problem})") from None
    return keys, value


def resolve(path: str | Path | None = None, overrides: list[str] = (), recipe: str | None = None) -> dict:
    """The merged configuration as a plain dict (before validation)."""
    data = load_yaml(path or DEFAULT_CONFIG)
    sets = [parse_override(item) for item in overrides]
    for keys, value in sets:
        if keys == ["recipe"]:
            recipe = value
    if recipe is None:
        recipe = data.get("recipe")
    if recipe is not None and not isinstance(recipe, str):
        raise ValueError(f"recipe: expected a recipe name or a YAML path, got {type(recipe).__name__} {recipe!r}")
    merged = data
    if recipe:
        try:
            rec = load_yaml(recipe_path(recipe))
        except (ValueError, FileNotFoundError) as err:
            if str(err).startswith("recipe "):
                raise
            cls = FileNotFoundError if isinstance(err, FileNotFoundError) else ValueError
            raise cls(f"recipe {recipe!r}: {err}") from None
        if "recipe" in rec:
            raise ValueError(f"recipe {recipe!r}: a recipe cannot name another recipe")
        merged = deep_merge(data, rec)
    merged["recipe"] = recipe
    return apply_overrides(merged, overrides)


def apply_overrides(data: dict, overrides: list[str] = ()) -> dict:
    """``data`` with every ``--set key=value`` applied (a dotted key reaches into sections)."""
    for keys, value in (parse_override(item) for item in overrides):
        node = data
        for i, k in enumerate(keys[:-1]):
            if node.get(k) is None:  # an unset optional mapping (model.lora, logging.wandb) or a new section
                node[k] = {}
            node = node[k]
            if not isinstance(node, dict):
                raise ValueError(f"--set {'.'.join(keys)}: {'.'.join(keys[:i + 1])!r} is not a section "
                                 f"(its value is {node!r}), so it has no key {keys[i + 1]!r}")
        node[keys[-1]] = value
    return data


def load_config(path: str | Path | None = None, overrides: list[str] = (), recipe: str | None = None) -> Config:
    cfg = _from_dict(Config, resolve(path, overrides, recipe), "")
    validate(cfg)
    return cfg


#: model.dtype values: the torch dtypes a policy is loaded in.
DTYPES = ("float32", "bfloat16", "float16")
#: Seeds are combined into engine seeds (about seed * 1e9), which must fit in 64 bits.
SEED_LIMIT = 2**32
#: A sanity bound on task difficulty values: beyond it the generators only hang or run out of memory.
MAX_TASK_PARAM = 10**6
_FLOAT_MAX = sys.float_info.max


def _whole(value, where: str, low: int | None = None, high: int | None = None) -> None:
    """``value`` must be an int (not a bool) in ``[low, high)``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{where}: expected an integer, got {type(value).__name__} {value!r}")
    if low is not None and value < low:
        raise ValueError(f"{where}: must be >= {low}, got {value}")
    if high is not None and value >= high:
        raise ValueError(f"{where}: must be < {high}, got {value}")


def _number(value, where: str, low: float | None = None, high: float | None = None,
            above: float | None = None) -> None:
    """``value`` must be a finite int or float (not a bool), ``>= low``, ``<= high``, ``> above``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{where}: expected a number, got {type(value).__name__} {value!r}")
    if value != value or value in (math.inf, -math.inf):
        raise ValueError(f"{where}: expected a finite number, got {value}")
    if abs(value) > _FLOAT_MAX:
        raise ValueError(f"{where}: {value} is too large for a float")
    if above is not None and not value > above:
        raise ValueError(f"{where}: must be > {above}, got {value}")
    if low is not None and value < low:
        raise ValueError(f"{where}: must be >= {low}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"{where}: must be <= {high}, got {value}")


def _check_tasks(tasks, where: str) -> None:
    """A task mix: built-in sources with numeric weights >= 0 and finite ``[low, high]`` ranges
    with low <= high, and sources of a kind (``kind:``, ``explorl.tasks.kinds``), built here so
    that a bad file, row, option or verifier is an error that names ``<where>.<name>``."""
    from explorl.tasks import SOURCES, TaskMix
    from explorl.tasks.kinds import make_task_source
    if not isinstance(tasks, dict) or not tasks:
        raise ValueError(f"{where}: at least one task source is needed, got {tasks!r}")
    sources, weights = {}, {}
    for name, opts in tasks.items():
        has_kind = isinstance(opts, dict) and "kind" in opts
        if not isinstance(name, str) or (name not in SOURCES and not has_kind):
            raise ValueError(f"{where}: unknown task source {name!r} (valid: {', '.join(sorted(SOURCES))}, "
                             f"or any name with a kind: jsonl, parquet, csv, hf_disk, ...)")
        entry = f"{where}.{name}"
        opts = {} if opts is None else opts
        if not isinstance(opts, dict):
            raise ValueError(f"{entry}: expected a mapping of options (weight, difficulty ranges), "
                             f"got {type(opts).__name__} {opts!r}")
        if "weight" in opts:
            _number(opts["weight"], f"{entry}.weight", low=0)
            weights[name] = opts["weight"]
        options = {key: value for key, value in opts.items() if key != "weight"}
        if not has_kind:
            _check_ranges(SOURCES[name], name, options, entry)
        try:
            sources[name] = make_task_source(name, options, entry)
        except (ValueError, FileNotFoundError) as err:
            message = str(err)
            raise ValueError(message if message.startswith(entry) else f"{entry}: {message}") from None
        except Exception as err:  # a user's source class failing in its own way
            raise ValueError(f"{entry}: building the source failed ({type(err).__name__}: {err})") from None
    try:
        TaskMix(sources, weights)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None


def _check_ranges(cls, name: str, ranges: dict, entry: str) -> None:
    """A built-in source's difficulty ranges: known parameters, finite ``[low, high]`` with low <= high."""
    for key, value in ranges.items():
        at = f"{entry}.{key}"
        if key not in cls.param_ranges:
            raise ValueError(f"{at}: unknown option of task source {name!r} "
                             f"(valid: weight, {', '.join(sorted(cls.param_ranges))})")
        if isinstance(value, (list, tuple)) and len(value) != 2:
            raise ValueError(f"{at}: expected a number or a [low, high] pair, got {value!r}")
        bounds = list(value) if isinstance(value, (list, tuple)) else [value]
        for bound in bounds:
            _number(bound, at, low=-MAX_TASK_PARAM, high=MAX_TASK_PARAM)
            if cls.integer_params and bound != int(bound):
                raise ValueError(f"{at}: task source {name!r} takes whole numbers, got {value!r}")
        if bounds[0] > bounds[-1]:
            raise ValueError(f"{at}: the range has low > high: {value!r}")


def _check_lora(lora: dict) -> None:
    """``model.lora``: known keys; r >= 1; alpha > 0; 0 <= dropout < 1; target_modules a list of
    module names, ``all-linear`` or null (peft's default for the architecture); peft installed."""
    from explorl.policy.lora import DEFAULTS
    for key in lora:
        if key not in DEFAULTS:
            raise ValueError(f"model.lora.{key}: unknown key (valid: {', '.join(DEFAULTS)})")
    if "r" in lora:
        _whole(lora["r"], "model.lora.r", 1)
    if "alpha" in lora:
        _number(lora["alpha"], "model.lora.alpha", above=0)
    if "dropout" in lora:
        _number(lora["dropout"], "model.lora.dropout", low=0)
        if lora["dropout"] >= 1:
            raise ValueError(f"model.lora.dropout: must be < 1, got {lora['dropout']}")
    targets = lora.get("target_modules")
    if targets is not None and targets != "all-linear" and (
            not isinstance(targets, list) or not targets
            or not all(isinstance(t, str) and t.strip() for t in targets)):
        raise ValueError(f"model.lora.target_modules: expected a non-empty list of module names (e.g. [q_proj, "
                         f"v_proj]), all-linear, or null for peft's default, got {targets!r}")
    try:
        import peft  # noqa: F401
    except ImportError:
        raise ValueError("model.lora: LoRA needs the peft package (pip install -e .[lora])") from None


def _check_testbed_tasks(cfg: Config) -> None:
    """With the testbed model, every task's prompts and answers must round-trip through its
    character tokenizer (whose alphabet covers the mixes' characters, ``explorl.tasks.alphabet``)
    and fit its context: checked here, before minutes of warm-up."""
    if cfg.model.path is not None:
        return
    from explorl.policy.tokenizer import testbed_tokenizer
    from explorl.tasks import TaskMix
    from explorl.tasks.encoding import check_encodable
    from explorl.policy.warmup import testbed_alphabet
    try:
        alphabet = testbed_alphabet(cfg)
    except ValueError as err:
        raise ValueError(f"model.tiny (the testbed's character tokenizer): {err}") from None
    from explorl.policy.prompts import PromptFormat
    prompt_format = PromptFormat.from_config(cfg.prompt, testbed_tokenizer(alphabet), "the testbed model")
    mixes = [("tasks", cfg.tasks)]
    if cfg.model.warmup.tasks is not None:
        mixes.append(("model.warmup.tasks", cfg.model.warmup.tasks))
    for where, tasks in mixes:
        try:
            check_encodable(TaskMix.from_config(tasks), testbed_tokenizer(alphabet), cfg.model.tiny.max_positions,
                            cfg.train.max_new_tokens, samples=16, limit_name="model.tiny.max_positions",
                            prompt_format=prompt_format)
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None


def _check_reference(cfg: Config) -> None:
    """``reference``: a known kind with valid parameters (``explorl.explore.reference``), written
    out in full (so config.yaml records the weights and where the policy starts); warm-start
    members only with the testbed model; saved-folder members with the same tensors (names,
    shapes) as each other and as ``model.path``."""
    from explorl.policy.model import weight_shapes
    from explorl.policy.reference import reference_component
    reference = reference_component(cfg)
    folders = []
    for i, member in enumerate(reference.members):
        if "warmup_seed" in member and cfg.model.path is not None:
            raise ValueError(f"reference.models[{i}]: a warm start ({{warmup_seed: ...}}) is the testbed model's; "
                             f"with model.path set, name saved model folders")
        if "path" in member:
            folders.append((f"reference.models[{i}]", member["path"]))
    if folders and cfg.model.path is not None:
        folders.insert(0, ("model.path", cfg.model.path))
    shapes = [(where, path, weight_shapes(path)) for where, path in folders]
    shapes = [s for s in shapes if s[2] is not None]
    for where, path, these in shapes[1:]:
        first_where, first_path, first = shapes[0]
        if these != first:
            differ = sorted(set(these.items()) ^ set(first.items()))[:3]
            raise ValueError(f"{where}: {path} does not have the architecture of {first_where} ({first_path}): "
                             f"a soup averages tensors of the same names and shapes (first differences: {differ})")
    cfg.reference = reference.spec()


def _check_vllm(m: ModelConfig) -> None:
    """Where ``model.backend: vllm`` can run: a CUDA device and the vLLM package."""
    import importlib.util
    if m.device == "cpu":
        raise ValueError("model.backend: vllm samples on a GPU; model.device: cpu cannot use it (use auto or cuda)")
    if importlib.util.find_spec("vllm") is None:
        raise ValueError("model.backend: vllm needs the vLLM package (pip install -e .[vllm], on Linux with a "
                         "CUDA GPU); use model.backend: auto on this machine")
    import torch
    if not torch.cuda.is_available():
        raise ValueError("model.backend: vllm samples on a GPU and no CUDA device is visible here; use "
                         "model.backend: auto on this machine")


def validate(cfg: Config) -> None:
    """Range and cross-field checks; every message names the key and says what is allowed."""
    from explorl.explore.objective.aggregate import MODES
    from explorl.policy.model import FAMILIES
    _whole(cfg.seed, "seed", 0, SEED_LIMIT)

    m = cfg.model
    if m.backend not in ("auto", "fast", "hf", "vllm"):
        raise ValueError(f"model.backend: {m.backend!r} is not one of auto, fast, hf, vllm")
    v = m.vllm
    _number(v.gpu_memory_utilization, "model.vllm.gpu_memory_utilization", above=0, high=1)
    if v.max_model_len is not None:
        _whole(v.max_model_len, "model.vllm.max_model_len", 1)
    if m.backend == "vllm":
        _check_vllm(m)
    if m.device not in ("cpu", "cuda", "auto"):
        raise ValueError(f"model.device: {m.device!r} is not one of cpu, cuda, auto")
    if m.cuda_graphs not in ("auto", True, False) or isinstance(m.cuda_graphs, (int, float)) \
            and not isinstance(m.cuda_graphs, bool):
        raise ValueError(f"model.cuda_graphs: expected auto, true or false, got {m.cuda_graphs!r}")
    if m.cuda_graphs is True and m.device == "cpu":
        raise ValueError("model.cuda_graphs: true replays decoding steps on a GPU; model.device: cpu cannot "
                         "(use auto or false)")
    if m.cuda_graphs is True and m.backend in ("hf", "vllm"):
        raise ValueError(f"model.cuda_graphs: true needs the built-in fast path (model.backend: auto or fast), "
                         f"not model.backend: {m.backend}")
    if m.dtype not in DTYPES:
        raise ValueError(f"model.dtype: {m.dtype!r} is not one of {', '.join(DTYPES)}")
    tiny = m.tiny
    if tiny.family not in FAMILIES:
        raise ValueError(f"model.tiny.family: {tiny.family!r} is not one of {', '.join(FAMILIES)}")
    for key in ("hidden_size", "layers", "heads", "kv_heads", "intermediate_size", "max_positions"):
        _whole(getattr(tiny, key), f"model.tiny.{key}", 1)
    if tiny.hidden_size % tiny.heads or (tiny.hidden_size // tiny.heads) % 2:
        raise ValueError(f"model.tiny.hidden_size ({tiny.hidden_size}) must be an even multiple of "
                         f"model.tiny.heads ({tiny.heads}): each head gets hidden_size / heads dimensions, "
                         f"which rotary position embeddings rotate in pairs")
    if tiny.heads % tiny.kv_heads:
        raise ValueError(f"model.tiny.heads ({tiny.heads}) must be a multiple of model.tiny.kv_heads "
                         f"({tiny.kv_heads}): query heads share key/value heads in equal groups")
    _whole(tiny.seed, "model.tiny.seed", 0, SEED_LIMIT)
    w = m.warmup
    _whole(w.steps, "model.warmup.steps", 1)
    _whole(w.batch_size, "model.warmup.batch_size", 1)
    _number(w.lr, "model.warmup.lr", above=0)
    if w.tasks is not None:
        _check_tasks(w.tasks, "model.warmup.tasks")
    if w.seed is not None:
        _whole(w.seed, "model.warmup.seed", 0, SEED_LIMIT)
    _whole(w.references_per_problem, "model.warmup.references_per_problem", 1)
    if w.batch_size % w.references_per_problem:
        raise ValueError(f"model.warmup.batch_size ({w.batch_size}) must be a multiple of "
                         f"model.warmup.references_per_problem ({w.references_per_problem})")
    if m.lora is not None:
        _check_lora(m.lora)

    t = cfg.train
    if t.parallel not in ("none", "ddp", "fsdp"):
        raise ValueError(f"train.parallel: {t.parallel!r} is not one of none, ddp, fsdp")
    if t.parallel == "fsdp" and m.lora is not None:
        raise ValueError("train.parallel: fsdp with model.lora is not supported (LoRA adapters are small): use ddp")
    if t.loss_agg_mode not in MODES:
        raise ValueError(f"train.loss_agg_mode: {t.loss_agg_mode!r} is not one of {', '.join(MODES)}")
    for key in ("steps", "problems_per_step", "rollouts_per_problem", "max_new_tokens", "ppo_epochs",
                "minibatches", "checkpoint_every", "max_nonfinite_steps"):
        _whole(getattr(t, key), f"train.{key}", 1)
    if t.max_tokens is not None:
        _whole(t.max_tokens, "train.max_tokens", 1)
    if t.micro_batch_size is not None:
        _whole(t.micro_batch_size, "train.micro_batch_size", 1)
    if t.rollout_batch_size is not None:
        _whole(t.rollout_batch_size, "train.rollout_batch_size", 1)
    _number(t.lr, "train.lr", above=0)
    _number(t.weight_decay, "train.weight_decay", low=0)
    _number(t.max_grad_norm, "train.max_grad_norm", above=0)
    if t.minibatches > t.problems_per_step:
        raise ValueError(f"train.minibatches ({t.minibatches}) cannot exceed train.problems_per_step "
                         f"({t.problems_per_step}): minibatches split whole groups")

    v = cfg.verify
    _number(v.timeout, "verify.timeout", above=0)
    _number(v.max_error_share, "verify.max_error_share", low=0, high=1)
    _whole(v.log_first, "verify.log_first", 0)

    e = cfg.eval
    _whole(e.problems_per_source, "eval.problems_per_source", 1)
    _whole(e.samples, "eval.samples", 1)
    if not isinstance(e.ks, list) or not e.ks:
        raise ValueError(f"eval.ks: expected a non-empty list of k for pass@k, e.g. [1, 16], got {e.ks!r}")
    for k in e.ks:
        _whole(k, "eval.ks", 1)
    if max(e.ks) > e.samples:
        raise ValueError(f"eval.ks: pass@{max(e.ks)} needs eval.samples >= {max(e.ks)}, got {e.samples}")
    _number(e.temperature, "eval.temperature", above=0)
    _whole(e.seed, "eval.seed", 0, SEED_LIMIT)
    if e.every_tokens is not None:
        _whole(e.every_tokens, "eval.every_tokens", 1)
    if e.every_samples is not None:
        _whole(e.every_samples, "eval.every_samples", 1)

    from explorl.policy.prompts import check_prompt_config
    check_prompt_config(cfg.prompt.template, cfg.prompt.system)
    _check_tasks(cfg.tasks, "tasks")
    _check_testbed_tasks(cfg)

    _check_reference(cfg)

    from explorl.tracker_options import check_config
    check_config(cfg.logging)  # logging.wandb / logging.mlflow: their keys, values and packages


# ---- from the command line -------------------------------------------------------------------
def add_config_args(parser) -> None:
    """The options every command that builds a configuration takes."""
    parser.add_argument("--config", default=None, help="YAML config (default: configs/testbed.yaml)")
    parser.add_argument("--recipe", default=None, help="recipe name in configs/recipes/ or a YAML path")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set train.lr=1e-5 (repeatable)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (overrides the config)")


def overrides_from_args(args) -> list[str]:
    """``--set`` items, plus ``--seed`` and ``--steps`` as the overrides they stand for."""
    overrides = list(args.overrides) + ([f"seed={args.seed}"] if args.seed is not None else [])
    if getattr(args, "steps", None) is not None:
        overrides.append(f"train.steps={args.steps}")
    return overrides


def config_from_args(args) -> Config:
    return load_config(args.config, overrides_from_args(args), args.recipe)
