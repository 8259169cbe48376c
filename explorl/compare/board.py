"""``explorl board``: the leaderboard of a study (``compare --study``), one table per regime,
every row against GRPO paired by seed and by held-out problem, then the pre-registered
hypotheses (``configs/studies/hypotheses.yaml``) judged, and what the board can and cannot say.

Per regime (``explorl.compare.regime`` reads it and refuses one it cannot judge):

- pass@1 and pass@k_max (k_max declared per regime in the study file) at the end, with Δ = row −
  GRPO, its 95% paired bootstrap interval over seeds and problems and its Benjamini–Hochberg
  q-value (``explorl.compare.stats``); ``*`` where q < 0.05;
- ``½ budget − GRPO end``: the row's held-out pass@1 at half the token budget (linear between
  its evaluations, per problem; SFT-then-GRPO's curve starts at its evaluation after the SFT
  phase) minus GRPO's at the end, the same way — where GRPO ends above its start;
- ``engaged``: whether the row's mechanism acted in every seed (``explorl.explore.acted``); a row
  that did not shows **not engaged** instead of its Δs, which are left out of the family;
- ``tokens to GRPO`` (descriptive, as before): the share of the budget at which the row's mean
  held-out curve first reaches GRPO's final pass@1, over the seeds that reached it; teacher
  tokens per run; optimizer steps; training entropy by quarter; groups with a gradient; the
  share of tokens the PPO clip held back;
- controls (``explorl.compare.plan``) right under the row they control, with row − control;
- the regime's two answers, counting only corrected-significant results of engaged rows;
- each finding (a significant difference from GRPO) re-checked from the second warm start
  where the study ran one.

The family for Benjamini–Hochberg is every comparison the regime's section reports: the Δs of
the table, the controls' and the hypotheses' tests in that regime.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from explorl.compare import stats
from explorl.compare.hypotheses import Hypothesis, Claim, load, null_of, verdict
from explorl.compare.regime import (BASELINE, PER_SEED, Refused, Regime, matrices, mean_value, read_regime)

WARM = "@warm"
CAN_AND_CANNOT = """## What this board can and cannot say

- **Can:** on this testbed — a small transformer warm-started on arithmetic and string tasks
  (countdown, addition, multiplication, sorting, reversal), answers of tens of tokens, budgets of
  10⁵ policy tokens — which methods change held-out pass@1 and pass@k_max relative to GRPO at equal
  policy tokens, by how much, with intervals over seeds and held-out problems and a false
  discovery rate of 5% over each regime's table; whether each method's mechanism acted at all;
  whether a finding survives another warm start.
- **Cannot:** say how a method does on large models, long chains of thought, other task families
  or other budgets, where most of these papers make their claims; a "not supported" is a
  statement about this testbed, not a refutation of the paper. A method that did not engage was
  not tested. Teacher tokens are outside the budget: a guidance method's gain is bought with
  the teacher tokens stated beside it, and is compared with SFT on as many. Seeds share one warm
  start except where a second is shown, so the intervals of the other rows do not include
  warm-start variance.
