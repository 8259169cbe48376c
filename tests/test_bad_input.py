"""Bad input of every kind stops with a ValueError or FileNotFoundError that names the key, or
the file and line: never a traceback of another type, never a silently wrong run, never a run
folder left behind.

Explicit cases first, then property-based tests (Hypothesis, derandomized) over every config
key, every component parameter, task data files and the ``explorl train`` command; the valid
values at the edge of every range the fuzzing draws invalid values outside of are accepted. Each
generated example ticks the session's fuzz counter (printed as "fuzz cases tried: N").
"""
import contextlib
import dataclasses
import io
import json
import math
import operator
import string
import sys
import typing
from unittest import mock

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from explorl.cli import main
from explorl.config import Config, load_config
from explorl.explore.base import Advantage, Curriculum
from explorl.policy.tokenizer import build_char_tokenizer
from explorl.registry import REGISTRY, build, entries, register
from explorl.tasks import ALPHABET, SOURCES, JsonlSource, TaskMix, TaskSource, make_source
from explorl.tasks import files as jsonl_files
from explorl.tasks.encoding import check_encodable
from explorl.train.plugins import Plugins

FUZZ = settings(derandomize=True, database=None, deadline=None, max_examples=12,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


def raises_naming(fn, *needles, kind=(ValueError, FileNotFoundError)) -> str:
    """Call ``fn``; it must raise ``kind`` with every needle in the message. Returns the message."""
    with pytest.raises(kind) as info:
        fn()
    message = str(info.value)
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"
    return message


def literal(value) -> str:
    """``value`` as the YAML text ``--set`` reads back to the same value."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10**9, allow_unicode=True)
    text = text.removesuffix("...\n").strip()
    back = yaml.safe_load(text)
    same = back == value and type(back) is type(value) or (
        isinstance(value, float) and isinstance(back, float) and math.isnan(value) and math.isnan(back))
    assume(same)
    return text


# ---- the specification: what every config key accepts ------------------------------------------

def config_keys(cls=Config, prefix=""):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint, key = hints[f.name], prefix + f.name
        if dataclasses.is_dataclass(hint):
            yield key, "section"
            yield from config_keys(hint, key + ".")
        else:
            yield key, hint


CONFIG_KEYS = [(k, h) for k, h in config_keys() if h is not typing.Any]
#: the smallest valid value of every integer key (seeds are also below 2**32); the tiny model's
#: context (``max_positions``) must also hold a prompt and the response (``test_the_context_bound_is_exact``)
INT_MIN = {"seed": 0, "model.tiny.hidden_size": 2, "model.tiny.layers": 1, "model.tiny.heads": 1,
           "model.tiny.kv_heads": 1, "model.tiny.intermediate_size": 1, "model.tiny.max_positions": 1,
           "model.tiny.seed": 0, "model.warmup.steps": 1, "model.warmup.batch_size": 1,
           "train.steps": 1, "train.problems_per_step": 1, "train.rollouts_per_problem": 1,
           "train.max_new_tokens": 1, "train.ppo_epochs": 1, "train.minibatches": 1,
           "train.checkpoint_every": 1, "train.max_tokens": 1, "train.max_nonfinite_steps": 1,
           "verify.log_first": 0, "eval.problems_per_source": 1, "eval.samples": 1, "eval.seed": 0,
           "eval.every_tokens": 1, "train.micro_batch_size": 1, "train.rollout_batch_size": 1,
           "model.vllm.max_model_len": 1, "model.warmup.seed": 0, "eval.every_samples": 1,
           "model.warmup.references_per_problem": 1}
SEEDS = {"seed", "model.tiny.seed", "eval.seed", "model.warmup.seed"}
#: the keys the optional mappings accept
OPTION_KEYS = {"model.lora": {"r", "alpha", "dropout", "target_modules"},
               "logging.wandb": {"project", "entity", "name", "mode", "dir"},
               "logging.mlflow": {"tracking_uri", "experiment", "run_name"}}
#: float keys: (">", 0) means > 0, (">=", 0) means >= 0, ("in", (0, 1)) a closed interval, ("(]", (0, 1))
#: the interval without its low end; every float is also at most the largest float
FLOAT_RULE = {"model.warmup.lr": (">", 0), "train.lr": (">", 0), "train.weight_decay": (">=", 0),
              "train.max_grad_norm": (">", 0), "verify.timeout": (">", 0),
              "verify.max_error_share": ("in", (0, 1)), "eval.temperature": (">", 0),
              "model.vllm.gpu_memory_utilization": ("(]", (0, 1))}
CHOICES = {"model.tiny.family": {"qwen2", "llama"}, "model.backend": {"auto", "fast", "hf", "vllm"},
           "model.dtype": {"float32", "bfloat16", "float16"}, "model.device": {"auto", "cpu", "cuda"},
           "train.parallel": {"none", "ddp", "fsdp"},
           "train.loss_agg_mode": {"token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"}}


def _options(hint) -> set:
    args = typing.get_args(hint)
    return set(args) if args else {hint}


def _not_a_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return True
    return False


WORDS = st.text(string.ascii_letters + "_-", min_size=1, max_size=8).filter(_not_a_number)
PLAIN = {
    bool: st.booleans(),
    int: st.integers(-10**6, 10**6),
    float: st.floats(-1e6, 1e6).filter(lambda x: x != int(x)),
    str: WORDS,
    list: st.lists(st.integers(0, 9), max_size=3),
    dict: st.dictionaries(WORDS, st.integers(0, 9), min_size=1, max_size=2),
    type(None): st.none(),
}


def wrong_type(hint):
    """Values of a type the annotation does not allow (a bool is no int, an int no bool)."""
    allowed = _options(hint)
    kinds = [t for t in PLAIN if t not in allowed and not (t is int and float in allowed)
             and not (t is float and (float in allowed))]
    return st.one_of([PLAIN[t] for t in kinds])


def out_of_range(key, hint):
    """Values of the right type that the key does not accept (``None`` if every one is fine)."""
    options = _options(hint)
    if key in INT_MIN:
        values = st.integers(max_value=INT_MIN[key] - 1)
        return st.one_of(values, st.integers(2**32, 2**70)) if key in SEEDS else values
    if key in FLOAT_RULE:
        rule, bound = FLOAT_RULE[key]
        special = st.sampled_from([math.nan, math.inf, -math.inf])
        if rule == ">":
            return st.one_of(special, st.floats(max_value=bound, allow_infinity=False))
        if rule == ">=":
            return st.one_of(special, st.floats(max_value=bound, allow_infinity=False).filter(lambda x: x < bound))
        low, high = bound
        below = st.floats(max_value=low, allow_infinity=False)
        return st.one_of(special, below.filter(lambda x: x < low) if rule == "in" else below,
                         st.floats(min_value=high, allow_infinity=False).filter(lambda x: x > high))
    if key in CHOICES:
        return st.text(max_size=12).filter(lambda s: s not in CHOICES[key])
    if key == "eval.ks":
        return st.one_of(st.just([]), st.lists(st.integers(max_value=0), min_size=1, max_size=3),
                         st.lists(st.integers(65, 10**4), min_size=1, max_size=3),
                         st.lists(st.one_of(WORDS, st.booleans(), st.floats(0.5, 9.5).filter(lambda x: x != int(x))),
                                  min_size=1, max_size=3))
    if key in ("model.lora", "logging.wandb", "logging.mlflow"):  # mappings with known keys only
        return st.dictionaries(WORDS.filter(lambda w: w not in OPTION_KEYS[key]), st.integers(0, 9),
                               min_size=1, max_size=2)
    if key in ("tasks", "model.warmup.tasks"):
        return st.one_of(st.just({}), st.dictionaries(WORDS.filter(lambda w: w not in SOURCES), st.none(),
                                                      min_size=1, max_size=2))
    if hint == "section" or options & {bool, str} or key in ("advantage", "objective", "guidance", "teachers"):
        return None
    raise AssertionError(f"{key}: a numeric config key without a stated range in this test")


def bad_values(key, hint):
    if hint == "section":
        return st.one_of(PLAIN[bool], PLAIN[int], PLAIN[float], PLAIN[str], PLAIN[list])
    strategies = [wrong_type(hint)]
    rng = out_of_range(key, hint)
    if rng is not None:
        strategies.append(rng)
    return st.one_of(strategies)


def test_every_numeric_key_has_a_stated_range():
    for key, hint in CONFIG_KEYS:
        out_of_range(key, hint)  # raises for a numeric key missing from the tables above


#: what the smallest value of a key needs of the other keys to be valid
NEEDS_AT_THE_EDGE = {"model.tiny.hidden_size": ["model.tiny.heads=1", "model.tiny.kv_heads=1"],  # 1 head of 2 dims
                     "model.tiny.heads": ["model.tiny.kv_heads=1"],
                     "train.problems_per_step": ["train.minibatches=1"],
                     "eval.samples": ["eval.ks=[1]"]}


def edge_values():
    """``(key, value)``: the smallest and the largest value of every bounded numeric key, from
    the tables the fuzzing draws its invalid values below (or above) of."""
    for key, low in INT_MIN.items():
        if key != "model.tiny.max_positions":  # its edge is the tasks' (test_the_context_bound_is_exact)
            yield key, low
    for key in SEEDS:
        yield key, 2**32 - 1
    for key, (rule, bound) in FLOAT_RULE.items():
        low, high = (bound, sys.float_info.max) if rule in (">", ">=") else bound
        yield key, (math.ulp(low) if rule in (">", "(]") else float(low))
        yield key, float(high)


EDGES = list(edge_values())


@pytest.mark.parametrize("key, value", EDGES, ids=[f"{k}={v!r}" for k, v in EDGES])
def test_valid_values_at_the_edge_of_each_range_are_accepted(key, value):
    """The fuzzing above tries values just outside each range; the values at its edge must pass,
    or the tables (and the checks) could be stricter than they say and no test would notice."""
    cfg = load_config(overrides=[f"{key}={value!r}", *NEEDS_AT_THE_EDGE.get(key, [])])
    assert operator.attrgetter(key)(cfg) == value


def test_the_context_bound_is_exact():
    """Prompts of 4 tokens (1-digit sums, "3+4=") and the response must fit the tiny model's context."""
    fits = ["tasks={addition: {digits: [1, 1]}}", "model.warmup.tasks=null"]
    for positions, new_tokens in ((5, 1), (128, 124)):
        cfg = load_config(overrides=[*fits, f"model.tiny.max_positions={positions}",
                                     f"train.max_new_tokens={new_tokens}"])
        assert (cfg.model.tiny.max_positions, cfg.train.max_new_tokens) == (positions, new_tokens)
        for too_many in ([f"model.tiny.max_positions={positions - 1}", f"train.max_new_tokens={new_tokens}"],
                         [f"model.tiny.max_positions={positions}", f"train.max_new_tokens={new_tokens + 1}"]):
            raises_naming(lambda: load_config(overrides=[*fits, *too_many]), "model.tiny.max_positions",
                          f"the prompt is 4 tokens")


# ---- explicit cases ------------------------------------------------------------------------------

@pytest.mark.parametrize("override, needle", [
    ("eval.ks=[a]", "eval.ks: expected an integer, got str 'a'"),
    ("eval.ks=[]", "eval.ks: expected a non-empty list"),
    ("eval.ks=[0, 1]", "eval.ks: must be >= 1"),
    ("train.checkpoint_every=0", "train.checkpoint_every: must be >= 1, got 0"),
    ("train.steps=0", "train.steps: must be >= 1"),
    ("model.warmup.references_per_problem=3",
     "model.warmup.batch_size (64) must be a multiple of model.warmup.references_per_problem (3)"),
    ("train.steps=-3", "train.steps: must be >= 1"),
    ("train.problems_per_step=0", "train.problems_per_step: must be >= 1"),
    ("train.rollouts_per_problem=0", "train.rollouts_per_problem: must be >= 1"),
    ("train.max_new_tokens=0", "train.max_new_tokens: must be >= 1"),
    ("train.lr=nan", "train.lr: expected a number, got NaN"),
    ("train.lr=.nan", "train.lr: expected a number, got NaN"),
    ("train.lr=.inf", "train.lr: expected a finite number, got inf"),
    ("train.lr=-1e-5", "train.lr: must be > 0, got -1e-05"),
    (f"train.lr={10**400}", "train.lr: 1000"),
    (f"tasks={{addition: {{weight: {10**400}}}}}", "tasks.addition.weight: 1000"),
    ("train.weight_decay=-0.01", "train.weight_decay: must be >= 0"),
    ("train.max_grad_norm=0", "train.max_grad_norm: must be > 0"),
    ("train.max_grad_norm=.nan", "train.max_grad_norm: expected a number, got NaN"),
    ("eval.samples=0", "eval.samples: must be >= 1"),
    ("eval.temperature=0", "eval.temperature: must be > 0"),
    ("eval.temperature=-.inf", "eval.temperature: expected a finite number, got -inf"),
    ("eval.problems_per_source=0", "eval.problems_per_source: must be >= 1"),
    ("tasks={addition: {weight: -1}}", "tasks.addition.weight: must be >= 0, got -1"),
    ("tasks={addition: {weight: .nan}}", "tasks.addition.weight: expected a finite number, got nan"),
    ("tasks={addition: {digits: [3, 1]}}", "tasks.addition.digits: the range has low > high"),
    ("tasks={addition: {digits: [1, .nan]}}", "tasks.addition.digits: expected a finite number, got nan"),
    ("tasks={addition: {digits: [1, two]}}", "tasks.addition.digits: expected a number, got str"),
    ("tasks={addition: {digits: [1, 2, 3]}}", "tasks.addition.digits: expected a number or a [low, high] pair"),
    ("tasks={addition: {digits: 1.5}}", "tasks.addition.digits: task source 'addition' takes whole numbers"),
    ("tasks={addition: {digitz: 2}}", "tasks.addition.digitz: unknown option of task source 'addition'"),
    ("tasks={algebra: {}}", "tasks: unknown task source 'algebra'"),
    ("tasks={addition: {weight: 0}}", "tasks: at least one task source needs a positive weight"),
    ("tasks={addition: 3}", "tasks.addition: expected a mapping of options"),
    ("model.warmup.tasks={addition: {digits: [2, 1]}}", "model.warmup.tasks.addition.digits: the range has low > high"),
    ("train.steps=many", "train.steps: expected int, got str 'many'"),
    ("train.steps=true", "train.steps: expected int, got bool True"),
    ("train.steps=2.5", "train.steps: expected int, got float 2.5"),
    ("train.lr=fast", "train.lr: expected float, got str 'fast'"),
    ("train.lr=[1, 2]", "train.lr: expected float, got list"),
    ("train.deterministic=1", "train.deterministic: expected bool, got int 1"),
    ("verify.timeout=0", "verify.timeout: must be > 0"),
    ("verify.timeout=-1", "verify.timeout: must be > 0"),
    ("verify.max_error_share=1.5", "verify.max_error_share: must be <= 1"),
    ("verify.max_error_share=-0.1", "verify.max_error_share: must be >= 0"),
    ("verify.max_error_share=.nan", "verify.max_error_share: expected a number, got NaN"),
    ("train.max_nonfinite_steps=0", "train.max_nonfinite_steps: must be >= 1"),
    ("model.dtype=float64", "model.dtype: 'float64' is not one of float32, bfloat16, float16"),
    ("model.dtype=3", "model.dtype: expected str"),
    ("model.tiny.heads=3", "model.tiny.heads (3)"),
    ("model.tiny.kv_heads=3", "model.tiny.kv_heads (3)"),
    ("model.tiny.family=gpt", "model.tiny.family: 'gpt' is not one of"),
    ("model.warmup.steps=0", "model.warmup.steps: must be >= 1"),
    ("seed=-1", "seed: must be >= 0"),
    ("seed=4294967296", "seed: must be < 4294967296"),
    ("train=3", "train: expected a mapping, got int 3"),
    ("train=0", "train: expected a mapping, got int 0"),
    ("train=[]", "train: expected a mapping, got list"),
    ("model.tiny=x", "model.tiny: expected a mapping, got str"),
    ("train.lr.value=1", "--set train.lr.value: 'train.lr' is not a section"),
    ("seed.value=1", "--set seed.value: 'seed' is not a section"),
    ("curriculum.gamma=0.1", "--set curriculum.gamma: 'curriculum' is not a section"),
    ("train.lr=[1", "--set train.lr: the value '[1' is not valid YAML"),
    ("train..lr=1", "has an empty part"),
    ("train.lr", "expected key=value"),
    ("recipe=3", "recipe: expected a recipe name or a YAML path, got int 3"),
    ("recipe=nosuch", "recipe 'nosuch' not found"),
    ("recipe=.", "recipe '.': .: is a directory"),
    ("advantage=grpo", "advantage: expected list, got str"),
    ("recipe=false", "recipe: expected a recipe name or a YAML path, got bool False"),
    ("train.max_new_tokens=200", "train.max_new_tokens=200"),
    ("tasks={sorting: {length: [130, 130]}}", "model.tiny.max_positions"),
])
def test_bad_config_values_are_named(override, needle):
    raises_naming(lambda: load_config(overrides=[override]), needle)


def test_config_file_that_is_a_directory_or_not_text(tmp_path):
    raises_naming(lambda: load_config(tmp_path), f"{tmp_path}: is a directory, not a YAML config file")
    raises_naming(lambda: load_config(tmp_path / "nope.yaml"), "config file not found", kind=FileNotFoundError)
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"train:\n  lr: 0.1\n  steps: \xff\n")
    raises_naming(lambda: load_config(bad), f"{bad}: line 3: not UTF-8")
    bad.write_text("- 1\n- 2\n")
    raises_naming(lambda: load_config(bad), "the top level must be a mapping")


