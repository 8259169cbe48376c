"""``explorl compare --study FILE``: recipes × regimes × seeds from one YAML file.

```yaml
tokens: 150000            # generated tokens per run (a regime may set its own)
seeds: 3
recipes: [grpo, clip_higher, configs/recipes/stacks/dump_knapsack_clip_cov.yaml]
regimes:
  default: {config: configs/testbed.yaml}
  collapse: {config: configs/studies/collapse.yaml, tokens: 200000}
  exploration-limited: {config: configs/studies/exploration_limited.yaml, set: [eval.samples=256]}
```

Each regime is one comparison in ``OUT/<regime>/`` (its ``results.json``, ``report.html`` and
leaderboard), run in the order written; a regime may name its own ``recipes``, ``seeds``,
``tokens`` and ``set`` (overrides after the file's top-level ``set``, both after ``--set``). Everything is checked before the first
run starts, and rerunning the same command continues where it stopped (finished runs are
skipped, interrupted ones resume), as for a plain ``compare``.
"""
from __future__ import annotations

import argparse
import copy
from pathlib import Path

TOP_KEYS = {"tokens", "seeds", "recipes", "set", "regimes"}
REGIME_KEYS = {"config", "tokens", "seeds", "recipes", "set"}


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
        out.append((name, merged))
    return out


def regime_args(args: argparse.Namespace, name: str, settings: dict) -> argparse.Namespace:
    """The arguments of a plain ``compare`` for one regime."""
    ns = copy.copy(args)
    ns.study, ns.config = None, settings["config"]
    ns.recipes = ",".join(settings["recipes"])
    ns.seeds, ns.tokens = settings["seeds"], settings["tokens"]
    ns.overrides = [*args.overrides, *settings["set"]]
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