"""


@dataclass
class Judged:
    """A regime with its comparisons (key: (row, against, metric, null)) and q-values set."""

    regime: Regime
    comparisons: dict = field(default_factory=dict)
    engagement: dict = field(default_factory=dict)  # label -> (state, note)
    tests: dict = field(default_factory=dict)       # (hypothesis id, test index) -> (state, key)
    warm: list = field(default_factory=list)        # (key, comparison, warm comparison or None)


def compare(regime: Regime, label: str, against: str, metric: str, null: float = 0.0):
    """``label`` against ``against`` on ``metric`` (None where the runs lack what it needs)."""
    m = matrices(regime, label, against, metric)
    if m is None:
        return None
    if metric in PER_SEED:
        a, b, _ = m
        return stats.paired_t(a, b, null)
    a_num, a_den, b_num, b_den, _ = m
    return stats.paired_bootstrap(a_num, a_den, b_num, b_den, null=null)


def recipe_of(regime: Regime, label: str) -> str:
    spec = regime.entry(label).get("spec", label.split(WARM)[0])
    return Path(spec).stem if spec.endswith((".yaml", ".yml")) else spec


def engagement(regime: Regime, label: str, mechanisms: list[str] | None) -> tuple[str, str]:
    """(``engaged`` | ``not engaged`` | ``none`` (a baseline) | ``unknown``, a note) for a row:
    engaged when every named mechanism (all with a criterion where None) acted in every seed."""
    runs = regime.runs[label]
    records = {s: (r.row.get("engagement") or {}) for s, r in runs.items()}
    if any("components" not in e for e in records.values()):
        return "unknown", "?"
    names = mechanisms or sorted({n for e in records.values() for n in e["components"]})
    if not names:
        return "none", "—"
    failed = {}
    for seed, e in records.items():
        for name in names:
            comp = e["components"].get(name)
            if comp is None:
                failed.setdefault(name, []).append((seed, f"no {name} component"))
            elif not comp["engaged"]:
                failed.setdefault(name, []).append((seed, "; ".join(comp["notes"])))
    if not failed:
        return "engaged", "yes"
    parts = [f"{name}: {notes[0][1]} ({len(notes)}/{len(runs)} seeds)" for name, notes in failed.items()]
    return "not engaged", "**not engaged** — " + "; ".join(parts)


def judge(regime: Regime, hypotheses: list[Hypothesis]) -> Judged:
    """Every comparison of the regime's section, then BH over them."""
    j = Judged(regime)
    mechanisms = {h.recipe: h.engaged for h in hypotheses if h.engaged}
    for label in regime.runs:
        j.engagement[label] = engagement(regime, label, mechanisms.get(recipe_of(regime, label)))
    if regime.complete(BASELINE):
        _table_comparisons(j)
    for h in hypotheses:
        for i, test in enumerate(h.tests):
            if test.regime == regime.name:
                j.tests[(h.id, i)] = _hypothesis_test(j, h, test)
    family = [c for c in j.comparisons.values() if c is not None]
    stats.benjamini_hochberg(family)
    _second_warm_start(j)
    return j


def _table_comparisons(j: Judged) -> None:
    """Each complete, engaged row against GRPO, and each control against the row it controls."""
    regime = j.regime
    acts = lambda lb: j.engagement[lb][0] != "not engaged" and regime.complete(lb)  # noqa: E731
    applies = half_budget_applies(regime)
    for label in table_rows(regime):
        if label == BASELINE or not acts(label):
            continue
        for metric in ("pass@1", "pass@kmax") + (("reach@0.5",) if applies else ()):
            _add(j, label, BASELINE, metric)
        source = (regime.entry(label).get("control") or {}).get("of")
        if source and acts(source):
            for metric in ("pass@1", "pass@kmax"):
                _add(j, source, label, metric)


def _add(j: Judged, label: str, against: str, metric: str, null: float = 0.0):
    key = (label, against, metric, null)
    if key not in j.comparisons:
        j.comparisons[key] = compare(j.regime, label, against, metric, null)
    return key


def _hypothesis_test(j: Judged, h: Hypothesis, test: Claim) -> tuple[str, tuple | None]:
    """``ok`` with the comparison's key, or why not: ``not run`` (the regime does not declare a row
    the test needs), ``pending`` (a row it needs has not finished all its seeds), ``not engaged``."""
    regime = j.regime
    entries = regime.settings.get("entries", {})
    label, against = h.recipe, test.against
    if isinstance(against, dict) and "control" in against:
        found = [lb for lb, e in entries.items()
                 if (e.get("control") or {}).get("of") == label and e["control"]["match"] == against["control"]]
        if not found:
            return f"not run: no {against['control']} control of {label}", None
        needed = [label, found[0]]
    elif isinstance(against, dict):
        needed = [label, *against["best_of"]]
    else:
        needed = [label, against]
    missing = [lb for lb in dict.fromkeys(needed) if lb not in entries and lb not in regime.runs]
    if missing:
        return f"not run: no {', '.join(missing)} runs", None
    unfinished = [lb for lb in dict.fromkeys(needed) if not regime.complete(lb)]
    if unfinished:
        return "pending: " + ", ".join(f"{lb} has {len(regime.runs.get(lb, {}))} of {len(regime.planned(lb))} seeds"
                                       for lb in unfinished), None
    if isinstance(against, dict) and "best_of" in against:
        scored = [(mean_value(regime, lb, _end_metric(test.metric)), lb) for lb in against["best_of"]]
        needed[1] = max(scored, key=lambda x: -1e9 if x[0] is None else x[0])[1]
    state, note = j.engagement[label]
    if state == "not engaged":
        return f"not engaged ({note.replace('**not engaged** — ', '')})", None
    key = _add(j, label, needed[1], test.metric, null_of(test))
    if j.comparisons[key] is None:
        return f"not run: the runs lack what {test.metric} needs", None
    return "ok", key


