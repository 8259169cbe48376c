"""``explorl compare``: recipes × seeds trained to the same budget of generated tokens.

The fair unit is generated response tokens, not steps: every run gets ``train.max_tokens =
--tokens`` and a step cap that never binds, so a method that spends more rollouts per step
takes fewer steps. Each run is a child process (``_child``) in ``OUT/runs/<recipe>/seed<k>``
that trains, evaluates before and after, and writes its own wall time and peak memory to
``run_info.json``. The study is resumable: finished runs are skipped, interrupted ones
continue from their last checkpoint, so rerunning the same command completes it.

Outputs: ``OUT/results.json`` (per run and per recipe mean / std / min / max over seeds),
``OUT/report.html`` (``explorl.bench.report``) and a leaderboard on the terminal.

The pass@1-vs-tokens curve is the training pass rate of each step (the fraction of that step's
rollouts that are correct: an on-policy proxy, measured on training problems at the training
temperature) placed at the tokens generated before the step; its area (trapezoid, normalised
by the token range) is ``auc_pass1_vs_tokens``. ``--eval-every-tokens E`` adds held-out
evaluations every E generated tokens, logged as ``heldout/…`` metrics in ``metrics.jsonl``,
and then ``auc_heldout_pass1_vs_tokens`` over start, those points and end.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from explorl.train.checkpoint import write_text_atomic

NEVER_BINDING_STEPS = 10**6
RESERVED_SETS = {
    "recipe": "choose recipes with --recipes",
    "seed": "seeds are 0..S-1, chosen with --seeds",
    "train.steps": "the budget is --tokens; the step cap is set so that it never binds",
    "train.max_tokens": "the budget is --tokens",
}
MAX_K = 64


# ---- the study -----------------------------------------------------------------------------
def run_compare(args) -> int:
    """Train every recipe × seed (or skip / resume it), then write results.json, report.html and
    print the leaderboard. Returns the exit code (1 when a run failed)."""
    specs = _check_args(args)
    out = Path(args.out)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    jobs = [(label, spec, seed) for label, spec in specs for seed in range(args.seeds)]
    failed = []
    print(f"compare: {len(specs)} recipe(s) x {args.seeds} seed(s), {args.tokens} generated tokens each, in {out}",
          flush=True)
    try:
        for label, spec, seed in jobs:
            _check_same_config(args, spec, seed, out / "runs" / label / f"seed{seed}")
        _warm_start(args, [(spec, seed) for label, spec, seed in jobs
                           if run_state(out / "runs" / label / f"seed{seed}") != "done"])
        for i, (label, spec, seed) in enumerate(jobs, 1):
            run_dir = out / "runs" / label / f"seed{seed}"
            head = f"[{i}/{len(jobs)}] {label:<{max(len(x) for x, _ in specs)}} seed {seed}"
            state = run_state(run_dir)
            if state == "done":
                print(f"{head}: skip (done) {_run_line(run_dir)}", flush=True)
                continue
            print(f"{head}: {'resume' if state == 'resume' else 'train'} ... ", end="", flush=True)
            code = _launch(args, spec, seed, run_dir, resume=state == "resume")
            if code != 0:
                failed.append(f"{label} seed {seed}")
                print(f"FAILED (exit {code}); log: {run_dir / 'train.log'}", flush=True)
                print(_tail(run_dir / "train.log"), file=sys.stderr, flush=True)
                continue
            print(_run_line(run_dir), flush=True)
            write_results(out, collect(out, specs, args))
    except KeyboardInterrupt:
        print("\nexplorl compare: interrupted; rerun the same command to continue "
              "(finished runs are skipped, the interrupted one resumes)", file=sys.stderr)
        return 130
    results = collect(out, specs, args)
    write_results(out, results)
    from explorl.bench.report import write_report
    report = write_report(out, results)
    print(f"\nleaderboard ({args.tokens} generated tokens per run, mean ± std over {args.seeds} seed(s)):")
    print(format_leaderboard(results))
    print(f"\nresults: {out / 'results.json'}\nreport:  {report}")
    if failed:
        print(f"explorl compare: {len(failed)} run(s) failed: {', '.join(failed)} "
              f"(see their train.log; rerun to retry)", file=sys.stderr)
        return 1
    return 0


def _check_args(args) -> list[tuple[str, str]]:
    """Validate everything that can be checked before any training; returns (label, spec) pairs."""
    from explorl.config import load_config, parse_override, recipe_path
    if args.seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {args.seeds}")
    if args.tokens < 1:
        raise ValueError(f"--tokens must be >= 1 (generated tokens per run), got {args.tokens}")
    if args.eval_every_tokens is not None and args.eval_every_tokens < 1:
        raise ValueError(f"--eval-every-tokens must be >= 1, got {args.eval_every_tokens}")
    for item in args.overrides:
        key = ".".join(parse_override(item)[0])
        if key in RESERVED_SETS:
            raise ValueError(f"--set {item!r}: {key} is set by compare ({RESERVED_SETS[key]})")
    names = [r.strip() for r in args.recipes.split(",") if r.strip()]
    if not names:
        raise ValueError("--recipes: give at least one recipe, e.g. --recipes grpo,clip_higher")
    specs, seen = [], {}
    for name in names:
        path = Path(name)
        if path.suffix in (".yaml", ".yml") and not path.exists():
            raise ValueError(f"recipe {name!r}: file not found")
        recipe_path(name)  # an unknown name raises, naming it and the known recipes
        label = path.stem if path.suffix in (".yaml", ".yml") else name
        if label in seen:
            raise ValueError(f"--recipes: {name!r} and {seen[label]!r} would share the run folder "
                             f"runs/{label}; rename one")
        seen[label] = name
        try:  # the whole config and its plug-ins, so a bad recipe fails now rather than mid-study
            from explorl.train.plugins import Plugins
            Plugins.from_config(load_config(args.config, _train_sets(args, 0), name))
        except ValueError as err:
            raise ValueError(f"recipe {name!r}: {err}") from None
        specs.append((label, name))
    return specs


def _warm_start(args, pending: list[tuple[str, int]]) -> None:
    """Warm-start the testbed model(s) the pending runs share, here and once, so that no run's
    wall time includes it (a recipe may change the model or tasks, hence one check per recipe)."""
    from explorl.config import load_config
    from explorl.train.warmup import warm_model_dir, warmup
    done = set()
    for spec, seed in pending:
        cfg = load_config(args.config, _train_sets(args, seed), spec)
        if cfg.model.path or warm_model_dir(cfg) in done:
            continue
        done.add(warm_model_dir(cfg))
        if not warm_model_dir(cfg).exists():
            print(f"warm start of the testbed model ({cfg.model.warmup.steps} steps, shared by the runs, "
                  f"not counted in their time) ... ", end="", flush=True)
            start = time.perf_counter()
            warmup(cfg, log=lambda *_: None)
            print(f"{time.perf_counter() - start:.1f} s", flush=True)


def _check_same_config(args, spec: str, seed: int, run_dir: Path) -> None:
    """A run folder that will be skipped or resumed must hold the configuration asked for now."""
    import yaml
    from explorl.config import load_config
    if run_state(run_dir) == "fresh" or not (run_dir / "config.yaml").exists():
        return
    want = _flat(json.loads(json.dumps(load_config(args.config, _train_sets(args, seed), spec).to_dict())))
    have = _flat(json.loads(json.dumps(yaml.safe_load((run_dir / "config.yaml").read_text()))))
    diff = sorted(k for k in want.keys() | have.keys() if want.get(k) != have.get(k))
    if diff:
        shown = ", ".join(f"{k}: {have.get(k)!r} there, {want.get(k)!r} now" for k in diff[:4])
        raise ValueError(f"{run_dir} was made with another configuration ({shown}"
                         f"{', ...' if len(diff) > 4 else ''}); use another --out or delete that folder")


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and k != "tasks":
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _train_sets(args, seed: int) -> list[str]:
    sets = [*args.overrides, f"seed={seed}", f"train.max_tokens={args.tokens}", f"train.steps={NEVER_BINDING_STEPS}"]
    return sets + ([f"eval.every_tokens={args.eval_every_tokens}"] if args.eval_every_tokens else [])


def run_state(run_dir: Path) -> str:
    """``done`` (eval end and run_info present), ``resume`` (a checkpoint) or ``fresh``."""
    if not run_dir.exists():
        return "fresh"
    if "end" in _read_json(run_dir / "eval.json") and (run_dir / "run_info.json").exists():
        return "done"
    if _has_checkpoint(run_dir):
        return "resume"
    return "fresh"


def _has_checkpoint(run_dir: Path) -> bool:
    pointer = run_dir / "ckpt" / "latest"
    return pointer.exists() and (run_dir / "ckpt" / pointer.read_text().strip()).exists()


def _launch(args, spec: str, seed: int, run_dir: Path, resume: bool) -> int:
    if not resume and run_dir.exists():  # a stale folder without a checkpoint: start over
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-c", "from explorl.bench.compare import _child; _child()",
           "--out", str(run_dir), "--recipe", spec]
    if args.config:
        cmd += ["--config", str(args.config)]
    for item in _train_sets(args, seed):
        cmd += ["--set", item]
    if resume:
        cmd.append("--resume")
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])  # the checkout holding this explorl package
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    with (run_dir / "train.log").open("a") as log:
        log.write(f"\n$ {' '.join(cmd)}\n")
        log.flush()
        return subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env).returncode


def _tail(path: Path, lines: int = 15) -> str:
    text = path.read_text().splitlines() if path.exists() else []
    return "\n".join("    " + line for line in text[-lines:])


def _run_line(run_dir: Path) -> str:
    info, ev = _read_json(run_dir / "run_info.json"), _read_json(run_dir / "eval.json")
    p1 = lambda part: ev.get(part, {}).get("pass@1", {}).get("all", float("nan"))  # noqa: E731
    return (f"{info.get('tokens', '?')} tokens, {info.get('steps', '?')} steps, "
            f"{info.get('wall_s', float('nan')):.1f} s, pass@1 {p1('start'):.3f} -> {p1('end'):.3f}")


# ---- the child process ---------------------------------------------------------------------
def _child(argv=None) -> None:
    """One run, in its own process: train (or resume) to the token budget, evaluate, then write
    ``run_info.json`` with this process's wall time and peak resident memory. Every attempt
    (interrupted ones included) appends to ``segments.jsonl``, so resumed runs sum their time."""
    import argparse
    start = time.perf_counter()
    from explorl.cli import _config_args, _load
    p = argparse.ArgumentParser(prog="explorl compare (run)")
    _config_args(p)
    p.add_argument("--out", required=True)
    p.add_argument("--resume", action="store_true")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    out, status = Path(args.out), "failed"
    try:
        from explorl.train.loop import Trainer
        trainer = Trainer(_load(args), out, resume=args.resume, progress=False)
        trainer.run()
        status = "done"
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        segment = {"status": status, "resumed": args.resume, "wall_s": round(time.perf_counter() - start, 3),
                   "peak_rss_mb": round(peak_rss_mb(), 1)}
        out.mkdir(parents=True, exist_ok=True)
        with (out / "segments.jsonl").open("a") as fh:
            fh.write(json.dumps(segment) + "\n")
    segments = [json.loads(line) for line in (out / "segments.jsonl").read_text().splitlines() if line]
    info = {"wall_s": round(sum(s["wall_s"] for s in segments), 3),
            "peak_rss_mb": max(s["peak_rss_mb"] for s in segments),
            "segments": len(segments), "steps": trainer.step, "tokens": trainer.tokens}
    write_text_atomic(out / "run_info.json", json.dumps(info, indent=2))
    print(f"run_info: {info}")


def peak_rss_mb() -> float:
    """This process's peak resident set size in MiB (``ru_maxrss`` is KiB on Linux, bytes on macOS)."""
    import resource
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024


