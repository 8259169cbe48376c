"""``explorl board`` on study folders written by hand (``board_records``): `*` only where q < 0.05,
rows whose mechanism did not act, the half-budget comparison from SFT-then-GRPO's evaluation
after its phase, findings re-run from a second warm start, the hypotheses' verdicts and the
regimes the board refuses."""
import json
import re

import pytest

from board_records import engaged, write_regime
from explorl.compare.board import board, compare, delta_cell, judge
from explorl.compare.hypotheses import Claim, Hypothesis, load, passes, verdict
from explorl.compare.regime import read_regime
from explorl.compare.stats import Comparison

P = 12  # held-out problems


def run(end, start=None, **kw):
    return {"start": start or [1] * P, "end": end, **kw}


def test_a_star_only_where_q_is_below_5_percent(tmp_path):
    """A row whose difference alone has p < 0.05 loses its `*` once ten rows identical to GRPO join
    the family (Benjamini–Hochberg over 22 comparisons: GRPO ends at its start, so there is no
    half-budget one); every cell's `*` goes with its q < 0.05."""
    start = [1, 2] * 6
    grpo = {s: run([1, 2] * 6, start=start) for s in range(3)}
    weak = {s: run([2, 2, 2, 2, 2, 2, 2, 2, 1, 2, 1, 2], start=start) for s in range(3)}  # +1 correct on 4 of 12
    runs = {"grpo": grpo, "weak": weak, **{f"same{i}": dict(grpo) for i in range(10)}}
    folder = write_regime(tmp_path / "r", runs)
    regime = read_regime(folder)
    alone = compare(regime, "weak", "grpo", "pass@1")
    assert alone.p < 0.05  # significant on its own
    table, _ = board(tmp_path)
    row = next(line for line in table.splitlines() if line.startswith("| `weak`"))
    q = float(re.search(r"\+0\.\d+ \[[^]]*\] q ([0-9.e-]+)", row).group(1))
    assert q >= 0.05 and " *" not in row
    cells = re.findall(r"q ([0-9.e-]+)( \*)?", table)
    assert cells and all((float(q) < 0.05) == bool(star) for q, star in cells)
    assert delta_cell(Comparison(0.1, 0.05, 0.2, 0.001, None, 3, 4, "bootstrap", q=0.049)).endswith("q 0.049 *")
    assert not delta_cell(Comparison(0.1, 0.05, 0.2, 0.001, None, 3, 4, "bootstrap", q=0.05)).endswith("*")


def test_a_row_whose_mechanism_did_not_act_is_not_engaged_never_no_effect(tmp_path):
    """clip_cov's runs logged no cut token: its large difference is not reported, not tested,
    not counted in the answers, and O2 is "not engaged" whatever the metric did."""
    grpo = {s: run([1] * P) for s in range(3)}
    entropy = {"entropy_sum": [3.0] * P, "tokens": [10.0] * P}
    idle = {s: run([4] * P, engagement=engaged({"clip_cov": False}), columns=entropy) for s in range(3)}
    busy = {s: run([2] * P, engagement=engaged({"kl_cov": True}), columns=entropy) for s in range(3)}
    grpo = {s: run([1] * P, columns=entropy) for s in range(3)}
    write_regime(tmp_path / "collapse", {"grpo": grpo, "clip_cov": idle, "kl_cov": busy}, n=4)
    table, _ = board(tmp_path)
    row = next(line for line in table.splitlines() if line.startswith("| `clip_cov`"))
    assert "**not engaged** — clip_cov: clip_cov metric = 0 (3/3 seeds)" in row
    assert row.count("not engaged") == 4 and "no effect" not in table  # the note and the three Δ cells
    # kl_cov's pass@1 and pass@2 (GRPO ends at its start: no ½ budget) and O3's entropy test (its pass@1 test
    # is the table's); none of clip_cov's
    assert "of the 3 comparisons of this regime" in table
    assert "`clip_cov`" not in table.split("Beat GRPO's")[1].split("\n")[0]
    o2 = next(line for line in table.splitlines() if line.startswith("| O2 |"))
    o3 = next(line for line in table.splitlines() if line.startswith("| O3 |"))
    assert "**not engaged**" in o2 and "**not engaged**" not in o3


