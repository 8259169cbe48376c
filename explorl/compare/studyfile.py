"""``explorl compare --study FILE``: recipes × regimes × seeds from one YAML file.

```yaml
tokens: 150000            # generated tokens per run (a regime may set its own)
seeds: 5                  # seeds per recipe ...
seeds_per_recipe: {grpo: 10, dynamic_sampling: 10}   # ... unless named here (GRPO, findings)
heldout_problems: 128     # declared: at least this many held-out problems per regime (default 128)
recipes: [grpo, dynamic_sampling, learnability, luffy, sft_then_grpo]
second_warm_start: {seed: 1, recipes: [dynamic_sampling]}   # these and GRPO again, another warm start
controls:                 # rows whose settings derive from another row's runs (explorl.compare.plan)
  grpo_steps_of_dynamic_sampling: {recipe: grpo, match: steps, of: dynamic_sampling}
  sft_tokens_of_luffy: {recipe: sft_then_grpo, match: teacher_tokens, of: luffy}
  uniform_pool_of_learnability: {recipe: grpo, match: pool, of: learnability}
regimes:
  default: {config: configs/testbed.yaml, k_max: 16}
  collapse: {config: configs/studies/collapse.yaml, tokens: 200000, k_max: 16}
  exploration-limited: {config: configs/studies/exploration_limited.yaml, k_max: 32, set: [eval.samples=64]}
```

Each regime is one comparison in ``OUT/<regime>/`` (its ``results.json``, ``report.html`` and
leaderboard), run in the order written; a regime may name its own ``recipes``, ``seeds``,
``seeds_per_recipe`` (merged over the file's), ``tokens``, ``set`` (overrides after the file's
top-level ``set``, both after ``--set``), ``k_max``, ``heldout_problems``,
``second_warm_start`` and ``controls`` (added to the file's controls whose ``of`` the regime
runs). ``k_max`` (the largest k of pass@k the regime reports) is declared before the runs:
compare refuses a regime whose evaluation has fewer than 2·k_max samples per problem or fewer
than ``heldout_problems`` held-out problems, and ``explorl board`` refuses its results likewise.
Everything is checked before the first run starts, and rerunning the same command continues
where it stopped (finished runs are skipped, interrupted ones resume, controls run once what
they derive from has finished), as for a plain ``compare``.
"""
from __future__ import annotations

import argparse
import copy
from pathlib import Path

DECLARED = {"seeds_per_recipe", "k_max", "heldout_problems", "second_warm_start", "controls"}
TOP_KEYS = {"tokens", "seeds", "recipes", "set", "regimes"} | DECLARED
REGIME_KEYS = {"config", "tokens", "seeds", "recipes", "set"} | DECLARED
HELDOUT_PROBLEMS = 128  # the board's standard, declared for every regime unless the file says otherwise


def load_study(path: str | Path) -> list[tuple[str, dict]]:
    """The regimes of a study file as ``(name, settings)``, every key checked."""
    from explorl.config import load_yaml
    data = load_yaml(path)
    unknown = set(data) - TOP_KEYS
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {', '.join(sorted(unknown))} (valid: {', '.join(sorted(TOP_KEYS))})")
    regimes = data.get("regimes")
    if not isinstance(regimes, dict) or not regimes:
        raise ValueError(f"{path}: 'regimes' must map each regime's name to its settings (at least one)")
    out = []
    for name, settings in regimes.items():
        where = f"{path}: regimes.{name}"
        if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
            raise ValueError(f"{path}: regime name {name!r} must be a plain folder name")
        settings = settings or {}
        if not isinstance(settings, dict):
            raise ValueError(f"{where}: expected a mapping, got {type(settings).__name__}")
        unknown = set(settings) - REGIME_KEYS
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {', '.join(sorted(unknown))} "
                             f"(valid: {', '.join(sorted(REGIME_KEYS))})")
        common = data.get("set") or []
        if not isinstance(common, list) or not all(isinstance(x, str) for x in common):
            raise ValueError(f"{path}: set must be a list of 'key=value' strings")
        merged = {"tokens": data.get("tokens"), "seeds": data.get("seeds", 1), "recipes": data.get("recipes"),
                  "config": None}
        merged.update({k: v for k, v in settings.items() if v is not None and k != "set"})
        merged["set"] = settings.get("set") or []
        for key, kind in (("tokens", int), ("seeds", int)):
            if not isinstance(merged[key], int) or isinstance(merged[key], bool) or merged[key] < 1:
                raise ValueError(f"{where}: {key} must be a positive integer (here or at the top), got {merged[key]!r}")
        recipes = merged["recipes"]
        if isinstance(recipes, str):
            recipes = [r.strip() for r in recipes.split(",")]
        if not isinstance(recipes, list) or not recipes or not all(isinstance(r, str) and r for r in recipes):
            raise ValueError(f"{where}: recipes must be a non-empty list of recipe names or paths")
        merged["recipes"] = recipes
        if not isinstance(merged["set"], list) or not all(isinstance(s, str) for s in merged["set"]):
            raise ValueError(f"{where}: set must be a list of 'key=value' strings")
        merged["set"] = [*common, *merged["set"]]  # the regime's own overrides win
        if merged["config"] is not None and not Path(merged["config"]).is_file():
            raise ValueError(f"{where}: config file not found: {merged['config']}")
        merged.update(_declared(path, where, data, settings, merged["recipes"]))
        out.append((name, merged))
    everywhere = {Path(r).stem if r.endswith((".yaml", ".yml")) else r for _, m in out for r in m["recipes"]}
    for key in ("seeds_per_recipe",):
        stray = sorted(set(data.get(key) or {}) - everywhere)
        if stray:
            raise ValueError(f"{path}: {key} names {', '.join(stray)}, which no regime runs")
    stray = sorted(c["of"] for c in (data.get("controls") or {}).values() if isinstance(c, dict)
                   and c.get("of") not in everywhere)
    if stray:
        raise ValueError(f"{path}: controls of {', '.join(stray)}, which no regime runs")
    return out


