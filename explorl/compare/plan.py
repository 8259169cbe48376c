"""What a comparison runs: one ``Entry`` per row (a run folder ``runs/<label>``), its recipe, its
seeds and what it sets beyond the comparison's overrides, including the **controls**, whose
settings derive from another row's finished runs.

Controls (the ``controls:`` section of a study file, ``explorl.compare.studyfile``):

- ``match: steps`` — as many optimizer steps as the controlled run took, seed by seed (e.g. GRPO
  beside dynamic sampling, which takes fewer, fuller steps for the same tokens):
  ``train.steps = steps of <of> at that seed`` with no token budget (``train.max_tokens=null``);
- ``match: teacher_tokens`` — supervised training on as many teacher tokens as the controlled
  guidance run used, seed by seed, then RL for the same policy tokens: the control's recipe must
  have an ``sft`` guidance with ``phase: before`` (``sft_then_grpo``), whose ``teacher_tokens``
  is set to the controlled run's ``teacher_tokens``;
- ``match: pool`` — the learnability curriculum's fixed pool sampled uniformly
  (``curriculum: uniform_pool`` with the controlled recipe's ``pool_size``; the same run seed
  draws the same pool).

A control runs with its controlled row's seeds and only after that row's run of the same seed
finished (rerunning compare derives it then); where that run used nothing to match (no teacher
tokens), the control is not run and the reason is printed.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

MATCHES = ("steps", "teacher_tokens", "pool")


@dataclass
class Entry:
    label: str
    spec: str                                  # recipe name or YAML path
    seeds: list[int]
    sets: list[str] = field(default_factory=list)  # extra --set items for every seed of this row
    control: dict | None = None                # {"of": label, "match": one of MATCHES}
    warm_start: int | None = None              # model.warmup.seed of a second warm start

    def describe(self) -> dict:
        return {"spec": self.spec, "seeds": list(self.seeds), "sets": list(self.sets),
                **({"control": dict(self.control)} if self.control else {}),
                **({"warm_start": self.warm_start} if self.warm_start is not None else {})}


def as_entries(specs, seeds: int) -> list[Entry]:
    """``Entry`` rows from ``(label, spec)`` pairs (each with seeds 0..seeds−1), entries kept."""
    return [s if isinstance(s, Entry) else Entry(s[0], s[1], list(range(seeds))) for s in specs]


class NotDerivable(Exception):
    """A control whose settings cannot be derived (yet, or at all)."""

    def __init__(self, message: str, final: bool = False):
        super().__init__(message)
        self.final = final  # True: it never will be (say, the controlled run used no teacher tokens)


def derived_sets(entry: Entry, out: Path, seed: int, source_config) -> list[str]:
    """The ``--set`` items a control ``entry`` adds at ``seed`` (``NotDerivable`` when its
    controlled run of that seed has not finished, or has nothing to match). ``source_config``
    is the controlled row's configuration (``explorl.config.Config``) at that seed."""
    if entry.control is None:
        return []
    of, match = entry.control["of"], entry.control["match"]
    run = Path(out) / "runs" / of / f"seed{seed}"
    if match == "pool":
        curriculum = source_config.curriculum
        params = curriculum if isinstance(curriculum, dict) else {"name": curriculum}
        if params.get("name") != "learnability":
            raise NotDerivable(f"control {entry.label}: match pool needs {of!r} to use the learnability curriculum, "
                               f"it uses {params.get('name')!r}", final=True)
        from explorl.explore.curriculum.learnability import Learnability
        import inspect
        pool = params.get("pool_size", inspect.signature(Learnability).parameters["pool_size"].default)
        return [f"curriculum={{name: uniform_pool, pool_size: {int(pool)}}}"]
    summary = finished_run(run)
    if summary is None:
        raise NotDerivable(f"control {entry.label} seed {seed}: waits for {of} seed {seed} to finish")
    if match == "steps":
        return [f"train.steps={summary['steps']}", "train.max_tokens=null"]
    if match == "teacher_tokens":
        tokens = int(summary["teacher_tokens"])
        if tokens <= 0:
            raise NotDerivable(f"control {entry.label} seed {seed}: {of} seed {seed} trained on no teacher tokens, "
                               f"so there is nothing to match (not run)", final=True)
        return [f"guidance={json.dumps(sft_phase_guidance(entry, tokens))}"]
    raise ValueError(f"control {entry.label}: unknown match {match!r} (valid: {', '.join(MATCHES)})")


def sft_phase_guidance(entry: Entry, tokens: int) -> list[dict]:
    """The control recipe's guidance list with its SFT phase set to ``tokens`` teacher tokens."""
    from explorl.config import load_yaml, recipe_path
    guidance = load_yaml(recipe_path(entry.spec)).get("guidance") or []
    out, found = [], False
    for item in guidance:
        item = dict(item) if isinstance(item, dict) else {"name": item}
        if item.get("name") == "sft" and item.get("phase") == "before":
            item["teacher_tokens"], found = tokens, True
        out.append(item)
    if not found:
        raise ValueError(f"control {entry.label}: match teacher_tokens needs a recipe with an sft guidance in "
                         f"phase before (e.g. sft_then_grpo), {entry.spec!r} has none")
    return out


def finished_run(run_dir: Path) -> dict | None:
    """``{"steps", "teacher_tokens"}`` of a finished run (eval end and run_info present), else None."""
    from explorl.compare.files import _read_json
    from explorl.compare.results import read_metrics
    info, ev = _read_json(run_dir / "run_info.json"), _read_json(run_dir / "eval.json")
    if not info or "end" not in ev:
        return None
    metrics = read_metrics(run_dir)
    return {"steps": metrics[-1]["step"] if metrics else info.get("steps", 0),
            "teacher_tokens": sum(m.get("tokens/teacher", 0) for m in metrics)}
