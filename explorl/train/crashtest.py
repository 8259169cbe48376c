"""``explorl crashtest``: kill a training run again and again, and prove nothing was lost.

One run of the given config is trained twice, each in fresh processes of ``explorl train``:
``reference/`` uninterrupted, and ``killed/`` under repeated SIGKILLs, each followed by
``explorl train --resume``. Kills alternate between random moments (a delay drawn uniformly
over the reference run's wall time, so they land in start-up, sampling, updates, evaluations
and writes alike) and named crash points inside the writes themselves (``explorl.train.faults``:
halfway through a checkpoint, between a checkpoint and its pointer, between an evaluation and
``eval.json``, right after a metrics line). When both runs are done, their final weights,
``metrics.jsonl`` (time fields aside) and ``eval.json`` must be identical.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from explorl.train.faults import CRASH_POINTS

VOLATILE = ("time/", "perf/")


def _train_cmd(out: Path, args: list[str]) -> list[str]:
    return [sys.executable, "-m", "explorl.cli", "train", "--out", str(out), "--quiet", *args]


def _env(crash_at: str | None = None) -> dict:
    env = dict(os.environ)
    env.pop("EXPLORL_CRASH_AT", None)
    if crash_at:
        env["EXPLORL_CRASH_AT"] = crash_at
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    return env


def _launch(out: Path, args: list[str], crash_at: str | None, kill_at: tuple | None) -> tuple[int, float | None]:
    """Run one ``explorl train --resume``; return its exit code (-9 when it was killed) and the
    seconds it took to log its first step (``None`` if it logged none).

    ``kill_at`` is ``("time", seconds)`` (SIGKILL after that long, or as soon as the process
    logs a step, whichever comes first: a kill in start-up or resume) or ``("step", n, seconds)``
    (SIGKILL ``seconds`` after metrics line ``n`` appears)."""
    with open(out.parent / f"{out.name}.log", "a") as fh:
        fh.write(f"\n--- launch (crash point {crash_at}, kill {kill_at}) ---\n")
        fh.flush()
        proc = subprocess.Popen(_train_cmd(out, ["--resume", *args]), stdout=fh, stderr=subprocess.STDOUT,
                                env=_env(crash_at))
        start, first_step, begun = time.perf_counter(), None, _last_step(out)
        while proc.poll() is None:
            if first_step is None and _last_step(out) > begun:
                first_step = time.perf_counter() - start
            if kill_at is not None and (
                    (kill_at[0] == "time" and (time.perf_counter() - start >= kill_at[1] or first_step is not None))
                    or (kill_at[0] == "step" and _last_step(out) >= kill_at[1])):
                if kill_at[0] == "step":
                    time.sleep(kill_at[2])
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.002)
        proc.wait()
    return proc.returncode, first_step


def _last_step(out: Path) -> int:
    path = out / "metrics.jsonl"
    if not path.exists():
        return 0
    steps = []
    for line in path.read_text().splitlines():
        try:
            steps.append(json.loads(line)["step"])
        except (ValueError, KeyError):
            pass
    return max(steps, default=0)


def _plan(rng: random.Random, counts: dict, out: Path, total_steps: int, kills_left: int,
          startup_s: float) -> tuple[str | None, tuple | None]:
    """The next launch's kill: ``(crash point, None)`` or ``(None, kill_at)``. The one-time moments
    (the first config write, the start and end evaluations) are each hit once; the rest rotate
    between a crash point inside a checkpoint or metrics write, a kill at a random point of the
    remaining steps (a random delay after a step's metrics line: mid-step, mid-update, mid-write),
    and a kill at a random time during start-up or resume."""
    done = _last_step(out)
    if not (out / "config.yaml").exists() and "config.written" not in counts:
        return "config.written", None
    if not (out / "eval.json").exists() and "eval.start_computed" not in counts:
        return "eval.start_computed", None
    if done >= total_steps:
        if "eval.end_computed" not in counts:
            return "eval.end_computed", None
        return None, ("time", rng.uniform(0.1, 2 * startup_s))
    mode = sum(counts.values()) % 3
    if mode == 0:
        inner = [p for p in CRASH_POINTS if p.startswith(("checkpoint.", "metrics."))]
        return f"{rng.choice(inner)}:{rng.randint(1, 2)}", None
    if mode == 1:
        # a third of the kills are of this kind: spread them over the steps still to run
        stride = max(1, 6 * (total_steps - done) // max(1, kills_left))
        return None, ("step", min(total_steps, done + rng.randint(1, stride)), rng.uniform(0.0, 0.05))
    return None, ("time", rng.uniform(0.1, startup_s))


def _read_eval(run: Path) -> dict:
    try:
        return json.loads((run / "eval.json").read_text())
    except (FileNotFoundError, ValueError):
        return {}


def final_state(run: Path) -> dict:
    """Weights of the newest checkpoint, metrics without time fields, and eval.json."""
    from safetensors.torch import load_file

    from explorl.train import checkpoint
    latest = checkpoint.latest(run, warn=None)
    if latest is None:
        raise FileNotFoundError(f"{run}: no complete checkpoint")
    weights = {}
    for f in sorted((latest / "model").glob("*.safetensors")):
        weights.update(load_file(str(f)))
    metrics = [{k: v for k, v in json.loads(line).items() if not k.startswith(VOLATILE)}
               for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {"checkpoint": latest.name, "weights": weights, "metrics": metrics,
            "eval": json.loads((run / "eval.json").read_text())}


def compare_states(a: dict, b: dict) -> list[str]:
    """What differs between two final states (empty when identical)."""
    import torch
    problems = []
    if a["checkpoint"] != b["checkpoint"]:
        problems.append(f"newest checkpoint {a['checkpoint']} vs {b['checkpoint']}")
    if a["weights"].keys() != b["weights"].keys():
        problems.append("weights have different tensors")
    else:
        diff = [k for k in a["weights"] if not torch.equal(a["weights"][k], b["weights"][k])]
        if diff:
            problems.append(f"weights differ in {len(diff)} tensors, e.g. {diff[0]}")
    if a["metrics"] != b["metrics"]:
        n = next((i for i, (x, y) in enumerate(zip(a["metrics"], b["metrics"])) if x != y),
                 min(len(a["metrics"]), len(b["metrics"])))
        problems.append(f"metrics.jsonl differs from line {n + 1} ({len(a['metrics'])} vs {len(b['metrics'])} lines)")
    if a["eval"] != b["eval"]:
        problems.append("eval.json differs")
    return problems


def crashtest(out: Path, train_args: list[str], total_steps: int, kills: int = 20, seed: int = 0,
              max_launches: int | None = None, log=print) -> dict:
    """Run the reference and the killed run in ``out``; return a report (raises nothing on a
    mismatch: ``report["identical"]`` says it)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    reference = out / "reference"
    if (reference / "config.yaml").exists() and "end" not in _read_eval(reference):
        shutil.rmtree(reference)  # an unfinished reference (this harness was stopped): start it again
    log("crashtest: training the reference run, uninterrupted")
    code, startup_s = _launch(reference, train_args, None, None)
    if code != 0:
        raise RuntimeError(f"crashtest: the reference run failed (exit {code}); see {reference}.log")
    startup_s = startup_s or 1.0  # seconds from launch to the first step: the window of start-up kills
    killed = out / "killed"
    max_launches = max_launches or 5 * kills + 10
    counts: dict[str, int] = {}
    launches = 0
    while True:
        if launches >= max_launches:
            raise RuntimeError(f"crashtest: {launches} launches without finishing ({sum(counts.values())} kills)")
        n_kills = sum(counts.values())
        if n_kills >= kills:  # the last resume runs to the end untouched
            launches += 1
            code, _ = _launch(killed, train_args, None, None)
            if code != 0 or "end" not in _read_eval(killed):
                raise RuntimeError(f"crashtest: the final resume failed (exit {code}); see {killed}.log")
            break
        point, kill_at = _plan(rng, counts, killed, total_steps, kills - n_kills, startup_s)
        launches += 1
        code, _ = _launch(killed, train_args, point, kill_at)
        if code == -signal.SIGKILL:
            key = point.split(":")[0] if point else f"random {kill_at[0]}"
            counts[key] = counts.get(key, 0) + 1
            log(f"crashtest: kill {sum(counts.values())}/{kills} at {key} (step {_last_step(killed)} logged)")
        elif code != 0:
            raise RuntimeError(f"crashtest: a resumed run failed (exit {code}); see {killed}.log")
    problems = compare_states(final_state(reference), final_state(killed))
    report = {"kills": sum(counts.values()), "by_point": counts, "launches": launches,
              "identical": not problems, "differences": problems, "steps": total_steps}
    (out / "crashtest.json").write_text(json.dumps(report, indent=2))
    return report


def run_crashtest(args) -> int:
    from explorl.config import config_from_args, overrides_from_args
    cfg = config_from_args(args)  # checks the configuration before any process starts
    train_args = []
    if args.config:
        train_args += ["--config", str(args.config)]
    if args.recipe:
        train_args += ["--recipe", args.recipe]
    for item in overrides_from_args(args):
        train_args += ["--set", item]
    report = crashtest(Path(args.out), train_args, cfg.train.steps, kills=args.kills, seed=args.kill_seed)
    by_point = ", ".join(f"{k} {v}" for k, v in sorted(report["by_point"].items()))
    print(f"kills survived: {report['kills']} ({by_point}) over {report['launches']} launches of one "
          f"{report['steps']}-step run")
    if report["identical"]:
        print("end state identical to the uninterrupted run: weights, metrics.jsonl (time fields aside), eval.json")
        return 0
    print("DIFFERENT from the uninterrupted run: " + "; ".join(report["differences"]))
    return 1
