"""``explorl compare`` end to end on the tiny config: token-matched runs in child processes,
results.json, the HTML report, the leaderboard, skipping finished runs and resuming an
interrupted one; plus the curve arithmetic and the argument errors."""
import json

import numpy as np
import pytest
import yaml

from explorl.compare.results import auc, heldout_curve, spread, training_curve
from explorl.cli import main

TOKENS = 300


@pytest.fixture
def study(tmp_path, tiny_overrides, monkeypatch, capsys):
    """Runs ``explorl compare`` (children inherit EXPLORL_HOME) and returns (exit code, stdout, stderr)."""
    monkeypatch.setenv("EXPLORL_HOME", str(tmp_path / "home"))
    # compare owns the recipe, the seed and the step/token budget
    sets = [o for o in tiny_overrides if not o.startswith(("recipe=", "seed=", "train.steps="))]
    # a second recipe given as a path: clip-higher with twice the rollouts per problem
    wide = tmp_path / "wide.yaml"
    wide.write_text("curriculum: uniform\nbudget: {name: fixed, n: 8}\nadvantage: [{name: grpo}]\n"
                    "objective: [{name: ppo_clip, clip_ratio_low: 0.2, clip_ratio_high: 0.28}]\n")
    out = tmp_path / "study"

    def run(*extra, recipes=f"grpo,{wide}", tokens=TOKENS):
        argv = ["compare", "--recipes", recipes, "--seeds", "1", "--tokens", str(tokens), "--out", str(out),
                "--eval-every-tokens", "150", *extra]
        for item in sets:
            argv += ["--set", item]
        code = main(argv)
        printed = capsys.readouterr()
        return code, printed.out, printed.err

    return run, out


def _runs(results):
    return {lb: results["runs"][lb]["seed0"] for lb in ("grpo", "wide")}


def test_compare_token_matched_report_skip_and_resume(study):
    run, out = study
    code, printed, err = run()
    assert code == 0, printed + err
    results = json.loads((out / "results.json").read_text())
    assert set(results["leaderboard"]) == {"grpo", "wide"} and results["settings"]["tokens"] == TOKENS
    runs = _runs(results)
    for label, r in runs.items():
        metrics = [json.loads(x) for x in (out / r["dir"] / "metrics.jsonl").read_text().splitlines()]
        # the budget is generated tokens: the run stops at the first step that reaches it
        assert r["tokens"] >= TOKENS and r["tokens"] - metrics[-1]["tokens/step"] < TOKENS
        assert r["steps"] == len(metrics) and r["wall_s"] > 0 and r["peak_rss_mb"] > 50
        for part in ("start", "end"):
            assert set(r["pass@k"][part]) == {"pass@1", "pass@4"}
            assert set(r["pass@k"][part]["pass@1"]) == {"addition", "reversal", "all"}
        assert 0 <= r["auc_pass1_vs_tokens"] <= 1 and r["end_entropy_eval"] > 0 and r["entropy_rollout_last"] > 0
        assert 0 <= r["frac_zero_std_mean"] <= 1
        # one held-out evaluation in between (at 150 tokens), and every problem's rollout count
        assert sum("heldout/pass@1" in m for m in metrics) == 1 and r["auc_heldout_pass1_vs_tokens"] is not None
        assert all(sum(m["rollouts/per_problem"]) == m["rollouts"] for m in metrics)
        stats = results["summary"][label]["metrics"]["end_pass@1"]
        assert set(stats) == {"mean", "std", "min", "max", "n"} and stats["n"] == 1
    # twice the rollouts per step: fewer steps for the same tokens
    assert runs["wide"]["steps"] < runs["grpo"]["steps"]
    page = (out / "report.html").read_text()
    assert page.count('<img src="data:image/png;base64,') >= 4 and "Leaderboard" in page
    assert page.index("Leaderboard") < page.index("Learning curves")
    assert "leaderboard" in printed and "pass@1" in printed
    board = printed[printed.index("leaderboard"):]
    assert board.index(results["leaderboard"][0]) < board.index(results["leaderboard"][1])

    # the same command again: everything is done, nothing retrains
    code, printed, _ = run()
    assert code == 0 and printed.count("skip") == 2 and "train ..." not in printed
    again = json.loads((out / "results.json").read_text())
    assert again["runs"] == results["runs"]

    # an interrupted run (checkpoint, no final evaluation) continues with --resume
    grpo = out / runs["grpo"]["dir"]
    ev = json.loads((grpo / "eval.json").read_text())
    (grpo / "eval.json").write_text(json.dumps({"start": ev["start"]}))
    code, printed, _ = run()
    assert code == 0 and "resume ..." in printed and printed.count("skip") == 1
    assert "resumed from" in (grpo / "train.log").read_text()
    after = _runs(json.loads((out / "results.json").read_text()))
    for key in ("tokens", "steps", "end_pass@1", "end_pass@4", "end_entropy_eval", "auc_pass1_vs_tokens",
                "auc_heldout_pass1_vs_tokens"):
        assert after["grpo"][key] == runs["grpo"][key], key
    assert after["grpo"]["segments"] == 2

    # a changed budget cannot reuse these runs
    code, _, err = run(tokens=TOKENS + 100)
    assert code == 2 and "another configuration" in err and "train.max_tokens" in err


