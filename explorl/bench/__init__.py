"""Benchmarks behind ``explorl bench``: each prints a table and, as its last line, one number.

- ``throughput``: rollout tokens/s of the ``RolloutEngine`` against ``model.generate`` on the
  same batch, and one training step split by stage (``explorl.bench.throughput``);
- ``overhead``: step time of recipes (by default the hidden-state methods) against GRPO
  (``explorl.bench.overhead``);
- ``trl``: time per training step of explorl against TRL's ``GRPOTrainer`` with matched
  settings (``explorl.bench.trl_compare``; needs ``pip install -e .[bench]``);
- ``scale``: step time of 1 vs 2 data-parallel processes on the CPU, and on a GPU the
  engine's rollout tokens/s on a Qwen2.5-0.5B-shaped model (``explorl.bench.scale``).
"""
from __future__ import annotations

import random
import sys

BENCHES = ("throughput", "trl", "overhead", "scale")


def run_bench(args) -> int:
    """Run the benchmark named by ``args.which``; returns the process exit code."""
    if args.which == "throughput":
        from explorl.bench.throughput import run
    elif args.which == "trl":
        from explorl.bench.trl_compare import run
    elif args.which == "overhead":
        from explorl.bench.overhead import run
    elif args.which == "scale":
        from explorl.bench.scale import run
    else:
        raise ValueError(f"unknown benchmark {args.which!r} (valid: {', '.join(BENCHES)})")
    return run(args)


def note(*parts) -> None:
    """Progress messages go to stderr, so stdout holds only the tables and the final number."""
    print(*parts, file=sys.stderr, flush=True)


def _cpu_busy(seconds: float = 0.5) -> float | None:
    """Fraction of all cores busy over ``seconds`` while this process sleeps (Linux), else ``None``."""
    import time

    def sample():
        with open("/proc/stat") as fh:
            values = [int(v) for v in fh.readline().split()[1:]]
        return values[3] + values[4], sum(values)  # idle + iowait, total
    try:
        idle0, total0 = sample()
        time.sleep(seconds)
        idle1, total1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    return 1.0 - (idle1 - idle0) / max(total1 - total0, 1)


def machine_line() -> str:
    """Threads, cores and how busy the CPU is without us; flags a busy machine, where timings
    mostly measure contention (call it before starting any work)."""
    import os

    import torch
    line = f"torch threads: {torch.get_num_threads()}, cores: {os.cpu_count()}"
    busy = _cpu_busy()
    if busy is None:
        return line
    line += f", CPU busy with other processes before the run: {100 * busy:.0f}%"
    if busy > 0.25:
        line += "\nwarning: other processes are using the CPU, so timings are noisy"
        if torch.get_num_threads() > 1:
            line += ("; with several torch threads each parallel op can stall on a descheduled thread, which "
                     "swamps the compute being compared (rerun on an idle machine, or with OMP_NUM_THREADS=1)")
    return line


def prompt_text(problem) -> str:
    """The text the policy is conditioned on (what ``RolloutEngine`` encodes)."""
    return getattr(problem, "context", "") + problem.prompt


def fixed_problems(tasks, n: int, seed: int) -> list:
    """``n`` training problems from ``tasks`` with pairwise distinct prompts (a prompt maps back
    to one problem), drawn deterministically from ``seed``."""
    rng, seen, out = random.Random(seed), set(), []
    for _ in range(100 * n):
        p = tasks.sample(rng)
        if prompt_text(p) not in seen:
            seen.add(prompt_text(p))
            out.append(p)
            if len(out) == n:
                return out
    raise ValueError(f"the task mix yields fewer than {n} distinct prompts; lower train.problems_per_step")


def table(rows: list[list], header: list[str], align: str | None = None) -> str:
    """A plain text table; ``align`` has one ``l``/``r`` per column (default: first left, rest right)."""
    align = align or "l" + "r" * (len(header) - 1)
    cells = [[str(c) for c in r] for r in [header, *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]

    def line(r):
        return "  ".join(c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(r, widths, align)).rstrip()

    return "\n".join([line(cells[0]), "  ".join("-" * w for w in widths)] + [line(r) for r in cells[1:]])