@pytest.mark.parametrize("override, needle", [
    ("curriculum=nonesuch", "unknown curriculum component 'nonesuch'"),
    ("curriculum={name: [uniform]}", "curriculum component name must be a string"),
    ("curriculum=[uniform]", "curriculum: expected a component name or a mapping"),
    ("budget={n: 4}", "budget: expected a component name or a mapping with a 'name' key"),
    ("advantage=[grpo, nonesuch]", "advantage[1]: unknown advantage component 'nonesuch'"),
    ("objective=[{name: ppo_clip, clip_ratio_hgh: 0.3}]", "objective[0].clip_ratio_hgh: unknown parameter"),
    ("objective=[{name: ppo_clip, clip_ratio_high: high}]", "objective[0].clip_ratio_high: expected float"),
    ("objective=[{name: ppo_clip, clip_ratio_high: .nan}]", "objective[0].clip_ratio_high: expected a number, got NaN"),
    ("objective=[{name: ppo_clip, clip_ratio_high: true}]", "objective[0].clip_ratio_high: expected float, got bool"),
    ("advantage=[{name: passk, k: 2.0}]", "advantage[0].k: expected int, got float"),
    ("advantage=[{name: passk, k: -1}]", "advantage[0]: advantage passk: k must be >= 1, got -1"),
    ("decoding={name: constant, temperature: .inf}", "decoding.temperature: expected a finite number, got inf"),
    ("advantage=[{name: grpo, scale_by_std: 1}]", "advantage[0].scale_by_std: expected bool, got int"),
    ("objective=[kl]", "exactly one policy-loss term"),
    ("advantage=[grpo, passk]", "exactly one estimator"),
    ("advantage=[]", "exactly one estimator"),
])
def test_bad_components_are_named(override, needle):
    cfg = load_config(overrides=[override])
    raises_naming(lambda: Plugins.from_config(cfg), needle)