def test_jobs_run_side_by_side_and_give_the_same_results(study, tmp_path):
    run, out = study
    code, printed, err = run("--jobs", "2")
    assert code == 0, printed + err
    assert "2 runs at a time" in printed and printed.count("(started)") == 2
    assert "start evaluation (shared" in printed  # computed once, by compare, for both recipes
    side_by_side = _runs(json.loads((out / "results.json").read_text()))
    assert side_by_side["grpo"]["start_pass@1"] == side_by_side["wide"]["start_pass@1"]
    for label in ("grpo", "wide"):
        assert "start evaluation: shared" in (out / side_by_side[label]["dir"] / "train.log").read_text()
    (out.rename(tmp_path / "side_by_side"))
    code, printed, err = run()
    assert code == 0, printed + err
    one_by_one = _runs(json.loads((out / "results.json").read_text()))
    for label in ("grpo", "wide"):
        for key in ("tokens", "steps", "end_pass@1", "end_pass@4", "auc_pass1_vs_tokens"):
            assert side_by_side[label][key] == one_by_one[label][key], (label, key)


def test_a_study_file_runs_regimes_and_resumes(tmp_path, tiny_overrides, monkeypatch, capsys):
    monkeypatch.setenv("EXPLORL_HOME", str(tmp_path / "home"))
    sets = [o for o in tiny_overrides if not o.startswith(("recipe=", "seed=", "train.steps=", "tasks="))]
    easy, both = tmp_path / "easy.yaml", tmp_path / "mixed.yaml"
    easy.write_text("tasks:\n  addition: {digits: [1, 1]}\n")
    both.write_text("tasks:\n  addition: {digits: [1, 1]}\n  reversal: {length: [2, 3]}\n")
    study = tmp_path / "board.yaml"
    study.write_text(f"tokens: {TOKENS}\nseeds: 1\nrecipes: [grpo]\nset: [train.rollouts_per_problem=3]\n"
                     f"k_max: 2\nheldout_problems: 2\n"
                     f"regimes:\n  mixed: {{config: {both}}}\n  easy: {{config: {easy}, recipes: [grpo, clip_higher], "
                     f"set: [train.rollouts_per_problem=2]}}\n")
    out = tmp_path / "board"

    def run(*extra):
        argv = ["compare", "--study", str(study), "--out", str(out), *extra]
        for item in sets:
            argv += ["--set", item]
        code = main(argv)
        return code, capsys.readouterr()

    code, printed = run()
    assert code == 0, printed.out + printed.err
    assert "regime 1/2: mixed" in printed.out and "regime 2/2: easy" in printed.out
    mixed = json.loads((out / "mixed" / "results.json").read_text())
    easy_results = json.loads((out / "easy" / "results.json").read_text())
    assert set(mixed["runs"]) == {"grpo"} and set(easy_results["runs"]) == {"grpo", "clip_higher"}
    assert set(easy_results["runs"]["grpo"]["seed0"]["pass@k"]["end"]["pass@1"]) == {"addition", "all"}
    assert all(m["rollouts/per_problem"] == [2] * 4 for m in
               map(json.loads, (out / "easy" / "runs" / "grpo" / "seed0" / "metrics.jsonl").read_text().splitlines()))
    assert all(m["rollouts/per_problem"] == [3] * 4 for m in  # the file's own set, under the regime's
               map(json.loads, (out / "mixed" / "runs" / "grpo" / "seed0" / "metrics.jsonl").read_text().splitlines()))
    assert main(["board", "--out", str(out), "--write", str(tmp_path / "board.md"),
                 "--figures", str(tmp_path / "figures")]) == 0
    board = capsys.readouterr().out
    assert (tmp_path / "figures" / "easy.png").stat().st_size > 1000 and "figures/easy.png)" in board
    assert "### easy" in board and "### mixed" in board and "| `clip_higher` | 1 |" in board
    assert "Reached GRPO's final pass@1 with at most half of its tokens" in board
    assert (tmp_path / "board.md").read_text().strip() == board.strip()
    code, printed = run("--regimes", "easy")  # again: nothing to do
    assert code == 0 and printed.out.count("skip (done)") == 2 and "mixed" not in printed.out
    study.write_text(study.read_text().replace("recipes: [grpo]", "recipes: [grpo]\nsteps: 3"))
    code, printed = run()
    assert code == 2 and "unknown key(s) steps" in printed.err
    code, printed = run("--tokens", "5")
    assert code == 2 and "--tokens cannot be combined with --study" in printed.err