def _declared(path, where: str, top: dict, regime: dict, recipes: list[str]) -> dict:
    """The regime's seeds per recipe, k_max, held-out problems, second warm start and controls,
    its own over the file's, each checked."""
    def positive(value, key):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{where}: {key} must be a positive integer, got {value!r}")
        return value

    out = {}
    labels = {Path(r).stem if r.endswith((".yaml", ".yml")) else r for r in recipes}
    per_recipe = {}
    for source, label, own in ((top, path, False), (regime, where, True)):
        value = source.get("seeds_per_recipe") or {}
        if not isinstance(value, dict):
            raise ValueError(f"{label}: seeds_per_recipe must map recipe names to seed counts, got {value!r}")
        # the file's apply where their recipe runs; a regime's own must name its recipes (checked by compare)
        per_recipe.update({k: positive(v, f"seeds_per_recipe.{k}") for k, v in value.items() if own or k in labels})
    out["seeds_per_recipe"] = per_recipe
    k_max = regime.get("k_max", top.get("k_max"))
    out["k_max"] = None if k_max is None else positive(k_max, "k_max")
    out["heldout_problems"] = positive(regime.get("heldout_problems", top.get("heldout_problems", HELDOUT_PROBLEMS)),
                                       "heldout_problems")
    second = regime.get("second_warm_start", top.get("second_warm_start"))
    if second is not None:
        if (not isinstance(second, dict) or set(second) != {"seed", "recipes"} or not isinstance(second["recipes"], list)
                or not isinstance(second["seed"], int) or isinstance(second["seed"], bool) or second["seed"] < 0):
            raise ValueError(f"{where}: second_warm_start must be {{seed: N >= 0 (model.warmup.seed), recipes: [...]}}, "
                             f"got {second!r}")
        own = "second_warm_start" in regime
        second = {"seed": second["seed"], "recipes": [r for r in second["recipes"] if own or r in labels]}
    out["second_warm_start"] = second
    controls = {}
    for source, label, own in ((top, path, False), (regime, where, True)):
        value = source.get("controls") or {}
        if not isinstance(value, dict):
            raise ValueError(f"{label}: controls must map a label to {{recipe, match, of}}, got {value!r}")
        for name, c in value.items():
            if not isinstance(c, dict) or set(c) != {"recipe", "match", "of"}:
                raise ValueError(f"{label}: controls.{name} must be {{recipe: R, match: steps | teacher_tokens | pool, "
                                 f"of: RECIPE}}, got {c!r}")
            if own or c["of"] in labels:  # the file's controls apply where their recipe runs
                controls[name] = dict(c)
    out["controls"] = controls
    return out


def regime_args(args: argparse.Namespace, name: str, settings: dict) -> argparse.Namespace:
    """The arguments of a plain ``compare`` for one regime."""
    ns = copy.copy(args)
    ns.study, ns.config = None, settings["config"]
    ns.recipes = ",".join(settings["recipes"])
    ns.seeds, ns.tokens = settings["seeds"], settings["tokens"]
    ns.overrides = [*args.overrides, *settings["set"]]
    for key in DECLARED:
        setattr(ns, key, settings.get(key))
    ns.out = str(Path(args.out) / name)
    return ns


def run_study_file(args) -> int:
    """Check every regime, then run them in order; the exit code is the worst of theirs."""
    from explorl.compare.study import _check_args, run_compare
    for flag in ("recipes", "tokens", "config"):
        if getattr(args, flag, None) is not None:
            raise ValueError(f"--{flag} cannot be combined with --study (the study file sets it, per regime)")
    regimes = load_study(args.study)
    wanted = [r.strip() for r in args.regimes.split(",")] if getattr(args, "regimes", None) else None
    if wanted:
        missing = sorted(set(wanted) - {name for name, _ in regimes})
        if missing:
            raise ValueError(f"--regimes: {', '.join(missing)} not in {args.study} "
                             f"({', '.join(name for name, _ in regimes)})")
        regimes = [(n, s) for n, s in regimes if n in wanted]
    plans = [(name, regime_args(args, name, settings)) for name, settings in regimes]
    for name, ns in plans:  # every regime's recipes and config, before any run
        try:
            _check_args(ns)
        except ValueError as err:
            raise ValueError(f"regime {name!r}: {err}") from None
    worst = 0
    for i, (name, ns) in enumerate(plans, 1):
        print(f"\n== regime {i}/{len(plans)}: {name} ({ns.config or 'configs/testbed.yaml'}) ==", flush=True)
        code = run_compare(ns)
        worst = max(worst, code)
        if code == 130:
            return code
    return worst