@pytest.mark.parametrize("recipe", ["grpo", "passk", "dr_grpo"])
def test_one_rollout_per_problem_with_a_group_relative_estimator_is_refused(recipe):
    cfg = load_config(overrides=["train.rollouts_per_problem=1"], recipe=recipe)
    message = raises_naming(lambda: Plugins.from_config(cfg), "train.rollouts_per_problem=1",
                            "needs at least 2 rollouts per problem")
    assert "every advantage is 0" in message
    assert Plugins.from_config(load_config(overrides=["train.rollouts_per_problem=2"], recipe=recipe))


@pytest.mark.parametrize("budget", ["{name: fixed, n: 1}", "{name: broad, n: 1}",
                                    "{name: knapsack, min_n: 1, key: params}"])
def test_a_budget_that_gives_a_problem_one_rollout_is_refused_with_a_group_relative_estimator(budget):
    cfg = load_config(overrides=[f"budget={budget}"])
    raises_naming(lambda: Plugins.from_config(cfg), "gives some problems 1 rollout(s)", "needs at least 2")


def test_min_group_size_is_read_from_the_estimator_not_its_name():
    @register("advantage", "test_needs_three")
    class NeedsThree(Advantage):
        kind = "estimator"
        min_group_size = 3

    try:
        cfg = load_config(overrides=["advantage=[test_needs_three]", "train.rollouts_per_problem=2"])
        raises_naming(lambda: Plugins.from_config(cfg), "'test_needs_three' needs at least 3 rollouts")
        assert Plugins.from_config(load_config(overrides=["advantage=[test_needs_three]"]))
    finally:
        REGISTRY["advantage"].pop("test_needs_three")