def _end_metric(metric: str) -> str:
    return "pass@1" if metric.startswith("reach@") else metric


def _second_warm_start(j: Judged) -> None:
    """Re-check each significant difference from GRPO from the second warm start (BH over the
    re-checks of the regime)."""
    regime = j.regime
    warm = {lb.split(WARM)[0]: lb for lb in regime.runs if WARM in lb}
    again = []
    for key, c in j.comparisons.items():
        label, against, metric, null = key
        if c is None or not c.significant or against != BASELINE:
            continue
        other = None
        if label in warm and BASELINE in warm:
            other = compare(regime, warm[label], warm[BASELINE], metric, null)
            if other is not None:
                again.append(other)
        j.warm.append((key, c, other))
    stats.benjamini_hochberg(again)


def half_budget_applies(regime: Regime) -> bool:
    """Whether GRPO ends above its start (else every run "reaches" its level at token 0)."""
    base = regime.runs[BASELINE].values()
    return _mean([r.end.pass1 for r in base]) > _mean([r.start.pass1 for r in base])


def table_rows(regime: Regime) -> list[str]:
    """The rows in table order: recipes by mean pass@1, each followed by its controls."""
    controls = {lb for lb in regime.runs if regime.entry(lb).get("control")}
    main = [lb for lb in regime.runs if lb not in controls and WARM not in lb]
    main.sort(key=lambda lb: -(_mean([r.end.pass1 for r in regime.runs[lb].values()]) or 0))
    out = []
    for lb in main:
        out += [lb, *regime.controls_of(lb)]
    return out + sorted(controls - set(out))


def _seeds(regime: Regime, label: str) -> str:
    """``5``, or ``3 of 5`` while the row's declared seeds are still running."""
    have, planned = len(regime.runs.get(label, {})), len(regime.planned(label))
    return str(have) if regime.complete(label) else f"{have} of {planned}"


def coverage(regime: Regime) -> tuple[int, int, list[str], list[str]]:
    """(finished runs, declared runs, rows still running, rows not started) of a regime."""
    labels = regime.rows()
    done = sum(len(regime.runs.get(lb, {})) for lb in labels)
    planned = sum(max(len(regime.planned(lb)), len(regime.runs.get(lb, {}))) for lb in labels)
    running = [lb for lb in labels if lb in regime.runs and not regime.complete(lb)]
    return done, planned, running, regime.not_started()


def coverage_line(regime: Regime) -> str:
    done, planned, running, waiting = coverage(regime)
    if not running and not waiting:
        return f"Coverage: all {planned} declared runs finished."
    parts = [f"**Coverage: {done} of {planned} declared runs finished** — this table is partial: a row is "
             f"compared (and counted in the family below) only once all its declared seeds have finished"]
    if running:
        parts.append(f"rows still running: {', '.join(f'`{lb}` ({_seeds(regime, lb)})' for lb in running)}")
    if waiting:
        parts.append(f"rows not started: {', '.join(f'`{lb}`' for lb in waiting)}")
    return "; ".join(parts) + "."


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def _fmt(x, spec=".3f"):
    return "—" if x is None else format(x, spec)


def delta_cell(c) -> str:
    if c is None:
        return "—"
    if c.p is None:
        return f"{c.estimate:+.3f} (not tested: {'; '.join(c.notes) or 'no resamples'})"
    return (f"{c.estimate:+.3f} [{c.low:+.3f}, {c.high:+.3f}] q {c.q:.2g}"
            + (" *" if c.significant else ""))


