"""A run's curves over its generated tokens: training reward beside held-out pass@k and entropy.

What a regime is calibrated by (``explorl curves --run RUN``): at the start, at every held-out
evaluation along the way (``eval.every_tokens``) and at the end, the held-out pass@k and token
entropy (``heldout/…`` in ``metrics.jsonl``, ``start`` and ``end`` in ``eval.json``), and the
training reward (``reward/mean``) averaged over the steps since the previous point (at the
start: the first step's, sampled before any update).
"""
from __future__ import annotations

import json
from pathlib import Path


def run_curves(run: Path, ks: tuple[int, ...] = (1, 16)) -> list[dict]:
    """``[{"tokens", "step", "reward", "entropy", "pass@k"...}]`` at the start, each held-out
    evaluation and the end of the run in folder ``run``."""
    from explorl.train.logging import read_metrics_lines
    run = Path(run)
    evals = run / "eval.json"
    if not evals.exists():
        raise FileNotFoundError(f"{run}: no eval.json (not a run folder, or the run has not started)")
    ev = json.loads(evals.read_text())
    rows = [json.loads(line) for line in read_metrics_lines(run / "metrics.jsonl")]
    if "start" not in ev or not rows:
        raise ValueError(f"{run}: no start evaluation or no training step yet")
    for k in ks:
        if f"pass@{k}" not in ev["start"]:
            raise ValueError(f"{run}: pass@{k} was not evaluated (eval.ks)")

    def point(tokens, step, reward, res, prefix=""):
        get = (lambda key: res[f"{prefix}{key}"]) if prefix else (lambda key: res[key]["all"])
        return {"tokens": tokens, "step": step, "reward": reward, "entropy": get("entropy"),
                **{f"pass@{k}": get(f"pass@{k}") for k in ks}}

    out = [point(0, 0, rows[0]["reward/mean"], ev["start"])]
    window = []
    for row in rows:
        window.append(row["reward/mean"])
        if "heldout/entropy" in row:
            out.append(point(row["tokens/total"], row["step"], sum(window) / len(window), row, "heldout/"))
            window = []
    if "end" in ev:
        last = rows[-1]
        reward = sum(window) / len(window) if window else out[-1]["reward"]
        out.append(point(last["tokens/total"], last["step"], reward, ev["end"]))
    return out


def format_curves(points: list[dict]) -> str:
    keys = [k for k in points[0] if k.startswith("pass@")]
    head = f"{'tokens':>9}{'step':>6}{'train reward':>14}{'entropy':>9}" + "".join(f"{k:>9}" for k in keys)
    return "\n".join([head] + [f"{p['tokens']:>9}{p['step']:>6}{p['reward']:>14.3f}{p['entropy']:>9.3f}"
                               + "".join(f"{p[k]:>9.3f}" for k in keys) for p in points])


def draw_curves(points: list[dict], path: Path, title: str) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    x = [p["tokens"] / 1000 for p in points]
    keys = [k for k in points[0] if k.startswith("pass@")]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    left.plot(x, [p["reward"] for p in points], "o-", label="training reward")
    for k in keys:
        left.plot(x, [p[k] for p in points], "s--", label=f"held-out {k}")
    left.set_xlabel("generated tokens (k)")
    left.legend(fontsize=8)
    right.plot(x, [p["entropy"] for p in points], "o-", color="tab:red")
    right.set_xlabel("generated tokens (k)")
    right.set_ylabel("held-out token entropy (nats)")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