def test_unknown_level_is_a_value_error_naming_the_valid_ones(capsys):
    raises_naming(lambda: entries("foo"), "unknown level 'foo'", "curriculum, budget, decoding")
    assert main(["list", "--level", "foo"]) == 2
    assert "explorl list: error: unknown level 'foo' (valid levels: curriculum" in capsys.readouterr().err
    assert main(["list", "--level", "budget"]) == 0


def test_unreadable_type_hints_are_an_error_naming_the_plugin():
    @register("curriculum", "test_broken_hints")
    class BrokenHints(Curriculum):
        def __init__(self, window: "NoSuchType" = 3):  # noqa: F821 (the bug under test)
            self.window = window

    try:
        for spec in ("test_broken_hints", {"name": "test_broken_hints", "window": "x"}):
            message = raises_naming(lambda: build("curriculum", spec), "component 'test_broken_hints'",
                                    "type hints of its constructor cannot be read", "NoSuchType")
            assert "NameError" in message
    finally:
        REGISTRY["curriculum"].pop("test_broken_hints")


# ---- property-based: every config key ------------------------------------------------------------

@pytest.mark.parametrize("key, hint", CONFIG_KEYS, ids=[k for k, _ in CONFIG_KEYS])
@FUZZ
@given(data=st.data())
def test_fuzz_every_config_key(key, hint, data, fuzz_cases):
    value = data.draw(bad_values(key, hint), label="value")
    override = f"{key}={literal(value)}"
    fuzz_cases.tick()
    raises_naming(lambda: load_config(overrides=[override]), key)