def test_a_study_with_a_control_and_per_problem_evaluations_end_to_end(tmp_path, tiny_overrides, monkeypatch,
                                                                          capsys):
    """A tiny real study, two runs at a time: GRPO and dynamic sampling x 2 seeds, and GRPO with as
    many optimizer steps as dynamic sampling took at each seed (started once that run finished);
    per-problem evaluations (cheaper ones along the way), engagement in results.json, and the
    board with the control under its row."""
    monkeypatch.setenv("EXPLORL_HOME", str(tmp_path / "home"))
    sets = [o for o in tiny_overrides if not o.startswith(("recipe=", "seed=", "train.steps="))]
    study = tmp_path / "study.yaml"
    # dynamic sampling refills up to 10 batches a step (~900 tokens here): a budget for a few of its steps
    study.write_text("tokens: 1200\nseeds: 2\nrecipes: [grpo, dynamic_sampling]\nk_max: 2\nheldout_problems: 4\n"
                     "set: [eval.every_tokens=400, eval.every_samples=2]\n"
                     "controls:\n  ctl: {recipe: grpo, match: steps, of: dynamic_sampling}\nregimes:\n  r: {}\n")
    out = tmp_path / "board"
    argv = ["compare", "--study", str(study), "--out", str(out), "--jobs", "2"] + [x for o in sets for x in ("--set", o)]
    code = main(argv)
    printed = capsys.readouterr()
    assert code == 0, printed.out + printed.err
    results = json.loads((out / "r" / "results.json").read_text())
    assert results["settings"]["entries"]["ctl"]["control"] == {"of": "dynamic_sampling", "match": "steps"}
    assert results["settings"]["k_max"] == 2 and set(results["runs"]["ctl"]) == {"seed0", "seed1"}
    for seed in ("seed0", "seed1"):
        ds, ctl = results["runs"]["dynamic_sampling"][seed], results["runs"]["ctl"][seed]
        saved = yaml.safe_load((out / "r" / ctl["dir"] / "config.yaml").read_text())
        assert saved["train"]["steps"] == ds["steps"] == ctl["steps"] and saved["train"]["max_tokens"] is None
        assert set(ds["engagement"]["components"]) == {"dynamic_sampling"}
        assert ctl["engagement"] == {"engaged": None, "components": {}}  # plain GRPO: no mechanism
        ev = json.loads((out / "r" / ds["dir"] / "eval.json").read_text())
        assert ev["end"]["samples"] == 4 and len(ev["end"]["per_problem"]["correct"]) == 4
        along = [m for m in map(json.loads, (out / "r" / ds["dir"] / "metrics.jsonl").read_text().splitlines())
                 if "heldout/correct" in m]
        assert along and all(m["heldout/samples"] == 2 for m in along)
    assert main(["board", "--out", str(out)]) == 0
    table = capsys.readouterr().out
    lines = table.splitlines()
    row = next(i for i, line in enumerate(lines) if line.startswith("| `dynamic_sampling` | 2 |"))
    assert lines[row + 1].startswith("| ↳ `ctl` (control of `dynamic_sampling`: steps) | 2 | — |")
    assert "Declared before the runs: k_max = 2, at least 4 held-out problems" in table
    assert "(n = 2 in the cheaper evaluations along the way)" in table
    code = main(argv)  # again: every run is done, the controls too
    assert code == 0 and capsys.readouterr().out.count("skip (done)") == 6