def test_half_budget_is_measured_from_sft_then_grpos_evaluation_after_its_phase(tmp_path):
    """No evaluation along the way: pass@1 at half the budget is halfway between the evaluation
    after the SFT phase (at 0 policy tokens) and the end, problem by problem."""
    grpo = {s: run([2] * P, along=[(50, [1] * P, 4)]) for s in range(2)}
    sft = {s: run([2] * P, after_phase=[4] * P, engagement=engaged({"sft": True})) for s in range(2)}
    write_regime(tmp_path / "default", {"grpo": grpo, "sft_then_grpo": sft})
    j = judge(read_regime(tmp_path / "default"), load())
    half = j.comparisons[("sft_then_grpo", "grpo", "reach@0.5", 0.0)]
    # (4/4 + 2/4)/2 − 2/4 = 0.25, where the start before the phase (1/4) would give (1/4 + 2/4)/2 − 2/4 < 0
    assert half.estimate == pytest.approx(0.25)
    assert j.regime.runs["sft_then_grpo"][0].curve == ([0.0, 100.0], [1.0, 0.5])


def test_without_grpo_above_its_start_the_half_budget_measure_does_not_apply(tmp_path):
    grpo = {s: run([1] * P, start=[2] * P) for s in range(2)}
    other = {s: run([3] * P, start=[2] * P, engagement=engaged({"dump": True})) for s in range(2)}
    write_regime(tmp_path / "r", {"grpo": grpo, "dump": other})
    table, _ = board(tmp_path)
    assert "not above its start" in table and "does not apply — GRPO did not end above its start" in table
    row = next(line for line in table.splitlines() if line.startswith("| `dump`"))
    assert row.split(" | ")[7] == "—" and row.split(" | ")[9] == "—"  # ½ budget and tokens to GRPO


def test_findings_are_rechecked_from_the_second_warm_start(tmp_path):
    up, flat = [3] * P, [1] * P
    runs = {"grpo": {s: run(flat) for s in range(3)},
            "dump": {s: run(up, engagement=engaged({"dump": True})) for s in range(3)},
            "bandit": {s: run(up, engagement=engaged({"bandit": True})) for s in range(3)},
            "grpo@warm1": {s: run(flat) for s in range(3)},
            "dump@warm1": {s: run(up, engagement=engaged({"dump": True})) for s in range(3)},
            "bandit@warm1": {s: run([0] * P, engagement=engaged({"bandit": True})) for s in range(3)}}  # below GRPO
    entries = {lb: {"spec": lb.split("@")[0], "seeds": [0, 1, 2], **({"warm_start": 1} if "@" in lb else {})}
               for lb in runs}
    write_regime(tmp_path / "r", runs, entries=entries)
    table, _ = board(tmp_path)
    assert "re-run from a second warm start (model.warmup.seed 1" in table
    assert re.search(r"- `dump` pass@1: \+0\.500 \(q [0-9.e-]+\); from the second warm start \+0\.500 .* — holds", table)
    # significant again, but the other way: does not hold
    assert re.search(r"- `bandit` pass@1: \+0\.500 \(q [0-9.e-]+\); from the second warm start -0\.250 \[.*\] q [0-9.e-]+ \* — "
                     r"does not hold", table)
    assert "`dump@warm1`" not in table.split("|---|")[1].split("\n\n")[0]  # not a row of the table


def test_hypothesis_verdicts_follow_the_rule():
    h = Hypothesis("X1", "dump", "", "", tests=[Claim("default", "pass@1", "grpo", "at_least", 0.01)])
    c = lambda est, q, rel=None, null=0.0: Comparison(est, est - 0.01, est + 0.01, 0.001, rel, 3, 4, "bootstrap",  # noqa: E731
                                                      null=null, q=q)
    t = h.tests[0]
    assert verdict(h, [(t, "ok", c(0.02, 0.01))]).verdict == "supported"
    assert verdict(h, [(t, "ok", c(0.005, 0.01))]).verdict == "not supported"   # significant, below the size
    assert verdict(h, [(t, "ok", c(0.02, 0.06))]).verdict == "not supported"    # the size, not significant
    assert verdict(h, [(t, "ok", c(-0.02, 0.01))]).verdict == "not supported"   # significant the other way
    assert verdict(h, [(t, "not engaged (dump: ...)", None)]).verdict == "not engaged"
    assert verdict(h, [(t, "not run: no forking regime", None)]).verdict == "not run"
    pending = Claim("collapse", "pass@1", "grpo", "at_least", 0.01)  # one test pending: the whole verdict waits
    assert verdict(h, [(t, "not engaged (dump: ...)", None), (pending, "pending: dump has 2 of 5 seeds", None)]
                   ).verdict == "pending"
    match = Claim("forking", "pass@1", "grpo", "at_least", -0.01)  # not lower than GRPO − 0.01: tested against −0.01
    assert passes(match, c(-0.005, 0.01, null=-0.01)) and not passes(match, c(-0.015, 0.01, null=-0.01))
    rel = Claim("collapse", "entropy", "grpo", "at_least_relative", 0.10)
    assert passes(rel, c(0.05, 0.01, rel=0.12)) and not passes(rel, c(0.05, 0.01, rel=0.08))
    shorter = Claim("forking", "wrong_length", "grpo", "at_most_relative", -0.05)
    assert passes(shorter, c(-0.5, 0.01, rel=-0.06)) and not passes(shorter, c(-0.5, 0.01, rel=-0.04))
    assert verdict(Hypothesis("T2", "ets", "", "", not_evaluated="test time"), []).verdict == "not evaluated"