SCALAR_KEYS = [k for k, h in CONFIG_KEYS if h != "section" and not _options(h) & {dict}]


@settings(FUZZ, max_examples=60)
@given(key=st.sampled_from(SCALAR_KEYS), sub=WORDS, value=st.one_of(PLAIN[int], PLAIN[str]))
def test_fuzz_set_inside_a_non_section(key, sub, value, fuzz_cases):
    fuzz_cases.tick()
    raises_naming(lambda: load_config(overrides=[f"{key}.{sub}={literal(value)}"]), key)


@settings(FUZZ, max_examples=60)
@given(value=st.one_of(PLAIN[bool], PLAIN[int], PLAIN[float], PLAIN[list], PLAIN[dict], WORDS,
                       st.fixed_dictionaries({"kind": st.sampled_from(["soup", "initial"])}, optional={
                           "models": st.one_of(PLAIN[list], st.lists(WORDS, max_size=2)),
                           "weights": st.lists(st.floats(-2, 2), max_size=3),
                           "policy_init": WORDS}).filter(lambda d: d != {"kind": "initial"})))
def test_fuzz_the_reference_section(value, fuzz_cases):
    """``reference``: anything but a valid ``{kind: ...}`` section is refused naming the key."""
    assume(value != "initial")
    fuzz_cases.tick()
    raises_naming(lambda: load_config(overrides=[f"reference={literal(value)}"]), "reference")


