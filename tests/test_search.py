"""Test-time scaling (``explorl eval --search``): every method at every budget on the tiny model,
best-of-N (oracle selection) never below majority vote on the same samples, and the KV and
token columns as defined."""
import json

import yaml

from conftest import TINY
from explorl.eval.search import SEARCHES, budgets_up_to, format_scaling, majority_index, run_search
from explorl.policy.engine import RolloutEngine
from explorl.tasks import TaskMix


def test_budgets_are_the_points_of_a_curve():
    assert budgets_up_to(8) == [1, 2, 4, 8] and budgets_up_to(6) == [1, 2, 4, 6] and budgets_up_to(1) == [1]


def test_majority_vote_takes_the_most_frequent_answer():
    assert majority_index(["7", "8", "8", "9"]) == 1
    assert majority_index(["a", "b", "b", "a", "c"]) == 0  # a tie goes to the answer seen first
    assert majority_index(["", "x", ""]) == 0  # no answer found is an answer like any other


def test_every_search_at_every_budget(tiny_model):
    engine = RolloutEngine(*tiny_model)
    tasks = TaskMix.from_config(TINY["tasks"])
    problems = [p for ps in tasks.eval_sets(2).values() for p in ps]
    # a stand-in verifier that rewards some of the tiny model's responses (it solves nothing yet)
    score = lambda probs, texts: [float(len(t.strip()) % 2) for t in texts]  # noqa: E731
    rows = run_search(engine, tasks, problems, list(SEARCHES), [1, 4], 1.0, 6, seed=0, score=score)
    assert [(r["method"], r["n"]) for r in rows] == [(m, n) for m in SEARCHES for n in (1, 4)]
    by = {(r["method"], r["n"]): r for r in rows}
    samples = engine.rollout(problems, [4] * len(problems), [1.0] * 6, seed=0)  # what best_of_n and majority drew
    texts = [[samples.texts[r] for r in (samples.group == i).nonzero().squeeze(-1).tolist()]
             for i in range(len(problems))]
    any_right = sum(any(score(None, ts)) for ts in texts) / len(problems)
    voted = sum(score(None, [ts[majority_index([t.strip() for t in ts])]])[0] for ts in texts) / len(problems)
    assert by["best_of_n", 4]["pass_rate"] == any_right > 0 and by["majority", 4]["pass_rate"] == voted
    for n in (1, 4):
        # the same samples: any correct (best-of-N) is never below the most frequent answer correct
        assert by["best_of_n", n]["pass_rate"] >= by["majority", n]["pass_rate"]
        assert by["best_of_n", n]["tokens"] == by["majority", n]["tokens"]
        assert by["best_of_n", n]["verifier_calls"] == n and by["majority", n]["verifier_calls"] == 0
    prompts = sum(len(engine.encode_prompts([p])[0][0]) for p in problems) / len(problems)
    assert by["best_of_n", 4]["kv_tokens"] == prompts + by["best_of_n", 4]["tokens"]
    for method in ("ets", "dts", "dts_star"):
        assert by[method, 4]["tokens"] > by[method, 1]["tokens"] > 0 and by[method, 4]["kv_tokens"] > 0
    table = format_scaling(rows)
    assert "oracle" in table and "majority vote, no verifier" in table


def test_the_cli_prints_the_scaling_table(tmp_path, capsys):
    from explorl.cli import main
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    out = tmp_path / "search.json"
    assert main(["eval", "--config", str(config), "--search", "best_of_n,majority,ets,dts_star", "--budget", "2",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "pass" in printed and "kv MiB" in printed and "dts_star" in printed
    rows = json.loads(out.read_text())["rows"]
    assert {(r["method"], r["n"]) for r in rows} == {(m, n) for m in ("best_of_n", "majority", "ets", "dts_star")
                                                     for n in (1, 2)}