def test_hypotheses_on_a_board_with_controls(tmp_path):
    """C3 needs learnability above GRPO and above its uniform-pool control; B4 dynamic sampling
    above GRPO but not above its step-matched control; C1 DUMP above GRPO and earlier."""
    grpo = {s: run([1] * P, along=[(75, [1] * P, 4)]) for s in range(3)}
    learn = {s: run([3] * P, along=[(75, [3] * P, 4)], engagement=engaged({"learnability": True})) for s in range(3)}
    luffy = {s: run([3] * P, along=[(75, [3] * P, 4)], engagement=engaged({"luffy": True}), teacher_tokens=120 + s)
             for s in range(3)}
    pool = {s: run([2] * P, along=[(75, [2] * P, 4)]) for s in range(3)}
    ds = {s: run([3] * P, along=[(75, [3] * P, 4)], engagement=engaged({"dynamic_sampling": True})) for s in range(3)}
    steps = {s: run([3] * P, along=[(75, [3] * P, 4)]) for s in range(3)}
    dump = {s: run([2] * P, along=[(75, [2] * P, 4)], engagement=engaged({"dump": True})) for s in range(3)}
    runs = {"grpo": grpo, "learnability": learn, "pool_ctl": pool, "dynamic_sampling": ds, "steps_ctl": steps,
            "dump": dump, "luffy": luffy}
    entries = {lb: {"spec": lb, "seeds": [0, 1, 2]} for lb in runs}
    entries["pool_ctl"] = {"spec": "grpo", "seeds": [0, 1, 2], "control": {"of": "learnability", "match": "pool"}}
    entries["steps_ctl"] = {"spec": "grpo", "seeds": [0, 1, 2], "control": {"of": "dynamic_sampling", "match": "steps"}}
    write_regime(tmp_path / "default", runs, entries=entries)
    write_regime(tmp_path / "exploration-limited", {"grpo": grpo, "luffy": luffy})
    table, _ = board(tmp_path)
    verdicts = {line.split(" | ")[0][2:]: line.split(" | ")[3] for line in table.splitlines() if re.match(r"\| [A-Z]\d+ \|", line)}
    assert verdicts["C3"] == "**supported**" and verdicts["C1"] == "**supported**"
    assert verdicts["B4"] == "**not run**"  # its collapse tests have no regime; default alone:
    b4 = next(line for line in table.splitlines() if line.startswith("| B4 |"))
    assert "its steps control +0.01: Δ +0.000" in b4 and "fails" in b4
    assert verdicts["C2"] == "**not run**" and verdicts["T2"] == "**not evaluated**" and verdicts["G10"] == "**control**"
    # LUFFY's teacher tokens go beside its gains: in the table and with its hypothesis (G1 lacks its SFT control)
    luffy_row = next(line for line in table.splitlines() if line.startswith("| `luffy`"))
    assert luffy_row.split(" | ")[10] == "121"  # teacher tokens per run, mean of 120, 121, 122
    g1 = next(line for line in table.splitlines() if line.startswith("| G1 |"))
    assert "**not run**" in g1 and "no teacher_tokens control of luffy" in g1
    assert "exploration-limited: 121 teacher tokens per run (not in the budget)" in g1
    # the controls sit under their rows
    lines = [line for line in table.splitlines() if line.startswith("| ")]
    at = {re.search(r"`([^`]+)`", line).group(1): i for i, line in enumerate(lines) if "`" in line.split(" | ")[0]}
    assert at["pool_ctl"] == at["learnability"] + 1 and at["steps_ctl"] == at["dynamic_sampling"] + 1