# ---- property-based: every component parameter ---------------------------------------------------

LEVELS = ("curriculum", "budget", "decoding", "rollout", "advantage", "objective")
PARAMS = [(e.level, e.name, key, hint) for e in entries() if e.level in LEVELS
          for key, hint in typing.get_type_hints(e.cls.__init__).items()
          if key != "return" and hint is not typing.Any]


def spec_override(level: str, spec) -> str:
    return f"{level}={literal([spec] if level in ('advantage', 'objective') else spec)}"


@st.composite
def bad_components(draw):
    kind = draw(st.sampled_from(["name", "param", "type"]))
    if kind == "name":
        level = draw(st.sampled_from(LEVELS))
        name = draw(WORDS.filter(lambda n: n not in REGISTRY[level]))
        return level, name
    if kind == "param":
        entry = draw(st.sampled_from([e for e in entries() if e.level in LEVELS]))
        param = draw(WORDS.filter(lambda p: p not in entry.parameters() and p != "name"))
        return entry.level, {"name": entry.name, param: draw(PLAIN[int])}
    level, name, key, hint = draw(st.sampled_from(PARAMS))
    return level, {"name": name, key: draw(wrong_type(hint))}


@settings(FUZZ, max_examples=150)
@given(case=bad_components())
def test_fuzz_component_specs(case, fuzz_cases):
    level, spec = case
    override = spec_override(level, spec)
    fuzz_cases.tick()
    cfg = load_config(overrides=[override])
    raises_naming(lambda: Plugins.from_config(cfg), level)


# ---- the CLI: exit code 2, the key in the message, no run folder ---------------------------------

@st.composite
def bad_overrides(draw):
    """``(override, what the message must name)``."""
    kind = draw(st.sampled_from(["key", "component", "group"]))
    if kind == "key":
        key, hint = draw(st.sampled_from(CONFIG_KEYS))
        return f"{key}={literal(draw(bad_values(key, hint)))}", key
    if kind == "component":
        level, spec = draw(bad_components())
        return spec_override(level, spec), level
    return "train.rollouts_per_problem=1", "train.rollouts_per_problem"


def run_cli(argv) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    return code, err.getvalue()


@settings(FUZZ, max_examples=80)
@given(case=bad_overrides())
def test_fuzz_cli_train_refuses_bad_values_without_a_run_folder(case, fuzz_cases, tmp_path_factory):
    override, needle = case
    fuzz_cases.tick()
    out = tmp_path_factory.mktemp("cli") / "run"
    code, err = run_cli(["train", "--out", str(out), "--quiet", "--set", override])
    assert code == 2, err
    assert err.startswith("explorl train: error: ") and needle in err, err
    assert not out.exists()


def test_cli_train_refuses_prompts_too_long_for_a_saved_model_before_the_run_folder(tmp_path):
    from explorl.policy.model import build_tiny
    model, tokenizer = build_tiny("qwen2", ALPHABET, 16, 1, 2, 1, 32, 16, seed=0)
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    out = tmp_path / "run"
    code, err = run_cli(["train", "--out", str(out), "--quiet", "--set", f"model.path={tmp_path / 'model'}",
                         "--set", "tasks={sorting: {length: [8, 8]}}", "--set", "train.max_new_tokens=4"])
    assert code == 2, err
    assert "task source 'sorting'" in err and "more than the model's context of 16 positions" in err, err
    assert not out.exists()


# ---- task data files -----------------------------------------------------------------------------

PROMPT = st.text(ALPHABET.replace(" ", ""), min_size=1, max_size=12)


