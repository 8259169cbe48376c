"""``explorl bench overhead``: how much a recipe slows a training step against plain GRPO.

Methods that read hidden states (``repr_bonus`` on the frozen initial model,
``effective_rank`` on the policy) pay an extra forward pass per step; the target is at most
30% over GRPO on the testbed. Each recipe gets its own trainer on the same config and seed;
after one warm-up step each, the trainers take turns step by step (so load from other
processes hits all alike) and the median ``time/step`` (the wall clock of the whole step,
advantage shaping included) of each is compared with GRPO's.
"""
from __future__ import annotations

import statistics
import tempfile

from explorl.bench import machine_line, note, table

DEFAULT_RECIPES = ("repr_bonus", "effective_rank")
STEPS = 5


def run(args) -> int:
    from explorl.config import config_from_args
    from explorl.train.loop import Trainer

    machine = machine_line()
    recipes = ["grpo", *(args.recipes.split(",") if getattr(args, "recipes", None) else DEFAULT_RECIPES)]
    steps = args.steps or STEPS
    times = {r: [] for r in recipes}
    advantage = {r: [] for r in recipes}
    tok_s = {r: [] for r in recipes}
    with tempfile.TemporaryDirectory(prefix="explorl-overhead-") as tmp:
        trainers = {}
        for name in recipes:
            args.recipe = name
            trainers[name] = Trainer(config_from_args(args), f"{tmp}/{name}", progress=False, log=lambda *a, **k: None)
            trainers[name].train_step()  # warm-up
        note(f"bench overhead: {steps} timed steps per recipe, taking turns")
        for _ in range(steps):
            for name, trainer in trainers.items():
                m = trainer.train_step()
                times[name].append(m["time/step"])
                advantage[name].append(m["time/advantage"])
                tok_s[name].append(m["tokens/step"] / m["time/step"])
        for trainer in trainers.values():
            trainer.close()
    base = statistics.median(times["grpo"])
    rows, worst = [], 0.0
    for name in recipes:
        med = statistics.median(times[name])
        worst = max(worst, med / base - 1) if name != "grpo" else worst
        rows.append([name, f"{med * 1e3:.1f}", f"{statistics.median(advantage[name]) * 1e3:.1f}",
                     f"{statistics.median(tok_s[name]):.0f}", f"{med / base:.2f}x", f"{100 * (med / base - 1):+.0f}%"])
    print(machine)
    print(table(rows, ["recipe", "median ms/step", "advantage stage ms", "tokens/s", "vs grpo", "overhead"]))
    print("ms/step is the wall clock of the whole step (all stages); tokens/s: generated tokens per second of it")
    print(f"max_overhead_vs_grpo: {100 * worst:.1f}%")
    return 0