def test_compare_errors_name_the_problem(study):
    run, out = study
    code, _, err = run(recipes="grpo,no_such_recipe")
    assert code == 2 and "no_such_recipe" in err and "known:" in err
    code, _, err = run(recipes=str(out / "missing.yaml"))
    assert code == 2 and "missing.yaml" in err
    code, _, err = run("--seeds", "0")
    assert code == 2 and "--seeds must be >= 1" in err
    code, _, err = run("--tokens", "0")
    assert code == 2 and "--tokens must be >= 1" in err
    code, _, err = run("--set", "train.steps=5")
    assert code == 2 and "train.steps is set by compare" in err
    assert not (out / "runs").exists()


def test_board_arithmetic():
    from explorl.compare.board import tokens_to_reach
    from explorl.compare.regime import entropy_quarters
    assert tokens_to_reach([0, 100, 200], [0.1, 0.3, 0.5], 0.4) == pytest.approx(150)
    assert tokens_to_reach([0, 100], [0.5, 0.6], 0.4) == 0 and tokens_to_reach([0, 100], [0.1, 0.2], 0.4) is None
    metrics = [{"tokens/total": t + 10, "tokens/step": 10, "entropy/rollout": e}
               for t, e in [(0, 1.0), (10, 3.0), (50, 0.5), (99, 0.1)]]
    assert entropy_quarters(metrics, 100) == [2.0, None, 0.5, 0.1]


# A study folder written by hand: GRPO with seeds 0-2, "alt" (a guidance-like row with teacher tokens)
# without seed 1, "steady" with a seed 3 GRPO lacks, and "ctl", a steps control of alt; each row's seeds
# stored in another order. k_max = 2, n = 4 samples of 4 held-out problems, a budget of 100 tokens in
# 4 steps of 25, one evaluation along the way at 50. Per run: (end correct counts, correct counts at 50,
# held-out AUC, frac_zero_std_mean, clipped share per step, rollout entropy per quarter of the budget).
START = [1, 1, 2, 2]  # pass@1 6/16 = 0.375
HAND_RUNS = {
    "grpo": {1: ([3, 2, 3, 4], [2, 2, 3, 3], 0.50, 0.4, 0.05, [1.2, 1.0, 0.8, 0.6]),
             0: ([2, 1, 2, 3], [1, 1, 2, 2], 0.40, 0.2, 0.03, [1.0, 0.8, 0.6, 0.4]),
             2: ([2, 2, 2, 2], [1, 2, 2, 2], 0.45, 0.3, 0.04, [0.8, 0.6, 0.4, 0.2])},
    "alt": {2: ([3, 3, 2, 3], [2, 3, 2, 3], 0.52, 0.1, 0.02, [0.9, 0.9, 0.9, 0.9]),
            0: ([3, 2, 3, 3], [3, 2, 2, 3], 0.48, 0.3, 0.04, [1.1, 1.1, 1.1, 1.1])},
    "steady": {0: ([2, 2, 2, 2], [1, 1, 1, 1], 0.42, 0.5, 0.01, [1.0, 1.0, 0.5, 0.5]),
               2: ([2, 2, 3, 2], [2, 2, 2, 2], 0.47, 0.5, 0.01, [1.0, 1.0, 0.5, 0.5]),
               1: ([3, 3, 3, 3], [2, 2, 2, 2], 0.55, 0.5, 0.01, [1.0, 1.0, 0.5, 0.5]),
               3: ([4, 4, 4, 4], [3, 3, 3, 3], 0.60, 0.5, 0.01, [1.0, 1.0, 0.5, 0.5])},
    "ctl": {2: ([2, 2, 2, 3], [2, 2, 2, 2], 0.45, 0.3, 0.02, [1.0, 1.0, 1.0, 1.0]),
            0: ([2, 2, 3, 3], [2, 2, 2, 2], 0.45, 0.3, 0.02, [1.0, 1.0, 1.0, 1.0])},
}


