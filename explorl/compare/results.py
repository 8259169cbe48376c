"""A comparison's results: per-run summaries, curves and their areas, spreads over seeds,
``results.json`` and the leaderboard."""
from __future__ import annotations

import json
import math
from pathlib import Path

from explorl.compare.child import HEARTBEAT_S
from explorl.atomic import write_text_atomic
from explorl.compare.files import CorruptFile, _read_json, _warn

MAX_K = 256  # pass@k kept in results.json up to this k (the exploration-limited regime samples 256)


# ---- results -------------------------------------------------------------------------------
def read_metrics(run_dir: Path) -> list[dict]:
    """The run's per-step records. A line that does not parse (a run killed mid-write can leave a
    partial last line) is skipped with a warning naming the file and line number."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    records = []
    for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            _warn(f"{path}:{n}: skipped a line that does not parse ({err})", once=True)
    return records


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
    """One finished run's numbers, or None if it has not finished (``CorruptFile`` if one of its
    files does not parse)."""
    ev, info = _read_json(run_dir / "eval.json"), _read_json(run_dir / "run_info.json")
    if "end" not in ev or not info:
        return None
    metrics = read_metrics(run_dir)
    row = {"seed": seed, "dir": str(Path("runs") / run_dir.parent.name / run_dir.name),
           "tokens": metrics[-1]["tokens/total"] if metrics else info.get("tokens", 0),
           "steps": metrics[-1]["step"] if metrics else info.get("steps", 0),
           "rollouts": sum(m.get("rollouts", 0) for m in metrics),
           "wall_s": info.get("wall_s"), "train_s": round(sum(m.get("time/step", 0.0) for m in metrics), 3),
           "peak_rss_mb": info.get("peak_rss_mb"), "segments": info.get("segments", 1),
           # tokens that are not the policy's: teacher and reference rows, and what a model teacher generated
           "teacher_tokens": sum(m.get("tokens/teacher", 0) for m in metrics),
           "teacher_generated_tokens": sum(m.get("tokens/teacher_generated", 0) for m in metrics)}
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
    row["engagement"] = engagement(run_dir, metrics)
    return row


def _ks(part: dict) -> list[int]:
    return sorted(int(key[5:]) for key in part if key.startswith("pass@") and int(key[5:]) <= MAX_K)


def spread(values: list[float]) -> dict:
    """Mean, sample standard deviation (0 for one seed), min and max."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return {"mean": mean, "std": std, "min": min(values), "max": max(values), "n": n}


_ENGAGEMENT: dict = {}


def engagement(run_dir: Path, metrics: list[dict]) -> dict | None:
    """Whether each mechanism of the run acted (``explorl.explore.acted.check_run``), from its
    ``config.yaml`` and metrics; None without a config. Kept per run folder for as long as its
    two files are unchanged (compare collects every finished run after each run)."""
    import yaml

    from explorl.config import Config, _from_dict
    from explorl.explore.acted import check_run
    path = run_dir / "config.yaml"
    if not path.exists():
        return None
    files = [path, run_dir / "metrics.jsonl"]
    key = (str(run_dir), tuple((f.stat().st_size, f.stat().st_mtime_ns) if f.exists() else None for f in files))
    if key not in _ENGAGEMENT:
        cfg = _from_dict(Config, yaml.safe_load(path.read_text()), "")
        _ENGAGEMENT[key] = check_run(mechanism_components(cfg), metrics)
    return _ENGAGEMENT[key]


def mechanism_components(cfg) -> list:
    """Every component of a configuration that may declare a mechanism (teachers are not built:
    a model teacher would load a model)."""
    from explorl.policy.reference import reference_component
    from explorl.registry import build
    from explorl.train.plugins import _as_list
    return [build("curriculum", cfg.curriculum), build("budget", cfg.budget), build("decoding", cfg.decoding),
            *(build("advantage", s) for s in _as_list(cfg.advantage)),
            *(build("objective", s) for s in _as_list(cfg.objective)),
            *(build("guidance", s) for s in _as_list(cfg.guidance or [])), reference_component(cfg)]


