"""The comparisons of docs/studies.md §5 whose baseline is not GRPO, with the board's own functions
(``explorl.compare.board.compare``: the paired bootstrap over seeds × held-out problems, a paired
t test for per-seed training metrics; ``explorl.compare.stats.benjamini_hochberg`` over them):

- SALSA and ``salsa_first`` against ``grpo_kl_initial`` (GRPO with the same KL term to the
  initial model) in ``runs/seed_methods/default``;
- each CoT2 row's end against its own evaluation after the CSFT phase (``after_phase``), the
  start hypothesis T4 names, in ``runs/seed_methods/mnns``.

    python docs/own_baselines.py
"""
from pathlib import Path

import numpy as np

from explorl.compare import stats
from explorl.compare.board import compare, delta_cell
from explorl.compare.regime import read_regime

OUT = Path("runs/seed_methods")


def after_csft(regime, label: str):
    """pass@1 at the end against pass@1 after the CSFT phase, paired by seed and by problem."""
    runs = [regime.runs[label][s] for s in sorted(regime.runs[label])]
    end = np.stack([r.end.correct / r.end.n for r in runs])
    start = np.stack([r.after_phase.correct / r.after_phase.n for r in runs])
    ones = np.ones_like(end)
    return stats.paired_bootstrap(end, ones, start, ones)


def main():
    default, mnns = read_regime(OUT / "default"), read_regime(OUT / "mnns")
    rows = [(f"{label} − grpo_kl_initial, {metric}", compare(default, label, "grpo_kl_initial", metric))
            for label in ("salsa", "salsa_first") for metric in ("pass@1", "pass@kmax", "train_reward")]
    rows += [(f"{label} end − after CSFT, pass@1", after_csft(mnns, label)) for label in ("cot2_mts", "cot2_dirichlet")]
    stats.benjamini_hochberg([c for _, c in rows])
    print(f"k_max {default.k_max}; Δ [95% interval] q (Benjamini–Hochberg over these {len(rows)}); "
          f"train_reward: paired t over seeds")
    for name, c in rows:
        print(f"{name}: {c.values[0]:.3f} vs {c.values[1]:.3f}, Δ {delta_cell(c)}")


if __name__ == "__main__":
    main()