# ---- results -------------------------------------------------------------------------------
def read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def training_curve(metrics: list[dict]) -> tuple[list[float], list[float]]:
    """(tokens generated before the step, that step's training pass rate) per step."""
    xs, ys = [], []
    for m in metrics:
        if "reward/pass_rate" in m and "tokens/total" in m:
            xs.append(float(m["tokens/total"] - m.get("tokens/step", 0)))
            ys.append(float(m["reward/pass_rate"]))
    return xs, ys


def heldout_curve(metrics: list[dict], ev: dict) -> tuple[list[float], list[float]]:
    """Held-out pass@1 ("all") at 0 tokens (start), every ``--eval-every-tokens`` and at the end."""
    points = {}
    if "start" in ev:
        points[0.0] = ev["start"]["pass@1"]["all"]
    for m in metrics:
        if "heldout/pass@1" in m:
            points[float(m["tokens/total"])] = m["heldout/pass@1"]
    if "end" in ev and metrics:
        points[float(metrics[-1]["tokens/total"])] = ev["end"]["pass@1"]["all"]
    xs = sorted(points)
    return xs, [points[x] for x in xs]


def auc(xs: list[float], ys: list[float]) -> float | None:
    """Area under y(x) by the trapezoid rule divided by the x range: the curve's mean height,
    in the units of y (1.0 = solved from the first token on)."""
    if not xs:
        return None
    if len(xs) == 1 or xs[-1] == xs[0]:
        return sum(ys) / len(ys)
    area = sum((x1 - x0) * (y0 + y1) / 2 for x0, x1, y0, y1 in zip(xs, xs[1:], ys, ys[1:]))
    return area / (xs[-1] - xs[0])