def _evaluation(counts):
    return {"pass@1": {"all": sum(counts) / 16}, "samples": 4,
            "per_problem": {"id": ["a", "b", "c", "d"], "source": ["s"] * 4, "correct": counts}}


def _hand_study(folder):
    runs = {}
    for label, seeds in HAND_RUNS.items():
        for seed, (end, mid, area, zero_std, clip, entropy) in seeds.items():
            run = folder / "runs" / label / f"seed{seed}"
            run.mkdir(parents=True)
            steps = [{"step": i + 1, "tokens/step": 25, "tokens/total": 25 * (i + 1), "entropy/rollout": entropy[i],
                      "loss/clip_frac_low": clip / 4, "loss/clip_frac_high": 3 * clip / 4} for i in range(4)]
            steps[1].update({"heldout/pass@1": sum(mid) / 16, "heldout/samples": 4, "heldout/correct": mid})
            (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in steps))
            (run / "eval.json").write_text(json.dumps({"start": _evaluation(START), "end": _evaluation(end)}))
            runs.setdefault(label, {})[f"seed{seed}"] = {
                "seed": seed, "dir": f"runs/{label}/seed{seed}", "tokens": 100, "steps": 4,
                "auc_heldout_pass1_vs_tokens": area, "frac_zero_std_mean": zero_std,
                "teacher_tokens": 300 if label == "alt" else 0,
                "engagement": {"engaged": True, "components": {"alt": {"engaged": True, "criteria": [], "notes": []}}}
                if label == "alt" else {"engaged": None, "components": {}}}
    entries = {lb: {"spec": lb, "seeds": sorted(s)} for lb, s in HAND_RUNS.items()}
    entries["ctl"] = {"spec": "grpo", "seeds": [0, 2], "control": {"of": "alt", "match": "steps"}}
    settings = {"tokens": 100, "k_max": 2, "heldout_problems": 4, "entries": entries}
    (folder / "results.json").write_text(json.dumps({"settings": settings, "runs": runs}))


PASS2 = [0.0, 0.5, 5 / 6, 1.0, 1.0]  # pass@2 of one problem with c of n = 4 correct: 1 − C(4−c, 2)/C(4, 2)


def _by_loops(a, b, seeds):
    """Δ, its 95% percentile interval and p by direct loops over the bootstrap's resamples of the
    shared seeds and the 4 problems (a, b: seed -> per-problem values)."""
    from explorl.compare.stats import RESAMPLES, resample_indices
    deltas = []
    for ss, ps in zip(resample_indices(len(seeds), RESAMPLES, 0), resample_indices(4, RESAMPLES, 1)):
        deltas.append(sum(sum(a[seeds[s]][i] - b[seeds[s]][i] for i in ps) / 4 for s in ss) / len(ss))
    deltas = np.round(deltas, 12)  # as the bootstrap rounds: ties with 0 stay ties
    p = min(1.0, 2 * min(1 + (deltas <= 0).sum(), 1 + (deltas >= 0).sum()) / (RESAMPLES + 1))
    lo, hi = np.quantile(deltas, [0.025, 0.975])
    return sum(sum(a[s]) - sum(b[s]) for s in seeds) / 4 / len(seeds), lo, hi, p