def collect(out: Path, entries, args) -> dict:
    """results.json's content from the run folders (finished runs only); ``entries``: the rows
    (``explorl.compare.plan.Entry``, or ``(label, spec)`` pairs run with seeds 0..args.seeds−1)."""
    from explorl.compare.plan import as_entries
    entries = as_entries(entries, args.seeds)
    runs, summary, left_out = {}, {}, {}
    for entry in entries:
        label, spec = entry.label, entry.spec
        rows = []
        for seed in entry.seeds:
            run_dir = out / "runs" / label / f"seed{seed}"
            try:
                row = run_summary(run_dir, seed)
            except CorruptFile as err:
                left_out[str(run_dir.relative_to(out))] = str(err)
                _warn(f"{err}; the run is left out of results.json (rerun compare to redo it)", once=True)
                continue
            if row is not None:
                rows.append(row)
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
    declared = {key: getattr(args, key, None) for key in ("k_max", "heldout_problems")}
    return {
        "settings": {"recipes": {e.label: e.spec for e in entries}, "seeds": max(len(e.seeds) for e in entries),
                     "tokens": args.tokens, "config": args.config, "overrides": list(args.overrides),
                     "eval_every_tokens": args.eval_every_tokens,
                     "entries": {e.label: e.describe() for e in entries},
                     **{k: v for k, v in declared.items() if v is not None}},
        "notes": {
            "budget": "every run stops once train.max_tokens = tokens response tokens were generated by the policy "
                      "(all of them count, also of rollouts later dropped); steps never bind",
            "teacher_tokens": "tokens of teacher and reference rows the run trained on (not the policy's, not in "
                              "the budget); teacher_generated_tokens: tokens a model teacher generated",
            "auc_pass1_vs_tokens": "area under the training pass rate (fraction of a step's rollouts that are "
                                   "correct; an on-policy proxy on training problems) against the tokens generated "
                                   "before that step, trapezoid rule, divided by the token range",
            "auc_heldout_pass1_vs_tokens": "same over held-out pass@1 at start, every eval_every_tokens and end "
                                           "(null without --eval-every-tokens)",
            "spread": "per recipe: mean, sample std, min and max over seeds",
            "engagement": "per run: whether each mechanism of the recipe acted, by the criteria its component "
                          "declares (explorl.explore.acted) on the run's metrics",
            "per_problem": "each run's eval.json holds per held-out problem the correct samples out of n (start, "
                           "end, after a phase before RL); metrics.jsonl the same along the way (heldout/correct)",
            "wall_s": "per run: the sum over its segments (one child process each: the first attempt and every "
                      "resume) of the time from the child's start to its end, model loading, evaluations and "
                      "checkpoints included; a segment killed outright counts up to its last heartbeat "
                      f"(every {HEARTBEAT_S:g} s); the shared warm start is not counted",
            "peak_rss_mb": "per run: the largest peak resident memory of its segments",
        },
        **({"left_out": left_out} if left_out else {}),
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
    has_teacher = any(summary[lb]["metrics"].get("teacher_tokens", {}).get("max", 0) for lb in summary)
    header = ["#", "recipe", "pass@1", "pass@1 before"] + (["pass@16"] if has16 else []) + \
             ["AUC train"] + (["AUC held-out"] if has_ho else []) + \
             ["entropy", "zero-std", "nonzero-adv", "tokens"] + (["teacher tokens"] if has_teacher else []) + \
             ["steps", "wall s", "peak MB", "seeds"]
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
                _pm(m, "tokens", fmt="{:.0f}", std=False)]
        if has_teacher:
            row.append(_pm(m, "teacher_tokens", fmt="{:.0f}", std=False))
        row += [_pm(m, "steps", fmt="{:.1f}", std=False),
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