def run_summary(run_dir: Path, seed: int) -> dict | None:
    """One finished run's numbers, or None if it has not finished."""
    ev, info = _read_json(run_dir / "eval.json"), _read_json(run_dir / "run_info.json")
    if "end" not in ev or not info:
        return None
    metrics = read_metrics(run_dir)
    row = {"seed": seed, "dir": str(Path("runs") / run_dir.parent.name / run_dir.name),
           "tokens": metrics[-1]["tokens/total"] if metrics else info.get("tokens", 0),
           "steps": metrics[-1]["step"] if metrics else info.get("steps", 0),
           "rollouts": sum(m.get("rollouts", 0) for m in metrics),
           "wall_s": info.get("wall_s"), "train_s": round(sum(m.get("time/step", 0.0) for m in metrics), 3),
           "peak_rss_mb": info.get("peak_rss_mb"), "segments": info.get("segments", 1)}
    row["auc_pass1_vs_tokens"] = auc(*training_curve(metrics))
    hx, hy = heldout_curve(metrics, ev)
    row["auc_heldout_pass1_vs_tokens"] = auc(hx, hy) if len(hx) > 2 else None
    for part in ("start", "end"):
        for k in _ks(ev[part]):
            row[f"{part}_pass@{k}"] = ev[part][f"pass@{k}"]["all"]
        row[f"{part}_entropy_eval"] = ev[part].get("entropy", {}).get("all")
        row[f"{part}_distinct_correct"] = ev[part].get("distinct_correct", {}).get("all")
    ent = [m["entropy/rollout"] for m in metrics if "entropy/rollout" in m]
    row["entropy_rollout_last"] = ent[-1] if ent else None
    zero = [m["adv/frac_zero_std"] for m in metrics if "adv/frac_zero_std" in m]
    row["frac_zero_std_mean"] = sum(zero) / len(zero) if zero else None
    nonzero = [m["adv/frac_rollouts_nonzero"] for m in metrics if "adv/frac_rollouts_nonzero" in m]
    row["frac_rollouts_nonzero_mean"] = sum(nonzero) / len(nonzero) if nonzero else None
    row["pass@k"] = {part: {f"pass@{k}": ev[part][f"pass@{k}"] for k in _ks(ev[part])} for part in ("start", "end")}
    return row