def test_board_values_from_a_hand_made_results_json(tmp_path):
    """Every number of the table recomputed by hand from the files above: means over each row's
    seeds, Δ paired by seed (alt and ctl over seeds 0 and 2, steady over 0-2) and by problem, the
    bootstrap intervals and p by loops over the same resamples, q by Benjamini–Hochberg over the
    regime's 11 comparisons, tokens to GRPO's mean final pass@1 from the held-out curves."""
    from explorl.compare.board import board
    _hand_study(tmp_path / "r")
    table, refused = board(tmp_path)
    assert not refused
    end = {lb: {s: [c / 4 for c in r[0]] for s, r in seeds.items()} for lb, seeds in HAND_RUNS.items()}
    end2 = {lb: {s: [PASS2[c] for c in r[0]] for s, r in seeds.items()} for lb, seeds in HAND_RUNS.items()}
    mid = {lb: {s: [c / 4 for c in r[1]] for s, r in seeds.items()} for lb, seeds in HAND_RUNS.items()}
    # start pass@2 (1/2 + 1/2 + 5/6 + 5/6)/4 = 0.667; GRPO's final pass@1 (8 + 12 + 8)/16/3 = 0.583 > the start's
    # 0.375: "½ budget" and "tokens to GRPO" apply
    assert ("Start (GRPO's seeds): pass@1 0.375, pass@2 0.667. GRPO: 3 seeds, final pass@1 0.583.") in table
    comps = {  # (row, against, metric) -> (Δ, low, high, p); reach: pass@1 at 50 of 100 tokens − GRPO's at the end
        (lb, "grpo", m): _by_loops(values[lb], values["grpo"] if m != "reach" else end["grpo"], seeds)
        for lb, seeds in (("alt", [0, 2]), ("steady", [0, 1, 2]), ("ctl", [0, 2]))
        for m, values in (("pass@1", end), ("pass@2", end2), ("reach", mid))}
    comps[("alt", "ctl", "pass@1")] = _by_loops(end["alt"], end["ctl"], [0, 2])
    comps[("alt", "ctl", "pass@2")] = _by_loops(end2["alt"], end2["ctl"], [0, 2])
    # Benjamini–Hochberg by hand: q_(i) = min over j >= i of p_(j)·m/j
    order = sorted(comps, key=lambda key: comps[key][3])
    m = len(order)
    q, running = {}, 1.0
    for rank in range(m, 0, -1):
        running = min(running, comps[order[rank - 1]][3] * m / rank)
        q[order[rank - 1]] = running

    def cell(key):
        d, lo, hi, _ = comps[key]
        return f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}] q {q[key]:.2g}" + (" *" if q[key] < 0.05 else "")

    # hand Δs: alt − grpo pass@1 (11 − 8 + 11 − 8)/16/2 = 0.1875, pass@2 ((1 + 5/6 + 1 + 1) − (5/6 + 1/2 + 5/6 + 1)
    # + (1 + 1 + 5/6 + 1) − 4·5/6)/4/2 = 0.1458; steady pass@1 (0 + 0 + 1)/16/3 = 0.0208; reach: alt (10 − 8 +
    # 10 − 8)/16/2 = 0.125, steady (4 − 8 + 8 − 12 + 8 − 8)/16/3 = −0.1667; ctl − grpo 0.09375, alt − ctl 0.09375
    for key, hand in ((("alt", "grpo", "pass@1"), 0.1875), (("alt", "grpo", "pass@2"), (3.8333 - 3.1667 + 3.8333 - 3.3333) / 8),
                      (("steady", "grpo", "pass@1"), 1 / 48), (("alt", "grpo", "reach"), 0.125),
                      (("steady", "grpo", "reach"), -1 / 6), (("ctl", "grpo", "pass@1"), 0.09375),
                      (("alt", "ctl", "pass@1"), 0.09375)):
        assert comps[key][0] == pytest.approx(hand, abs=1e-4), key
    assert "of the 11 comparisons of this regime" in table
    # alt: mean pass@1 11/16, pass@2 (3.8333 + 3.8333)/4/2 = 0.958; tokens to 0.5833 on [0, 50, 100] x
    # [0.375, 0.625, 0.6875] at 50·0.2083/0.25 = 41.67 in both seeds; 300 teacher tokens, 4 steps
    assert (f"| `alt` | 2 | yes | 0.688 | {cell(('alt', 'grpo', 'pass@1'))} | 0.958 | {cell(('alt', 'grpo', 'pass@2'))} | "
            f"{cell(('alt', 'grpo', 'reach'))} | — | 0.42 (2/2) | 300 | 4.0 | 1.00 / 1.00 / 1.00 / 1.00 | 0.800 | 0.0300 |") in table
    # ctl sits under alt, with alt − ctl; its curves [0.375, 0.5, 0.625] (seed 0) and [0.375, 0.5, 0.5625]
    # reach 0.5833 in seed 0 only, at 50 + 50·0.0833/0.125 = 83.33
    assert (f"| ↳ `ctl` (control of `alt`: steps) | 2 | — | 0.594 | {cell(('ctl', 'grpo', 'pass@1'))} | 0.896 | "
            f"{cell(('ctl', 'grpo', 'pass@2'))} | {cell(('ctl', 'grpo', 'reach'))} | "
            f"{cell(('alt', 'ctl', 'pass@1'))}; {cell(('alt', 'ctl', 'pass@2'))} | 0.83 (1/2) | — | 4.0 | "
            f"1.00 / 1.00 / 1.00 / 1.00 | 0.700 | 0.0200 |") in table
    # steady: means over its 4 seeds (pass@1 (8 + 12 + 9 + 16)/16/4 = 0.703, pass@2 (5/6 + 1 + 0.875 + 1)/4 =
    # 0.927); tokens: seed 1 [.375, .5, .75] at
    # 66.67, seed 3 [.375, .75, 1] at 27.78, seeds 0 and 2 never -> 47.22/100 in 2 of 4
    assert (f"| `steady` | 4 | — | 0.703 | {cell(('steady', 'grpo', 'pass@1'))} | 0.927 | "
            f"{cell(('steady', 'grpo', 'pass@2'))} | {cell(('steady', 'grpo', 'reach'))} | — | 0.47 (2/4) | — | 4.0 | "
            f"1.00 / 1.00 / 0.50 / 0.50 | 0.500 | 0.0100 |") in table
    # GRPO: pass@2 (3.1667 + 3.8333 + 3.3333)/4/3 = 0.861; its own curves reach 0.5833 only in seed 1 at 41.67
    assert ("| `grpo` | 3 | — | 0.583 | — | 0.861 | — | — | — | 0.42 (1/3) | — | 4.0 | 1.00 / 0.80 / 0.60 / 0.40 | "
            "0.700 | 0.0400 |") in table
    assert table.index("`steady`") < table.index("`alt`") < table.index("↳ `ctl`") < table.index("`grpo` |")
    fast = [lb for lb in ("alt", "steady", "ctl") if q[(lb, "grpo", "reach")] < 0.05 and comps[(lb, "grpo", "reach")][0] > 0]
    wide = [lb for lb in ("alt", "steady", "ctl") if q[(lb, "grpo", "pass@2")] < 0.05 and comps[(lb, "grpo", "pass@2")][0] >= 0.1]
    named = lambda labels: ", ".join(f"`{lb}`" + (" (with 300 teacher tokens per run)" if lb == "alt" else "")  # noqa: E731
                                     for lb in labels) or "none"
    assert f"above GRPO's final, q < 0.05): {named(fast)}." in table
    assert f"Beat GRPO's pass@2 by 10 points or more (Δ ≥ 0.10, q < 0.05): {named(wide)}." in table


def test_curve_arithmetic():
    assert auc([0, 10], [0.0, 1.0]) == pytest.approx(0.5)
    assert auc([0, 1, 3], [1.0, 1.0, 0.0]) == pytest.approx((1 + 1) / 3)
    assert auc([5], [0.25]) == 0.25 and auc([], []) is None
    metrics = [{"step": 1, "tokens/step": 40, "tokens/total": 40, "reward/pass_rate": 0.5},
               {"step": 2, "tokens/step": 60, "tokens/total": 100, "reward/pass_rate": 0.75,
                "heldout/pass@1": 0.3}]
    assert training_curve(metrics) == ([0.0, 40.0], [0.5, 0.75])
    ev = {"start": {"pass@1": {"all": 0.1}}, "end": {"pass@1": {"all": 0.4}}}
    assert heldout_curve(metrics, ev) == ([0.0, 100.0], [0.1, 0.4])  # the end replaces the last point
    s = spread([1.0, 3.0])
    assert s["mean"] == 2.0 and s["std"] == pytest.approx(2 ** 0.5) and (s["min"], s["max"]) == (1.0, 3.0)
