"""``OUT/report.html`` of ``explorl compare``: one self-contained page (plots are PNGs embedded
as base64) with the leaderboard first, then learning curves, pass@k, entropy, curriculum
weights and rollout counts. Curves are read from each run's ``metrics.jsonl``."""
from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

from explorl.atomic import write_text_atomic
from explorl.compare.files import _read_json
from explorl.compare.results import heldout_curve, leaderboard_rows, read_metrics, training_curve

CSS = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.9em; margin: 0.5em 0; }
th, td { padding: 0.25em 0.6em; border-bottom: 1px solid #eee; text-align: right; }
th { background: #f4f4f4; } td:nth-child(2), th:nth-child(2) { text-align: left; }
.note { color: #555; font-size: 0.9em; } img { max-width: 100%; } code { background: #f4f4f4; }
"""


def write_report(out: Path, results: dict) -> Path:
    """Write ``out/report.html`` from ``results`` (``explorl.compare.results.collect``) and the runs."""
    out = Path(out)
    labels = results["leaderboard"]
    runs = {lb: [(r, read_metrics(out / r["dir"]), _read_json(out / r["dir"] / "eval.json"))
                 for r in results["runs"][lb].values()] for lb in labels}
    s = results["settings"]
    parts = [f"<h1>explorl compare: {len(labels)} recipe(s), {s['seeds']} seed(s), "
             f"{s['tokens']} generated tokens per run</h1>",
             f"<p class='note'>config: <code>{html.escape(str(s['config'] or 'testbed default'))}</code>; "
             f"overrides: <code>{html.escape(' '.join(s['overrides']) or 'none')}</code>; recipes: "
             + ", ".join(f"{html.escape(lb)} = <code>{html.escape(spec)}</code>" for lb, spec in s["recipes"].items())
             + "</p>",
             "<h2>Leaderboard</h2>", _leaderboard(results),
             "<p class='note'>Ranked by mean held-out pass@1 (all sources) at the end, ± sample std over seeds. "
             "<b>AUC train</b>: area under the training pass rate against generated tokens, divided by the "
             "token range (an on-policy proxy: training problems at the training temperature, not the "
             "held-out set). <b>zero-std</b>: mean fraction of groups whose rewards were all equal (no "
             "learning signal). <b>entropy</b>: held-out mean token entropy at the end. "
             "<b>wall s</b>: the run's process time, evaluations included; <b>peak MB</b>: largest peak "
             "resident memory of a run's process.</p>"]
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: F401
    except ImportError:
        parts.append("<p class='note'>matplotlib is not installed, so there are no plots "
                     "(<code>pip install -e .[bench]</code>).</p>")
    else:
        if labels:
            parts += _sections(results, runs, labels)
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>explorl compare</title>"
            f"<style>{CSS}</style></head><body>{''.join(parts)}</body></html>\n")
    path = out / "report.html"
    write_text_atomic(path, page)
    return path


def _leaderboard(results) -> str:
    header, rows = leaderboard_rows(results)
    if not rows:
        return "<p>No finished runs yet.</p>"
    return _table(header, rows)


def _table(header, rows) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _sections(results, runs, labels) -> list[str]:
    import matplotlib.pyplot as plt
    colors = {lb: plt.cm.tab10(i % 10) for i, lb in enumerate(labels)}
    tokens = results["settings"]["tokens"]
    parts = []

    # learning curves
    has_heldout = any(len(heldout_curve(m, ev)[0]) > 2 for lb in labels for _, m, ev in runs[lb])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for lb in labels:
        curves = [training_curve(m) for _, m, _ in runs[lb]]
        _band(axes[0], curves, lb, colors[lb], smooth=True)
        _band(axes[1], [heldout_curve(m, ev) for _, m, ev in runs[lb]], lb, colors[lb], marker="o")
    axes[0].set(title="training pass rate (on-policy proxy)", xlabel="generated tokens", ylabel="pass rate")
    axes[1].set(title="held-out pass@1 (all sources)", xlabel="generated tokens", ylabel="pass@1")
    for ax in axes:
        ax.axvline(tokens, color="#999", lw=0.8, ls=":")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8)
    parts += ["<h2>Learning curves</h2>", _png(fig),
              "<p class='note'>Left: each step's fraction of correct rollouts, placed at the tokens generated "
              "before that step; mean over seeds (lightly smoothed with a moving average) with the min–max band. "
              "Right: held-out pass@1 before and after training"
              + (" and every <code>--eval-every-tokens</code>" if has_heldout else
                 " (add <code>--eval-every-tokens E</code> for points in between)")
              + ". The dotted line is the token budget.</p>"]

    # pass@k
    fig, ax = plt.subplots(figsize=(6.5, 4))
    start = None
    for lb in labels:
        end = results["summary"][lb]["pass@k"].get("end", {})
        ks = sorted(int(k[5:]) for k in end)
        if not ks:
            continue
        ax.errorbar(ks, [end[f"pass@{k}"]["all"]["mean"] for k in ks],
                    yerr=[end[f"pass@{k}"]["all"]["std"] for k in ks], marker="o", ms=4, capsize=3,
                    color=colors[lb], label=lb)
        start = start or results["summary"][lb]["pass@k"].get("start")
    if start:
        ks = sorted(int(k[5:]) for k in start)
        ax.plot(ks, [start[f"pass@{k}"]["all"]["mean"] for k in ks], ls="--", color="#888", label="before training")
    ax.set_xscale("log", base=2)
    ax.set(xlabel="k", ylabel="pass@k (all sources)", title="pass@k after training")
    ax.legend(fontsize=8)
    parts += ["<h2>pass@k</h2>", _png(fig), _passk_table(results, labels),
              "<p class='note'>Held-out pass@k at the end (mean ± std over seeds, unbiased estimator from "
              "<code>eval.samples</code> samples per problem); dashed: the starting model.</p>"]

    # entropy
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for lb in labels:
        _band(ax, [_series(m, "entropy/rollout") for _, m, _ in runs[lb]], lb, colors[lb], smooth=True)
    ax.set(xlabel="generated tokens", ylabel="mean token entropy (nats)", title="rollout entropy during training")
    ax.legend(fontsize=8)
    parts += ["<h2>Entropy</h2>", _png(fig),
              "<p class='note'>Mean temperature-1 entropy of the sampled response tokens per step "
              "(<code>entropy/rollout</code>), mean over seeds with the min–max band.</p>"]

    # curriculum weights
    with_weights = [lb for lb in labels if any(k.startswith("curriculum/weight/")
                                               for _, m, _ in runs[lb] for row in m for k in row)]
    parts.append("<h2>Curriculum weights</h2>")
    if with_weights:
        fig, axes = plt.subplots(1, len(with_weights), figsize=(5 * len(with_weights), 3.6), squeeze=False)
        for ax, lb in zip(axes[0], with_weights):
            keys = sorted({k for _, m, _ in runs[lb] for row in m for k in row if k.startswith("curriculum/weight/")})
            for key in keys:
                _band(ax, [_series(m, key) for _, m, _ in runs[lb]], key.rsplit("/", 1)[1], None)
            ax.set(title=lb, xlabel="generated tokens", ylabel="sampling weight")
            ax.legend(fontsize=7)
        parts += [_png(fig), "<p class='note'>Probability of drawing each source "
                             "(<code>curriculum/weight/&lt;source&gt;</code>), mean over seeds.</p>"]
    else:
        parts.append("<p class='note'>None of these recipes logs per-source curriculum weights "
                     "(<code>curriculum/weight/&lt;source&gt;</code>; e.g. the dump and bandit curricula do), "
                     "so there is nothing to plot here.</p>")

    # rollout counts: per problem where the runs logged them, else per step
    per_problem = all(any("rollouts/per_problem" in row for _, m, _ in runs[lb] for row in m) for lb in labels)
    fig, axes = plt.subplots(1, len(labels), figsize=(min(4 * len(labels), 16), 3.2), squeeze=False)
    for ax, lb in zip(axes[0], labels):
        if per_problem:
            counts = [c for _, m, _ in runs[lb] for row in m for c in row.get("rollouts/per_problem", [])]
        else:
            counts = [row["rollouts"] for _, m, _ in runs[lb] for row in m if "rollouts" in row]
        if counts:
            lo, hi = min(counts), max(counts)
            ax.hist(counts, bins=range(lo, hi + 2) if hi - lo < 40 else 30, color=colors[lb], align="left",
                    rwidth=0.8)
            ax.set_xlim(min(0, lo - 1), hi + 1)
        ax.set(title=lb, xlabel="rollouts per problem" if per_problem else "rollouts per step",
               ylabel="problems" if per_problem else "steps")
    what = ("Rollouts each problem was trained on, pooled over steps and seeds"
            if per_problem else "Rollouts trained on per step, pooled over seeds (per-problem counts were not logged)")
    parts += ["<h2>Rollouts</h2>", _png(fig),
              f"<p class='note'>{what}. The budget methods' own metrics (<code>budget/…</code>, mean per step) "
              "follow.</p>", _budget_table(runs, labels)]
    return parts


def _passk_table(results, labels) -> str:
    ks = sorted({int(k[5:]) for lb in labels for k in results["summary"][lb]["pass@k"].get("end", {})})
    sources = sorted({s for lb in labels for k in results["summary"][lb]["pass@k"].get("end", {}).values()
                      for s in k if s != "all"}) + ["all"]
    rows = []
    for lb in labels:
        end = results["summary"][lb]["pass@k"].get("end", {})
        for src in sources:
            rows.append(["", lb, src] + [f"{end[f'pass@{k}'][src]['mean']:.3f}" if src in end.get(f"pass@{k}", {})
                                         else "-" for k in ks])
    return _table(["", "recipe", "source"] + [f"pass@{k}" for k in ks], rows)


def _budget_table(runs, labels) -> str:
    keys = sorted({k for lb in labels for _, m, _ in runs[lb] for row in m for k in row if k.startswith("budget/")})
    if not keys:
        return "<p class='note'>No <code>budget/…</code> metrics were logged.</p>"
    rows = []
    for lb in labels:
        row = ["", lb]
        for key in keys:
            vals = [r[key] for _, m, _ in runs[lb] for r in m if isinstance(r.get(key), (int, float))]
            row.append(f"{sum(vals) / len(vals):.3g}" if vals else "-")
        rows.append(row)
    return _table(["", "recipe"] + keys, rows)


def _series(metrics, key):
    xs, ys = [], []
    for m in metrics:
        if isinstance(m.get(key), (int, float)) and "tokens/total" in m:
            xs.append(float(m["tokens/total"] - m.get("tokens/step", 0)))
            ys.append(float(m[key]))
    return xs, ys


def _band(ax, curves, label, color, smooth=False, marker=None):
    """Mean over seeds on a common token grid (no extrapolation past the shortest seed), min–max band."""
    import numpy as np
    curves = [(np.asarray(x), np.asarray(y)) for x, y in curves if len(x)]
    if not curves:
        return
    if smooth:
        curves = [(x, _smooth(y)) for x, y in curves]
    if len(curves) == 1:
        x, y = curves[0]
        ax.plot(x, y, color=color, label=label, marker=marker, ms=4)
        return
    if marker:  # the measured points of every seed, under the mean line
        for x, y in curves:
            ax.plot(x, y, ls="none", marker=marker, ms=3, alpha=0.5, color=color)
    hi = min(x[-1] for x, _ in curves)
    lo = max(x[0] for x, _ in curves)
    if hi <= lo:  # nothing in common: show each seed
        for i, (x, y) in enumerate(curves):
            ax.plot(x, y, color=color, marker=marker, ms=4, label=label if i == 0 else None)
        return
    grid = np.linspace(lo, hi, 200)
    ys = np.stack([np.interp(grid, x, y) for x, y in curves])
    line = ax.plot(grid, ys.mean(0), color=color, label=label)[0]
    ax.fill_between(grid, ys.min(0), ys.max(0), color=line.get_color(), alpha=0.2, lw=0)


def _smooth(y):
    import numpy as np
    w = max(1, len(y) // 25)
    if w == 1:
        return y
    kernel = np.ones(w) / w
    padded = np.concatenate([np.full(w // 2, y[0]), y, np.full(w - 1 - w // 2, y[-1])])
    return np.convolve(padded, kernel, mode="valid")


def _png(fig) -> str:
    import matplotlib.pyplot as plt
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return f"<img src=\"data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}\">"


def main(out: str) -> None:
    """Rebuild the report from an existing ``results.json``: ``python -m explorl.compare.report OUT``."""
    results = json.loads((Path(out) / "results.json").read_text())
    print(write_report(Path(out), results))


if __name__ == "__main__":
    import sys
    main(sys.argv[1])
