"""``explorl board``: the leaderboard of a study (``compare --study``), one table per regime,
every recipe against GRPO **paired by seed**.

For a metric m and a recipe, Δ_s = m(recipe, seed s) − m(grpo, seed s) over the seeds both
have; the table gives the mean Δ and its 95% confidence interval, mean ± t(0.975, n−1)·sd/√n,
and marks with ``*`` the differences whose interval excludes 0 (with 3 seeds the interval is
wide: t = 4.30). Columns:

- pass@1 and pass@k_max (the largest k evaluated: 64, or 256 in the exploration-limited
  regime), held-out, at the end, with their paired Δ;
- ``AUC``: the area under held-out pass@1 against generated tokens (start, every
  ``eval.every_tokens``, end), divided by the token range;
- ``tokens to GRPO``: the generated tokens a recipe needed to reach GRPO's final held-out
  pass@1 (the mean over GRPO's seeds), from the held-out curve with linear interpolation
  between evaluations, as a share of GRPO's budget; mean over the seeds that reached it, with
  the count of those seeds ("—" throughout where GRPO ends at or below the start's pass@1:
  every run starts at that level, so the measure does not apply);
- entropy of the training rollouts in each quarter of the token budget (entropy over
  training), the share of groups with a gradient (groups whose rewards vary), and the share
  of tokens the PPO clip held back (low + high side, mean over steps; "—" for objectives
  without that clip).

The last lines of each table state whether any recipe reached GRPO's final pass@1 with at
most half of its tokens, or beat its pass@k_max by 10 points or more.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from explorl.compare.results import heldout_curve, read_metrics

BASELINE = "grpo"


def t_975(df: int) -> float:
    from explorl.explore.budget.xrpo import t_quantile
    return t_quantile(0.975, df)


def paired(values: dict[int, float], base: dict[int, float]) -> tuple[float, float, bool] | None:
    """(mean Δ, half-width of its 95% CI, whether the CI excludes 0) over the shared seeds."""
    seeds = sorted(set(values) & set(base))
    deltas = [values[s] - base[s] for s in seeds if values[s] is not None and base[s] is not None]
    if not deltas:
        return None
    mean = sum(deltas) / len(deltas)
    if len(deltas) < 2:
        return mean, math.inf, False
    sd = math.sqrt(sum((d - mean) ** 2 for d in deltas) / (len(deltas) - 1))
    half = t_975(len(deltas) - 1) * sd / math.sqrt(len(deltas))
    return mean, half, abs(mean) > half


def tokens_to_reach(xs: list[float], ys: list[float], target: float) -> float | None:
    """The first token count at which the curve reaches ``target`` (linear between points)."""
    for i, (x, y) in enumerate(zip(xs, ys)):
        if y >= target:
            if i == 0:
                return x
            x0, y0 = xs[i - 1], ys[i - 1]
            return x0 + (x - x0) * (target - y0) / (y - y0) if y != y0 else x
    return None


def entropy_quarters(metrics: list[dict], budget: float) -> list[float | None]:
    """Mean training-rollout entropy in each quarter of the token budget."""
    quarters = [[] for _ in range(4)]
    for m in metrics:
        if "entropy/rollout" in m and "tokens/total" in m:
            start = m["tokens/total"] - m.get("tokens/step", 0)
            quarters[min(3, int(4 * start / max(budget, 1)))].append(m["entropy/rollout"])
    return [sum(q) / len(q) if q else None for q in quarters]


def regime_rows(folder: Path) -> dict:
    """Per recipe and seed, what the board needs, from ``folder/results.json`` (its pass@k per
    run) and each run's metrics.jsonl (curves, entropy, clipping)."""
    results = json.loads((folder / "results.json").read_text())
    budget = results["settings"]["tokens"]
    out = {}
    for label, seeds in results["runs"].items():
        for key, row in seeds.items():
            metrics = read_metrics(folder / "runs" / label / key)
            passk = row["pass@k"]  # {"start"|"end": {"pass@k": {source: value}}}, as eval.json has it
            kmax = max(int(k[5:]) for k in passk["end"])
            out.setdefault(label, {})[row["seed"]] = {
                "pass@1": passk["end"]["pass@1"]["all"], "pass@kmax": passk["end"][f"pass@{kmax}"]["all"],
                "kmax": kmax, "start_pass@kmax": passk["start"][f"pass@{kmax}"]["all"],
                "start_pass@1": passk["start"]["pass@1"]["all"], "passk": passk,
                "auc": row.get("auc_heldout_pass1_vs_tokens"), "curve": heldout_curve(metrics, passk),
                "tokens": row["tokens"], "entropy": entropy_quarters(metrics, budget),
                "with_gradient": None if row.get("frac_zero_std_mean") is None else 1 - row["frac_zero_std_mean"],
                "clipped": _mean([m["loss/clip_frac_low"] + m["loss/clip_frac_high"] for m in metrics
                                  if "loss/clip_frac_low" in m and "loss/clip_frac_high" in m])}
    return {"budget": budget, "runs": out}


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def _fmt(x, spec=".3f"):
    return "—" if x is None else format(x, spec)