def _ks(part: dict) -> list[int]:
    return sorted(int(key[5:]) for key in part if key.startswith("pass@") and int(key[5:]) <= MAX_K)


def spread(values: list[float]) -> dict:
    """Mean, sample standard deviation (0 for one seed), min and max."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return {"mean": mean, "std": std, "min": min(values), "max": max(values), "n": n}


def collect(out: Path, specs: list[tuple[str, str]], args) -> dict:
    """results.json's content from the run folders (finished runs only)."""
    runs, summary = {}, {}
    for label, spec in specs:
        rows = [r for seed in range(args.seeds)
                if (r := run_summary(out / "runs" / label / f"seed{seed}", seed)) is not None]
        runs[label] = {f"seed{r['seed']}": r for r in rows}
        if not rows:
            continue
        scalars = sorted({k for r in rows for k, v in r.items()
                          if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "seed"})
        agg = {"recipe": spec, "seeds": len(rows),
               "metrics": {k: spread([r[k] for r in rows if r.get(k) is not None]) for k in scalars
                           if any(r.get(k) is not None for r in rows)}}
        by_source = {}
        for part in ("start", "end"):
            for pk in rows[0]["pass@k"][part]:
                sources = rows[0]["pass@k"][part][pk]
                by_source.setdefault(part, {})[pk] = {
                    src: spread([r["pass@k"][part][pk][src] for r in rows if src in r["pass@k"][part].get(pk, {})])
                    for src in sources}
        agg["pass@k"] = by_source
        summary[label] = agg
    ranked = sorted(summary, key=lambda lb: (-summary[lb]["metrics"].get("end_pass@1", {}).get("mean", -1.0),
                                             -(summary[lb]["metrics"].get("auc_pass1_vs_tokens", {}).get("mean", 0))))
    return {
        "settings": {"recipes": {label: spec for label, spec in specs}, "seeds": args.seeds, "tokens": args.tokens,
                     "config": args.config, "overrides": list(args.overrides),
                     "eval_every_tokens": args.eval_every_tokens},
        "notes": {
            "budget": "every run stops once train.max_tokens = tokens response tokens were generated "
                      "(all generated tokens count, also of rollouts later dropped); steps never bind",
            "auc_pass1_vs_tokens": "area under the training pass rate (fraction of a step's rollouts that are "
                                   "correct; an on-policy proxy on training problems) against the tokens generated "
                                   "before that step, trapezoid rule, divided by the token range",
            "auc_heldout_pass1_vs_tokens": "same over held-out pass@1 at start, every eval_every_tokens and end "
                                           "(null without --eval-every-tokens)",
            "spread": "per recipe: mean, sample std, min and max over seeds",
        },
        "leaderboard": ranked,
        "summary": summary,
        "runs": runs,
    }


