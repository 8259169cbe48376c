"""Study folders written by hand for the board's tests: a regime's results.json and, per run,
eval.json with per-problem counts and metrics.jsonl, as ``explorl compare`` writes them."""
from __future__ import annotations

import json
from pathlib import Path


def evaluation(correct: list[int], n: int, ids: list[str] | None = None, **columns) -> dict:
    """An eval.json part: per-problem correct counts out of ``n`` (pass@1 "all" filled in)."""
    ids = ids or [f"p{i}" for i in range(len(correct))]
    per = {"id": ids, "source": ["s"] * len(correct), "correct": list(correct),
           **{k: list(v) for k, v in columns.items()}}
    return {"pass@1": {"all": sum(correct) / (n * len(correct))}, "samples": n, "per_problem": per}


def engaged(components: dict[str, bool] | None = None) -> dict:
    """A run's ``engagement`` record: each named component acted or not."""
    comps = {name: {"engaged": ok, "criteria": [f"{name} acted"], "notes": [f"{name} metric = {int(ok)}"]}
             for name, ok in (components or {}).items()}
    return {"engaged": all(v["engaged"] for v in comps.values()) if comps else None, "components": comps}


def write_regime(folder: Path, runs: dict, *, k_max: int = 2, budget: int = 100, heldout_problems: int = 1,
                 entries: dict | None = None, n: int = 4) -> Path:
    """``runs``: label -> seed -> dict with ``end`` and ``start`` (correct counts), and optionally
    ``after_phase``, ``along`` ([(tokens, correct counts, samples)]), ``engagement`` (``engaged``),
    ``steps``, ``teacher_tokens``, ``wall_s``, ``frac_zero_std``, ``tokens`` (the run's last tokens/total),
    ``metrics`` (extra keys on every metrics line) and per-problem ``columns`` of the end."""
    folder = Path(folder)
    rows = {}
    for label, seeds in runs.items():
        for seed, spec in seeds.items():
            run = folder / "runs" / label / f"seed{seed}"
            run.mkdir(parents=True, exist_ok=True)
            samples = spec.get("n", n)
            ev = {"start": evaluation(spec["start"], samples),
                  "end": evaluation(spec["end"], samples, **spec.get("columns", {}))}
            if "after_phase" in spec:
                ev["after_phase"] = evaluation(spec["after_phase"], samples)
            (run / "eval.json").write_text(json.dumps(ev))
            last = spec.get("tokens", budget)
            lines = []
            for tokens, correct, m in spec.get("along", []):
                lines.append({"step": len(lines) + 1, "tokens/step": 1, "tokens/total": tokens,
                              "heldout/pass@1": sum(correct) / (m * len(correct)), "heldout/samples": m,
                              "heldout/correct": list(correct)})
            lines.append({"step": len(lines) + 1, "tokens/step": 1, "tokens/total": last})
            for line in lines:
                line.update(spec.get("metrics", {}))
            (run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
            rows.setdefault(label, {})[f"seed{seed}"] = {
                "seed": seed, "dir": f"runs/{label}/seed{seed}", "tokens": last, "steps": spec.get("steps", len(lines)),
                "teacher_tokens": spec.get("teacher_tokens", 0), "wall_s": spec.get("wall_s", 0.0),
                "frac_zero_std_mean": spec.get("frac_zero_std"),
                "engagement": spec.get("engagement", engaged())}
    settings = {"tokens": budget, "k_max": k_max, "heldout_problems": heldout_problems,
                "entries": entries or {lb: {"spec": lb, "seeds": sorted(s)} for lb, s in runs.items()}}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps({"settings": settings, "runs": rows}))
    return folder