def _delta(d):
    if d is None:
        return "—"
    mean, half, significant = d
    ci = "" if math.isinf(half) else f" ± {half:.3f}"
    return f"{mean:+.3f}{ci}{' *' if significant else ''}"


def regime_table(name: str, data: dict) -> str:
    """The markdown table of one regime (``data``: ``regime_rows``)."""
    runs = data["runs"]
    if BASELINE not in runs:
        return f"### {name}\n\n(no {BASELINE} runs yet: nothing to compare against)\n"
    base = runs[BASELINE]
    kmax = max(r["kmax"] for r in base.values())
    target = _mean([r["pass@1"] for r in base.values()])
    base_tokens = _mean([r["tokens"] for r in base.values()])
    start = next(iter(base.values()))
    # where GRPO ends at or below the start, every run "reaches" its level at token 0: no measure
    applies = target > start["start_pass@1"]
    lines = [f"### {name}", "",
             f"Start: pass@1 {start['start_pass@1']:.3f}, pass@{kmax} {start['start_pass@kmax']:.3f}. "
             f"{len(runs)} recipes; GRPO's final pass@1 {target:.3f} "
             f"({'the level for' if applies else 'not above the start: no'} \"tokens to GRPO\"). "
             f"Δ: paired by seed against GRPO, 95% CI; `*`: the interval excludes 0.", "",
             f"| recipe | seeds | pass@1 | Δ pass@1 | pass@{kmax} | Δ pass@{kmax} | AUC | tokens to GRPO "
             f"| rollout entropy by quarter | groups with gradient | clipped |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    order = sorted(runs, key=lambda lb: -(_mean([r["pass@1"] for r in runs[lb].values()]) or 0))
    fast, wide = [], []
    for label in order:
        rs = runs[label]
        reach = [tokens_to_reach(*r["curve"], target) if applies else None for r in rs.values()]
        got = [t for t in reach if t is not None]
        share = _mean(got) / base_tokens if got else None
        d1 = paired({s: r["pass@1"] for s, r in rs.items()}, {s: r["pass@1"] for s, r in base.items()})
        dk = paired({s: r["pass@kmax"] for s, r in rs.items()}, {s: r["pass@kmax"] for s, r in base.items()})
        quarters = [_mean([r["entropy"][q] for r in rs.values()]) for q in range(4)]
        if label != BASELINE and got and len(got) == len(rs) and share <= 0.5:
            fast.append(label)
        if label != BASELINE and dk is not None and dk[0] >= 0.10:
            wide.append(label)
        lines.append(
            f"| `{label}` | {len(rs)} | {_fmt(_mean([r['pass@1'] for r in rs.values()]))} | "
            f"{'—' if label == BASELINE else _delta(d1)} | {_fmt(_mean([r['pass@kmax'] for r in rs.values()]))} | "
            f"{'—' if label == BASELINE else _delta(dk)} | {_fmt(_mean([r['auc'] for r in rs.values()]))} | "
            f"{'—' if share is None else f'{share:.2f} ({len(got)}/{len(rs)})'} | "
            f"{' / '.join(_fmt(q, '.2f') for q in quarters)} | {_fmt(_mean([r['with_gradient'] for r in rs.values()]))} | "
            f"{_fmt(_mean([r['clipped'] for r in rs.values()]), '.4f')} |")
    if applies:
        own = [t / base_tokens for t in (tokens_to_reach(*r["curve"], target) for r in base.values())
               if t is not None]
        reached = (f"Reached GRPO's final pass@1 with at most half of its tokens (every seed): "
                   f"{', '.join(f'`{x}`' for x in fast) or 'none'}"
                   + (f" (GRPO's own runs first reached that mean level at {sum(own) / len(own):.2f} of the budget, "
                      f"in {len(own)} of {len(base)} seeds: the held-out curve is noisy)." if own else "."))
    else:
        reached = (f"Reached GRPO's final pass@1 with at most half of its tokens: does not apply — GRPO ended at "
                   f"{target:.3f}, not above the start's {start['start_pass@1']:.3f}, so every run starts at that "
                   f"level (\"tokens to GRPO\" shows —); compare the final values and the AUC instead.")
    lines += ["", reached,
              f"Beat GRPO's pass@{kmax} by 10 points or more (mean paired Δ): "
              f"{', '.join(f'`{x}`' for x in wide) or 'none'}.", ""]
    return "\n".join(lines)


def regime_figure(name: str, data: dict, path: Path, shown: int = 6) -> Path:
    """pass@k at the end and held-out pass@1 along training for GRPO, the start and the
    ``shown`` recipes with the largest mean pass@1 or pass@k_max (the board has too many to
    draw them all)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    runs = data["runs"]
    ranked = lambda key: sorted((lb for lb in runs if lb != BASELINE),  # noqa: E731
                                key=lambda lb: -(_mean([r[key] for r in runs[lb].values()]) or 0))
    picks = []
    for lb in [x for pair in zip(ranked("pass@1"), ranked("pass@kmax")) for x in pair]:
        if lb not in picks and len(picks) < shown:
            picks.append(lb)
    labels = ([BASELINE] if BASELINE in runs else []) + picks
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for i, lb in enumerate(labels):
        color = plt.cm.tab10(i % 10)
        evs = [r["passk"] for r in runs[lb].values()]
        ks = sorted(int(k[5:]) for k in evs[0]["end"])
        left.plot(ks, [_mean([ev["end"][f"pass@{k}"]["all"] for ev in evs]) for k in ks], marker="o", ms=3,
                  color=color, label=lb, lw=2.2 if lb == BASELINE else 1.2)
        if i == 0:
            left.plot(ks, [evs[0]["start"][f"pass@{k}"]["all"] for k in ks], ls="--", color="#888", label="start")
        grid = sorted({x for r in runs[lb].values() for x in r["curve"][0]})
        ys = [_mean([_interp(r["curve"], x) for r in runs[lb].values()]) for x in grid]
        right.plot(grid, ys, marker="o", ms=3, color=color, label=lb, lw=2.2 if lb == BASELINE else 1.2)
    left.set_xscale("log", base=2)
    left.set(xlabel="k", ylabel="pass@k (held-out, end)", title=f"{name}: pass@k after training")
    right.set(xlabel="generated tokens", ylabel="held-out pass@1", title=f"{name}: held-out pass@1 along training")
    for ax in (left, right):
        ax.legend(fontsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _interp(curve, x):
    xs, ys = curve
    if not xs:
        return None
    if x <= xs[0]:
        return ys[0]
    for x0, x1, y0, y1 in zip(xs, xs[1:], ys, ys[1:]):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return ys[-1]


def board(out: Path, figures: Path | None = None) -> str:
    """Markdown tables for every regime folder of a study (``OUT/<regime>/results.json``), and
    with ``figures`` one picture per regime written there and linked below its table."""
    folders = sorted(p.parent for p in Path(out).glob("*/results.json"))
    if not folders:
        raise FileNotFoundError(f"{out}: no regime folder with a results.json (run explorl compare --study first)")
    parts = []
    for folder in folders:
        data = regime_rows(folder)
        parts.append(regime_table(folder.name, data))
        if figures is not None and BASELINE in data["runs"]:
            png = regime_figure(folder.name, data, Path(figures) / f"{folder.name}.png")
            parts.append(f"![{folder.name}]({png.as_posix()})\n")
    return "\n".join(parts)


def run_board(args) -> int:
    text = board(Path(args.out), Path(args.figures) if args.figures else None)
    if args.write:
        from explorl.compare.files import _write_atomic
        _write_atomic(Path(args.write), text)
    print(text)
    return 0
