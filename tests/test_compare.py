"""``explorl compare`` end to end on the tiny config: token-matched runs in child processes,
results.json, the HTML report, the leaderboard, skipping finished runs and resuming an
interrupted one; plus the curve arithmetic and the argument errors."""
import json

import pytest

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
    from explorl.compare.board import entropy_quarters, paired, tokens_to_reach
    mean, half, significant = paired({0: 0.5, 1: 0.6, 2: 0.7}, {0: 0.4, 1: 0.5, 2: 0.6})
    assert mean == pytest.approx(0.1) and half == pytest.approx(0.0, abs=1e-9) and significant
    mean, half, significant = paired({0: 0.5, 1: 0.3, 2: 0.7}, {0: 0.4, 1: 0.5, 2: 0.6})
    # deltas 0.1, -0.2, 0.1: mean 0, sd 0.173, t(0.975, 2) = 4.303
    assert mean == pytest.approx(0.0, abs=1e-12) and half == pytest.approx(4.303 * 0.17320508 / 3 ** 0.5, rel=1e-3)
    assert not significant
    assert tokens_to_reach([0, 100, 200], [0.1, 0.3, 0.5], 0.4) == pytest.approx(150)
    assert tokens_to_reach([0, 100], [0.5, 0.6], 0.4) == 0 and tokens_to_reach([0, 100], [0.1, 0.2], 0.4) is None
    metrics = [{"tokens/total": t + 10, "tokens/step": 10, "entropy/rollout": e}
               for t, e in [(0, 1.0), (10, 3.0), (50, 0.5), (99, 0.1)]]
    assert entropy_quarters(metrics, 100) == [2.0, None, 0.5, 0.1]


def _board_run(start, end, kmax_end):
    return {"pass@1": end, "pass@kmax": kmax_end, "kmax": 64, "tokens": 100.0, "curve": ([0.0, 50.0, 100.0],
            [start, (start + end) / 2, end]), "start_pass@1": start, "start_pass@kmax": 0.8, "auc": end,
            "entropy": [0.5, 0.4, 0.3, 0.2], "with_gradient": 0.3, "clipped": 0.0}


def test_board_tokens_to_grpo_only_where_grpo_ends_above_its_start():
    from explorl.compare.board import regime_table
    rising = {"runs": {"grpo": {s: _board_run(0.4, 0.5, 0.7) for s in range(3)},
                       "fast": {s: dict(_board_run(0.4, 0.6, 0.7), curve=([0.0, 40.0, 100.0], [0.4, 0.5, 0.6]))
                                for s in range(3)}}}
    table = regime_table("r", rising)
    assert "| `fast` | 3 | 0.600 |" in table and "0.40 (3/3)" in table
    assert "at most half of its tokens (every seed): `fast`" in table
    falling = {"runs": {"grpo": {s: _board_run(0.47, 0.44, 0.66) for s in range(3)},
                        "other": {s: _board_run(0.47, 0.46, 0.70) for s in range(3)}}}
    table = regime_table("r", falling)
    assert "does not apply" in table and "0.00 (" not in table
    assert "| `other` | 3 | 0.460 | +0.020 ± 0.000 * | 0.700 | +0.040 ± 0.000 * | 0.460 | — |" in table


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


# A study folder written by hand: three recipes, GRPO with seeds 0-2, "alt" without seed 1, "steady"
# with a seed 3 GRPO lacks, each recipe's seeds stored in another order; start and end pass@k differ. Per run: (end pass@1, end
# pass@64, held-out pass@1 at 50 of 100 tokens, held-out AUC, frac_zero_std_mean, clipped share per
# step, rollout entropy per quarter of the budget).
HAND_RUNS = {
    "grpo": {1: (0.70, 0.90, 0.60, 0.50, 0.4, 0.05, [1.2, 1.0, 0.8, 0.6]),
             0: (0.40, 0.60, 0.35, 0.40, 0.2, 0.03, [1.0, 0.8, 0.6, 0.4]),
             2: (0.50, 0.80, 0.45, 0.45, 0.3, 0.04, [0.8, 0.6, 0.4, 0.2])},
    "alt": {2: (0.60, 0.95, 0.58, 0.52, 0.1, 0.02, [0.9, 0.9, 0.9, 0.9]),
            0: (0.56, 0.85, 0.40, 0.48, 0.3, 0.04, [1.1, 1.1, 1.1, 1.1])},
    "steady": {0: (0.45, 0.62, 0.40, 0.42, 0.5, 0.01, [1.0, 1.0, 0.5, 0.5]),
               2: (0.56, 0.83, 0.50, 0.47, 0.5, 0.01, [1.0, 1.0, 0.5, 0.5]),
               1: (0.76, 0.90, 0.70, 0.55, 0.5, 0.01, [1.0, 1.0, 0.5, 0.5]),
               3: (0.79, 0.97, 0.70, 0.60, 0.5, 0.01, [1.0, 1.0, 0.5, 0.5])},
}