def test_a_match_hypothesis_is_tested_against_its_margin(tmp_path):
    """O8: "pass@1 ≥ GRPO − 0.01 (match)". A row equal to GRPO on every problem matches: tested
    against −0.01 every resample is above it; tested against 0 it would be a tie (p = 1)."""
    same = [1, 2, 3] * 4
    runs = {"grpo": {s: run(same) for s in range(3)},
            "entropy_quantile": {s: run(same, engagement=engaged({"entropy_quantile": True})) for s in range(3)}}
    write_regime(tmp_path / "forking", runs)
    table, _ = board(tmp_path)
    o8 = next(line for line in table.splitlines() if line.startswith("| O8 |"))
    assert "**supported**" in o8 and "Δ +0.000 [+0.000, +0.000]" in o8


def test_a_row_still_running_is_pending_and_left_out_of_the_family(tmp_path):
    """A study in progress: DUMP has 2 of its 3 declared seeds, each far above GRPO. Its Δs show
    "pending", are not tested (the family is KL-Cov's alone), its hypothesis C1 is pending, and the
    coverage counts the runs finished against those the study file declares, regimes not begun too."""
    grpo = {s: run([1] * P) for s in range(3)}
    runs = {"grpo": grpo, "dump": {s: run([4] * P, engagement=engaged({"dump": True}), wall_s=1800.0) for s in range(2)},
            "kl_cov": {s: run([2] * P, engagement=engaged({"kl_cov": True})) for s in range(3)}}
    entries = {lb: {"spec": lb, "seeds": [0, 1, 2]} for lb in [*runs, "bandit"]}
    write_regime(tmp_path / "default", runs, entries=entries)
    study = tmp_path / "study.yaml"
    study.write_text("seeds: 2\ntokens: 100\nrecipes: [grpo, dump]\n"
                     "regimes: {default: {k_max: 2}, forking: {k_max: 2, recipes: [grpo]}}\n")
    table, refused = board(tmp_path, study=study)
    assert not refused
    dump = next(line for line in table.splitlines() if line.startswith("| `dump`"))
    cells = dump.split(" | ")
    assert cells[1] == "2 of 3" and cells[4] == cells[6] == "pending" and "q " not in dump
    assert "of the 2 comparisons of this regime" in table  # KL-Cov's pass@1 and pass@2, not DUMP's
    assert "**Coverage: 8 of 12 declared runs finished**" in table
    assert "rows still running: `dump` (2 of 3); rows not started: `bandit`." in table
    c1 = next(line for line in table.splitlines() if line.startswith("| C1 |"))
    assert "**pending**" in c1 and "dump has 2 of 3 seeds" in c1
    assert "| default | 8 of 12 | 2 of 4 | 1 | 1 | 1.0 h |" in table  # the folder's own declaration; 2 × 30 min
    assert "| forking | 0 of 2 | 0 of 1 | 0 | 1 (not begun) | — |" in table  # from the study file
    o8 = next(line for line in table.splitlines() if line.startswith("| O8 |"))  # entropy_quantile, forking
    assert "**pending**" in o8 and "the forking regime has not begun" in o8


def test_figures_are_linked_from_the_page_they_go_to(tmp_path):
    runs = {"grpo": {s: run([2] * P, start=[1] * P) for s in range(2)},
            "dump": {s: run([3] * P, start=[1] * P, engagement=engaged({"dump": True})) for s in range(2)}}
    write_regime(tmp_path / "study" / "default", runs)
    docs = tmp_path / "docs"
    table, _ = board(tmp_path / "study", figures=docs / "img" / "board", page=docs / "leaderboard.md")
    assert "![default](img/board/default.png)" in table and (docs / "img" / "board" / "default.png").stat().st_size > 0


@pytest.mark.parametrize("change, message", [
    (lambda s, ev: s.pop("k_max"), "no k_max declared"),
    (lambda s, ev: s.update(k_max=3), "4 samples per problem, fewer than 2·k_max = 6"),
    (lambda s, ev: s.update(heldout_problems=13), "12 held-out problems, fewer than the 13 declared"),
    (lambda s, ev: ev["end"]["per_problem"]["id"].reverse(), "evaluated on other held-out problems"),
    (lambda s, ev: ev["end"].pop("per_problem"), "holds no per-problem results"),
])
def test_a_regime_the_board_cannot_judge_is_refused(tmp_path, change, message):
    folder = write_regime(tmp_path / "r", {"grpo": {0: run([1] * P)}, "dump": {0: run([2] * P)}})
    results = json.loads((folder / "results.json").read_text())
    ev_path = folder / "runs" / "dump" / "seed0" / "eval.json"
    ev = json.loads(ev_path.read_text())
    change(results["settings"], ev)
    (folder / "results.json").write_text(json.dumps(results))
    ev_path.write_text(json.dumps(ev))
    table, refused = board(tmp_path)
    assert len(refused) == 1 and message in refused[0] and f"**Refused:** " in table and message in table