def write_results(out: Path, results: dict) -> None:
    write_text_atomic(out / "results.json", json.dumps(results, indent=2))


# ---- the leaderboard -----------------------------------------------------------------------
def leaderboard_rows(results: dict) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the leaderboard (recipes ranked by mean end pass@1 over all sources)."""
    summary = results["summary"]
    has16 = any("end_pass@16" in summary[lb]["metrics"] for lb in summary)
    has_ho = any("auc_heldout_pass1_vs_tokens" in summary[lb]["metrics"] for lb in summary)
    header = ["#", "recipe", "pass@1", "pass@1 before"] + (["pass@16"] if has16 else []) + \
             ["AUC train"] + (["AUC held-out"] if has_ho else []) + \
             ["entropy", "zero-std", "nonzero-adv", "tokens", "steps", "wall s", "peak MB", "seeds"]
    rows = []
    for rank, label in enumerate(results["leaderboard"], 1):
        m = summary[label]["metrics"]
        row = [str(rank), label, _pm(m, "end_pass@1"), _pm(m, "start_pass@1", std=False)]
        if has16:
            row.append(_pm(m, "end_pass@16"))
        row.append(_pm(m, "auc_pass1_vs_tokens"))
        if has_ho:
            row.append(_pm(m, "auc_heldout_pass1_vs_tokens"))
        row += [_pm(m, "end_entropy_eval", std=False), _pm(m, "frac_zero_std_mean", std=False),
                _pm(m, "frac_rollouts_nonzero_mean", std=False),
                _pm(m, "tokens", fmt="{:.0f}", std=False), _pm(m, "steps", fmt="{:.1f}", std=False),
                _pm(m, "wall_s", fmt="{:.1f}", std=False), _num(m.get("peak_rss_mb", {}).get("max"), "{:.0f}"),
                str(summary[label]["seeds"])]
        rows.append(row)
    return header, rows


def _pm(m: dict, key: str, fmt: str = "{:.3f}", std: bool = True) -> str:
    if key not in m:
        return "-"
    s = fmt.format(m[key]["mean"])
    return s + f" ± {fmt.format(m[key]['std'])}" if std and m[key]["n"] > 1 else s


def _num(value, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def format_leaderboard(results: dict) -> str:
    header, rows = leaderboard_rows(results)
    if not rows:
        return "(no finished runs)"
    cells = [header, *rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    line = lambda r: "  ".join(c.ljust(w) if i == 1 else c.rjust(w)  # noqa: E731
                               for i, (c, w) in enumerate(zip(r, widths))).rstrip()
    return "\n".join([line(header), "  ".join("-" * w for w in widths), *map(line, rows)])


# ---- files ---------------------------------------------------------------------------------
def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