def tokens_to_reach(xs: list[float], ys: list[float], target: float) -> float | None:
    """The first token count at which the curve reaches ``target`` (linear between points)."""
    for i, (x, y) in enumerate(zip(xs, ys)):
        if y >= target:
            if i == 0:
                return x
            x0, y0 = xs[i - 1], ys[i - 1]
            return x0 + (x - x0) * (target - y0) / (y - y0) if y != y0 else x
    return None


def regime_table(j: Judged) -> str:
    regime, runs = j.regime, j.regime.runs
    name, k = regime.name, regime.k_max
    if BASELINE not in runs:
        return f"### {name}\n\n(no {BASELINE} runs yet: nothing to compare against)\n\n{coverage_line(regime)}\n"
    base = runs[BASELINE]
    target = _mean([r.end.pass1 for r in base.values()])
    budget = regime.budget
    applies = half_budget_applies(regime)
    start_p1 = _mean([r.start.pass1 for r in base.values()])
    start_pk = _mean([float(r.start.pass_at(k).mean()) for r in base.values()])
    along = sorted({n for rs in runs.values() for r in rs.values() for n in r.along})
    family = sum(c is not None and c.p is not None for c in j.comparisons.values())
    lines = [f"### {name}", "",
             f"Config `{regime.settings.get('config') or 'configs/testbed.yaml'}`. Declared before the runs: k_max = {k}, at least {regime.settings.get('heldout_problems', '?')} held-out "
             f"problems. Evaluated: {regime.problems} held-out problems, n = {regime.n} samples each at the start and "
             f"end" + (f" (n = {', '.join(map(str, along))} in the cheaper evaluations along the way)" if along else "")
             + f". Budget {budget:.0f} policy tokens per run. Start (GRPO's seeds): pass@1 {start_p1:.3f}, "
             f"pass@{k} {start_pk:.3f}. GRPO: {_seeds(regime, BASELINE)} seeds, final pass@1 {target:.3f}"
             + ("." if applies else " — not above its start, so \"½ budget\" and \"tokens to GRPO\" do not apply."),
             "", coverage_line(regime), "",
             f"Δ: the row minus GRPO, paired by seed and by held-out problem, [95% paired bootstrap interval over "
             f"seeds and problems, B = {stats.RESAMPLES}], q: Benjamini–Hochberg over the two-sided bootstrap "
             f"p-values (twice the share of resamples on the far side of 0) of the {family} comparisons of "
             f"this regime (this table's, its controls' and the hypotheses' tests); `*`: q < 0.05. A row whose "
             f"mechanism did not act in every seed shows **not engaged** and is not compared. Controls (↳) sit "
             f"under the row they control, with that row minus the control.", "",
             f"| recipe | seeds | engaged | pass@1 | Δ pass@1 | pass@{k} | Δ pass@{k} | ½ budget − GRPO end | "
             f"row − control (pass@1; pass@{k}) | tokens to GRPO | teacher tokens | steps | rollout entropy by "
             f"quarter | groups with gradient | clipped |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for label in table_rows(regime):
        rs = runs[label]
        entry = regime.entry(label)
        control = entry.get("control")
        state, note = j.engagement[label]
        cells = {m: "—" for m in ("pass@1", "pass@kmax", "reach@0.5")}
        if label != BASELINE:
            for m in cells:
                cells[m] = ("pending" if not (regime.complete(label) and regime.complete(BASELINE))
                            else "not engaged" if state == "not engaged"
                            else delta_cell(j.comparisons.get((label, BASELINE, m, 0.0))))
        versus = "—"
        if control:
            pair = [j.comparisons.get((control["of"], label, m, 0.0)) for m in ("pass@1", "pass@kmax")]
            versus = "; ".join(delta_cell(c) for c in pair) if any(pair) else "—"
        reach = [tokens_to_reach(*r.curve, target) if applies else None for r in rs.values()]
        got = [t for t in reach if t is not None]
        share = f"{_mean(got) / budget:.2f} ({len(got)}/{len(rs)})" if got else "—"
        teacher = _mean([r.row.get("teacher_tokens") for r in rs.values()])
        title = f"↳ `{label}` (control of `{control['of']}`: {control['match']})" if control else f"`{label}`"
        lines.append(
            f"| {title} | {_seeds(regime, label)} | {note} | {_fmt(_mean([r.end.pass1 for r in rs.values()]))} | {cells['pass@1']} | "
            f"{_fmt(_mean([float(r.end.pass_at(k).mean()) for r in rs.values()]))} | {cells['pass@kmax']} | "
            f"{cells['reach@0.5']} | {versus} | {share} | {_fmt(teacher, '.0f') if teacher else '—'} | "
            f"{_fmt(_mean([r.row.get('steps') for r in rs.values()]), '.1f')} | "
            f"{' / '.join(_fmt(_mean([r.entropy[q] for r in rs.values()]), '.2f') for q in range(4))} | "
            f"{_fmt(_mean([None if r.row.get('frac_zero_std_mean') is None else 1 - r.row['frac_zero_std_mean'] for r in rs.values()]))} | "
            f"{_fmt(_mean([r.clipped for r in rs.values()]), '.4f')} |")
    lines += ["", *answers(j, applies), "", *warm_lines(j), ""]
    return "\n".join(lines)


def answers(j: Judged, applies: bool) -> list[str]:
    """The regime's two questions, counting corrected-significant results of engaged rows, with
    the teacher tokens of each guidance row named."""
    regime, k = j.regime, j.regime.k_max

    def named(labels):
        out = []
        for lb in labels:
            teacher = _mean([r.row.get("teacher_tokens") for r in regime.runs[lb].values()])
            out.append(f"`{lb}`" + (f" (with {teacher:.0f} teacher tokens per run)" if teacher else ""))
        return ", ".join(out) or "none"

    rows = [lb for lb in table_rows(regime) if lb != BASELINE]
    wide = [lb for lb in rows if (c := j.comparisons.get((lb, BASELINE, "pass@kmax", 0.0))) is not None
            and c.significant and c.estimate >= 0.10]
    if applies:
        fast = [lb for lb in rows if (c := j.comparisons.get((lb, BASELINE, "reach@0.5", 0.0))) is not None
                and c.significant and c.estimate > 0]
        reached = (f"Reached GRPO's final pass@1 with at most half of its tokens (held-out pass@1 at half the budget "
                   f"above GRPO's final, q < 0.05): {named(fast)}.")
    else:
        reached = ("Reached GRPO's final pass@1 with at most half of its tokens: does not apply — GRPO did not end "
                   "above its start.")
    return [reached, f"Beat GRPO's pass@{k} by 10 points or more (Δ ≥ 0.10, q < 0.05): {named(wide)}."]


def shown(metric: str, k_max: int) -> str:
    """A metric's name as the tables print it."""
    if metric == "pass@kmax":
        return f"pass@{k_max}"
    if metric.startswith("reach@"):
        return f"held-out pass@1 at {metric[6:]} of the budget − GRPO's final"
    return metric


def warm_lines(j: Judged) -> list[str]:
    regime = j.regime
    seeds = sorted({regime.entry(lb).get("warm_start") for lb in regime.runs if WARM in lb} - {None})
    if not j.warm:
        return ["Findings re-run from a second warm start: no significant difference from GRPO to re-check."]
    head = (f"Findings (significant differences from GRPO) re-run from a second warm start "
            f"(model.warmup.seed {', '.join(map(str, seeds))}; q over these re-runs):" if seeds else
            "Findings (significant differences from GRPO); this regime ran no second warm start:")
    out = [head]
    for (label, _, metric, null), c, other in j.warm:
        what = f"- `{label}` {shown(metric, regime.k_max)}: {c.estimate:+.3f} (q {c.q:.2g})"
        if other is None:
            out.append(f"{what} — not re-run from a second warm start")
            continue
        holds = other.significant and (other.estimate - null) * (c.estimate - null) > 0
        out.append(f"{what}; from the second warm start {delta_cell(other)} — "
                   f"{'holds' if holds else 'does not hold'}")
    return out


def hypotheses_section(judged: dict[str, Judged], hypotheses: list[Hypothesis], declared=()) -> str:
    lines = ["## Pre-registered hypotheses", "",
             "Each row of [docs/hypotheses.md](hypotheses.md) as `configs/studies/hypotheses.yaml` states it, judged "
             "by its rule: **supported** where every test is significant (q < 0.05 in its regime) in the stated "
             "direction and reaches the stated size with the mechanism engaged; **not engaged** where the mechanism "
             "did not act; **not supported** otherwise; **pending** where a row it needs has not finished all its "
             "declared seeds; **not run** where the study declares no regime or row it needs.", "",
             "| id | recipe | hypothesis | verdict | evidence |", "|---|---|---|---|---|"]
    for h in hypotheses:
        results = []
        for i, test in enumerate(h.tests):
            j = judged.get(test.regime)
            if j is None:
                state = (f"pending: the {test.regime} regime has not begun" if test.regime in declared
                         else f"not run: no {test.regime} regime")
                results.append((test, state, None))
                continue
            state, key = j.tests[(h.id, i)]
            results.append((test, state, j.comparisons.get(key) if key else None))
        out = verdict(h, results)
        for name in sorted({t.regime for t in h.tests}):  # a guidance gain is stated with its teacher tokens
            runs = judged[name].regime.runs.get(h.recipe, {}) if name in judged else {}
            teacher = _mean([r.row.get("teacher_tokens") for r in runs.values()])
            if teacher:
                out.evidence.append(f"{name}: {teacher:.0f} teacher tokens per run (not in the budget)")
        lines.append(f"| {h.id} | `{h.recipe}` | {h.hypothesis} | **{out.verdict}** | {'<br>'.join(out.evidence)} |")
    return "\n".join(lines) + "\n"


def regime_figure(j: Judged, path: Path, shown: int = 6) -> Path:
    """pass@k at the end and held-out pass@1 along training for GRPO, the start and the
    ``shown`` rows with the largest mean pass@1 or pass@k_max."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    regime = j.regime
    runs, k = regime.runs, regime.k_max
    others = [lb for lb in table_rows(regime) if lb != BASELINE]
    by = lambda f: sorted(others, key=lambda lb: -_mean([f(r) for r in runs[lb].values()]))  # noqa: E731
    picks = []
    for lb in [x for pair in zip(by(lambda r: r.end.pass1), by(lambda r: float(r.end.pass_at(k).mean()))) for x in pair]:
        if lb not in picks and len(picks) < shown:
            picks.append(lb)
    labels = [BASELINE] + picks
    ks = [x for x in (1, 2, 4, 8, 16, 32, 64, 128, 256) if x <= regime.n]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for i, lb in enumerate(labels):
        color = plt.cm.tab10(i % 10)
        rs = list(runs[lb].values())
        left.plot(ks, [_mean([float(r.end.pass_at(x).mean()) for r in rs]) for x in ks], marker="o", ms=3,
                  color=color, label=lb, lw=2.2 if lb == BASELINE else 1.2)
        if i == 0:
            left.plot(ks, [_mean([float(r.start.pass_at(x).mean()) for r in rs]) for x in ks], ls="--", color="#888",
                      label="start")
        grid = sorted({x for r in rs for x in r.curve[0]})
        right.plot(grid, [_mean([_interp(r.curve, x) for r in rs]) for x in grid], marker="o", ms=3, color=color,
                   label=lb, lw=2.2 if lb == BASELINE else 1.2)
    left.set_xscale("log", base=2)
    left.set(xlabel="k", ylabel="pass@k (held-out, end)", title=f"{regime.name}: pass@k after training")
    right.set(xlabel="generated tokens", ylabel="held-out pass@1", title=f"{regime.name}: held-out pass@1 along training")
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


def board(out: Path, figures: Path | None = None, hypotheses: Path | None = None,
          study: Path | None = None, page: Path | None = None) -> tuple[str, list[str]]:
    """The markdown of every regime folder of a study (``OUT/<regime>/results.json``), the
    hypotheses' verdicts and the fixed section on what the board can say; with ``figures`` one
    picture per regime written there and linked (relative to ``page``, the file the text goes to);
    with ``study`` (the study file) the coverage of every regime it declares, begun or not.
    Returns the text and the refusals."""
    folders = sorted(p.parent for p in Path(out).glob("*/results.json"))
    if not folders:
        raise FileNotFoundError(f"{out}: no regime folder with a results.json (run explorl compare --study first)")
    hyps = load(hypotheses) if hypotheses else load()
    parts, judged, refused, regimes = [], {}, [], {}
    for folder in folders:
        try:
            regime = read_regime(folder)
        except Refused as err:
            refused.append(f"{folder.name}: {err}")
            parts.append(f"### {folder.name}\n\n**Refused:** {err}\n")
            continue
        regimes[folder.name] = regime
        j = judge(regime, hyps)
        judged[folder.name] = j
        parts.append(regime_table(j))
        if figures is not None and BASELINE in regime.runs:
            png = regime_figure(j, Path(figures) / f"{folder.name}.png")
            link = Path(os.path.relpath(png, Path(page).parent)) if page else png
            parts.append(f"![{folder.name}]({link.as_posix()})\n")
    declared = declared_runs(study) if study else {}
    parts += [hypotheses_section(judged, hyps, declared), CAN_AND_CANNOT]
    head = (f"# Leaderboard: which exploration methods help, and where\n\n"
            f"Printed by `explorl board --out {Path(out).as_posix()}"
            + (f" --study {Path(study).as_posix()}" if study else "") + "` from the runs of `explorl compare --study` "
            f"(rerun it to continue a study). Each regime's table is paired by seed and by held-out problem against "
            f"GRPO; the hypotheses are [docs/hypotheses.md](hypotheses.md)'s, committed before the runs.\n")
    return "\n".join([head, coverage_section(regimes, declared), *parts]), refused


def declared_runs(study: Path) -> dict[str, tuple[int, int]]:
    """Per regime of a study file, (runs, rows) that ``compare --study`` would make: the recipes,
    controls and second warm starts, each with its seeds."""
    from argparse import Namespace
    from explorl.compare.study import planned_entries
    from explorl.compare.studyfile import load_study, regime_args
    plain = Namespace(overrides=[], jobs=1, eval_every_tokens=None, out=".", study=str(study), regimes=None)
    out = {}
    for name, settings in load_study(study):
        entries = planned_entries(regime_args(plain, name, settings))
        out[name] = (sum(len(e.seeds) for e in entries), len(entries))
    return out


def coverage_section(regimes: dict[str, Regime], declared: dict[str, tuple[int, int]]) -> str:
    """What has run and what it cost: per regime, finished against declared runs, complete rows
    and the wall time of the finished runs (each run's own, start to end)."""
    lines = ["## Coverage", "", "| regime | runs finished | rows complete | rows still running | rows not started | "
             "wall time of the finished runs |", "|---|---|---|---|---|---|"]
    total = 0.0
    for name in dict.fromkeys([*declared, *regimes]):
        regime = regimes.get(name)
        if regime is None:
            runs, rows = declared[name]
            lines.append(f"| {name} | 0 of {runs} | 0 of {rows} | 0 | {rows} (not begun) | — |")
            continue
        done, planned, running, waiting = coverage(regime)
        rows = regime.rows()
        complete = sum(regime.complete(lb) for lb in rows)
        wall = sum(r.row.get("wall_s") or 0.0 for rs in regime.runs.values() for r in rs.values())
        total += wall
        lines.append(f"| {name} | {done} of {planned} | {complete} of {len(rows)} | {len(running)} | {len(waiting)} | "
                     f"{wall / 3600:.1f} h |")
    lines += ["", f"Cost so far: {total / 3600:.1f} hours of runs, summed over runs (runs of a study go "
              f"`--jobs` at a time, so the study's own wall time is shorter), evaluations included."]
    return "\n".join(lines) + "\n"


def run_board(args) -> int:
    text, refused = board(Path(args.out), Path(args.figures) if args.figures else None,
                          study=Path(args.study) if getattr(args, "study", None) else None,
                          page=Path(args.write) if args.write else None)
    if args.write:
        from explorl.atomic import write_text_atomic
        write_text_atomic(Path(args.write), text)
    print(text)
    for line in refused:
        import sys
        print(f"explorl board: refused {line}", file=sys.stderr)
    return 1 if refused else 0