def row_line(prompt: str, answer: str) -> bytes:
    return json.dumps({"prompt": prompt, "answer": answer}).encode() + b"\n"


@st.composite
def bad_lines(draw):
    """One defective line (bytes, without its newline) and a word its error message must hold."""
    kind = draw(st.sampled_from(["json", "missing", "value", "utf8", "huge", "constant", "surrogate", "array"]))
    prompt, answer = draw(PROMPT), draw(PROMPT)
    if kind == "json":
        good = row_line(prompt, answer)[:-1]
        cut = draw(st.integers(1, len(good) - 1))
        return good[:cut], "invalid JSON"
    if kind == "missing":
        row = draw(st.sampled_from([{"prompt": prompt}, {"answer": answer}, {}, {"q": prompt, "a": answer}]))
        return json.dumps(row).encode(), "missing key"
    if kind == "value":
        bad = draw(st.sampled_from([None, True, False, [], [1], {}, {"x": 1}, "", "   "]))
        field = draw(st.sampled_from(["prompt", "answer"]))
        row = {"prompt": prompt, "answer": answer, field: bad}
        return json.dumps(row).encode(), field
    if kind == "utf8":
        good = row_line(prompt, answer)[:-1]
        at = draw(st.integers(0, len(good)))
        junk = draw(st.sampled_from([b"\xff", b"\xc3(", b"\x80", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80"]))
        return good[:at] + junk + good[at:], "not UTF-8"
    if kind == "huge":
        return row_line("9" * draw(st.integers(300, 600)), answer)[:-1], "longer than"
    if kind == "constant":
        const = draw(st.sampled_from(["NaN", "Infinity", "-Infinity"]))
        return f'{{"prompt": "{prompt}", "answer": {const}}}'.encode(), "not a JSON number"
    if kind == "surrogate":
        return f'{{"prompt": "{prompt}\\ud800", "answer": "{answer}"}}'.encode(), "surrogate"
    return json.dumps([prompt, answer]).encode(), "expected a JSON object"


@settings(FUZZ, max_examples=150)
@given(before=st.lists(st.tuples(PROMPT, PROMPT), max_size=5), blanks=st.integers(0, 2),
       bad=bad_lines(), after=st.lists(st.tuples(PROMPT, PROMPT), max_size=3))
def test_fuzz_jsonl_rows_name_file_and_line(before, blanks, bad, after, fuzz_cases, tmp_path_factory):
    line, needle = bad
    fuzz_cases.tick()
    path = tmp_path_factory.mktemp("jsonl") / "data.jsonl"
    body = b"".join(row_line(p, a) for p, a in before) + b"\n" * blanks + line + b"\n"
    path.write_bytes(body + b"".join(row_line(p, a) for p, a in after))
    lineno = len(before) + blanks + 1
    with mock.patch.object(jsonl_files, "MAX_ROW_BYTES", 256):
        raises_naming(lambda: JsonlSource(path), f"{path}: line {lineno}: ", needle)


@settings(FUZZ, max_examples=30)
@given(lines=st.lists(st.sampled_from([b"", b" ", b"\t", b"\r", b"  \t "]), max_size=6))
def test_fuzz_jsonl_without_rows(lines, fuzz_cases, tmp_path_factory):
    fuzz_cases.tick()
    path = tmp_path_factory.mktemp("jsonl") / "empty.jsonl"
    path.write_bytes(b"\n".join(lines))
    raises_naming(lambda: JsonlSource(path), f"{path}: the file has no rows")


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    """The testbed tokenizer as built, and as ``AutoTokenizer`` reloads it from a saved model."""
    from transformers import AutoTokenizer

    from explorl.policy.model import build_tiny
    model, built = build_tiny("qwen2", ALPHABET, 16, 1, 2, 1, 32, 64, seed=0)
    folder = tmp_path_factory.mktemp("saved")
    model.save_pretrained(folder)
    built.save_pretrained(folder)
    return {"built": built, "reloaded": AutoTokenizer.from_pretrained(folder)}


FOREIGN = st.characters(codec="utf-8").filter(lambda c: c not in ALPHABET and c.strip())


@settings(FUZZ, max_examples=80)
@given(rows=st.lists(st.tuples(PROMPT, PROMPT), min_size=1, max_size=5), data=st.data(),
       char=FOREIGN, which=st.sampled_from(["built", "reloaded"]), field=st.sampled_from(["prompt", "answer"]))
def test_fuzz_characters_the_tokenizer_cannot_encode(rows, data, char, which, field, fuzz_cases,
                                                     tokenizers, tmp_path_factory):
    index = data.draw(st.integers(0, len(rows) - 1), label="row")
    prompt, answer = rows[index]
    at = data.draw(st.integers(0, len(prompt if field == "prompt" else answer)), label="at")
    if field == "prompt":
        rows[index] = (prompt[:at] + char + prompt[at:], answer)
    else:
        rows[index] = (prompt, answer[:at] + char + answer[at:])
    path = tmp_path_factory.mktemp("jsonl") / "foreign.jsonl"
    path.write_bytes(b"".join(row_line(p, a) for p, a in rows))
    src = JsonlSource(path)
    fuzz_cases.tick()
    message = raises_naming(lambda: check_encodable(TaskMix({src.name: src}), tokenizers[which], 64, 8),
                            f"{path}:{index + 1}", repr(char))
    assert ("the prompt" if field == "prompt" else "the reference answer") in message


@settings(FUZZ, max_examples=40)
@given(rows=st.lists(st.tuples(PROMPT, PROMPT), min_size=1, max_size=4), data=st.data(),
       length=st.integers(21, 80))
def test_fuzz_prompts_longer_than_the_context(rows, data, length, fuzz_cases, tokenizers, tmp_path_factory):
    index = data.draw(st.integers(0, len(rows) - 1), label="row")
    rows[index] = (data.draw(st.text(ALPHABET, min_size=length, max_size=length).filter(str.strip)),
                   rows[index][1])
    path = tmp_path_factory.mktemp("jsonl") / "long.jsonl"
    path.write_bytes(b"".join(row_line(p, a) for p, a in rows))
    src = JsonlSource(path)
    fuzz_cases.tick()
    raises_naming(lambda: check_encodable(TaskMix({src.name: src}), tokenizers["built"], 32, 12),
                  f"{path}:{index + 1}", f"the prompt is {length} tokens",
                  f"that is {length + 12}, more than the model's context of 32")
    check_encodable(TaskMix({src.name: src}), tokenizers["built"], None, 12)  # no limit: only length failed


# ---- generated sources and the tokenizer ---------------------------------------------------------

class _Accented(TaskSource):
    name = "accented"
    param_ranges = {"n": (1, 3)}

    def generate(self, rng, params):
        return ("café=" if rng.random() < 0.5 else "cafe="), "1"

    def score(self, problem, completion):
        return float(completion.strip() == problem.answer)


def test_generated_source_is_named_with_the_problem_id(tokenizers):
    mix = TaskMix({"accented": _Accented()})
    message = raises_naming(lambda: check_encodable(mix, tokenizers["reloaded"], None, 12, samples=8),
                            "task source 'accented': problem accented/",
                            "'é' (U+00E9 LATIN SMALL LETTER E WITH ACUTE)")
    assert "the prompt has characters the tokenizer cannot encode" in message
    long_mix = TaskMix({"addition": make_source("addition", digits=[30, 30])})
    raises_naming(lambda: check_encodable(long_mix, tokenizers["built"], 64, 12, samples=4),
                  "task source 'addition': problem addition/digits30/", "more than the model's context of 64")
    check_encodable(TaskMix.from_config(Config().tasks), tokenizers["reloaded"], 128, 12)


def test_generator_failures_are_named():
    class Broken(_Accented):
        name = "broken"

        def generate(self, rng, params):
            raise ZeroDivisionError("no problems today")

    raises_naming(lambda: check_encodable(TaskMix({"broken": Broken()}), build_char_tokenizer(ALPHABET), None, 4),
                  "task source 'broken': generating the problem of seed", "ZeroDivisionError: no problems today")


@pytest.mark.parametrize("which", ["built", "reloaded"])
def test_char_tokenizer_round_trips_its_alphabet_with_the_same_ids(tokenizers, which):
    tok = tokenizers[which]
    ids = tok(ALPHABET, add_special_tokens=False)["input_ids"]
    assert ids == list(range(4, 4 + len(ALPHABET)))  # the ids of the alphabet's order, as before
    for ch in ALPHABET:
        assert tok.decode(tok(ch, add_special_tokens=False)["input_ids"], skip_special_tokens=True) == ch
    text = "rev:a b.c=?! 12"
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"], skip_special_tokens=True) == text
    assert len(tok) == 4 + len(ALPHABET)


def test_char_tokenizer_refuses_characters_it_cannot_hold_as_one_token():
    raises_naming(lambda: build_char_tokenizer("abcé"), "only ASCII characters", "'é'")


def test_jsonl_real_size_limit_names_the_line(tmp_path):
    path = tmp_path / "big.jsonl"
    path.write_bytes(row_line("1+1=", "2") + row_line("9" * (jsonl_files.MAX_ROW_BYTES + 10), "1"))
    raises_naming(lambda: JsonlSource(path),
                  f"{path}: line 2: the row is longer than {jsonl_files.MAX_ROW_BYTES} bytes")