def _hand_study(folder):
    start = {"pass@1": {"all": 0.30}, "pass@4": {"all": 0.45}, "pass@64": {"all": 0.55}}
    runs = {}
    for label, seeds in HAND_RUNS.items():
        for seed, (p1, p64, mid, area, zero_std, clip, entropy) in seeds.items():
            run = folder / "runs" / label / f"seed{seed}"
            run.mkdir(parents=True)
            steps = [{"step": i + 1, "tokens/step": 25, "tokens/total": 25 * (i + 1), "entropy/rollout": entropy[i],
                      "loss/clip_frac_low": clip / 4, "loss/clip_frac_high": 3 * clip / 4} for i in range(4)]
            steps[1]["heldout/pass@1"] = mid
            (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in steps))
            end = {"pass@1": {"all": p1}, "pass@4": {"all": (p1 + p64) / 2}, "pass@64": {"all": p64}}
            runs.setdefault(label, {})[f"seed{seed}"] = {
                "seed": seed, "tokens": 100, "auc_heldout_pass1_vs_tokens": area, "frac_zero_std_mean": zero_std,
                "pass@k": {"start": start, "end": end}}
    (folder / "results.json").write_text(json.dumps({"settings": {"tokens": 100}, "runs": runs}))


def test_board_values_from_a_hand_made_results_json(tmp_path):
    """Every number of the table recomputed by hand from the files above: means over each recipe's
    seeds, Δ paired by seed with GRPO (alt over seeds 0 and 2 only, steady over 0-2), 95% t intervals (t(0.975, 1) =
    12.7062, t(0.975, 2) = 4.3027), tokens to GRPO's mean final pass@1 from the held-out curves."""
    from explorl.compare.board import board
    _hand_study(tmp_path / "r")
    table = board(tmp_path)
    t1, t2 = 12.7062047, 4.30265273
    # GRPO's final pass@1 (0.40 + 0.70 + 0.50)/3 = 0.533 > the start's 0.30: "tokens to GRPO" applies
    assert "Start: pass@1 0.300, pass@64 0.550. 3 recipes; GRPO's final pass@1 0.533 (the level for" in table
    # alt − grpo, pass@1: seed 0 0.16, seed 2 0.10 → +0.130 ± t1·0.0424264/√2; pass@64: 0.25, 0.15 → +0.200 ± t1·0.05
    # tokens to 0.5333: seed 0 50 + 50·(0.1333/0.16) = 91.67, seed 2 50·(0.2333/0.28) = 41.67 → 66.67/100
    assert (f"| `alt` | 2 | 0.580 | +0.130 ± {t1 * 0.03:.3f} | 0.900 | +0.200 ± {t1 * 0.05:.3f} | 0.500 | 0.67 (2/2) | "
            f"1.00 / 1.00 / 1.00 / 1.00 | 0.800 | 0.0300 |") in table
    # steady: means over its 4 seeds (pass@1 2.56/4, pass@64 3.32/4, AUC 2.04/4); Δ over the 3 seeds GRPO has,
    # pass@1: 0.05, 0.06, 0.06 → +0.057, sd 0.0057735 → ± t2·0.0033333 = 0.014 (excludes 0: *);
    # pass@64: 0.02, 0.00, 0.03 → +0.017, sd 0.0152753 → ± 0.038; tokens: seeds 1 and 3 50·(0.2333/0.40) =
    # 29.17, seed 2 50 + 50·(0.0333/0.06) = 77.78, seed 0 never → 45.37/100 in 3 of 4
    assert (f"| `steady` | 4 | 0.640 | +0.057 ± {t2 * 0.0057735 / 3 ** 0.5:.3f} * | 0.830 | "
            f"+0.017 ± {t2 * 0.0152753 / 3 ** 0.5:.3f} | 0.510 | 0.45 (3/4) | 1.00 / 1.00 / 0.50 / 0.50 | 0.500 | "
            f"0.0100 |") in table
    assert ("| `grpo` | 3 | 0.533 | — | 0.767 | — | 0.450 | 0.39 (1/3) | 1.00 / 0.80 / 0.60 / 0.40 | 0.700 | "
            "0.0400 |") in table
    assert table.index("`steady`") < table.index("`alt`") < table.index("`grpo` |")   # by mean pass@1
    assert "(every seed): none (GRPO's own runs first reached that mean level at 0.39 of the budget, in 1 of 3" in table
    assert "Beat GRPO's pass@64 by 10 points or more (mean paired Δ): `alt`." in table
