"""AMPO (arXiv:2510.02227): on failure, up to k wrong rollouts are replaced by the teacher solutions
the policy comprehends best, chosen from a pool across several teachers."""
import math
from types import SimpleNamespace

import pytest
import torch

from explorl.batch import OFF_POLICY, ON_POLICY
from explorl.explore.base import LossContext
from explorl.explore.guidance.ampo import (AMPO, answer_span, candidate_pool, comprehension_score, select_targets,
                                           sequence_mean_scale)
from explorl.explore.objective.aggregate import aggregate
from explorl.teachers.solver import Solver
from explorl.train.loop import Trainer
from teacher_rows_helpers import Fixed, guide_context, rollouts, setup
from run_records import run_metrics

TASKS = {"addition": {"digits": [1, 1]}, "countdown": {"numbers": [2, 3]}}


def two_solvers(engine, mix):
    """The ascending and descending countdown solvers, bound, and problems where they differ."""
    asc, desc = Solver("ascending"), Solver("descending")
    for s in (asc, desc):
        s.bind(mix, engine, None)
    found = []
    for seed in range(200):
        p = mix.sources["countdown"].problem(seed)
        a, d = asc.solutions(p, 1), desc.solutions(p, 1)
        if a and d and a[0] != d[0]:
            found.append((p, a[0], d[0]))
    return asc, desc, found


def teacher_rows(batch, g):
    return [t for t, k, grp in zip(batch.texts, batch.row_kind.tolist(), batch.group.tolist())
            if k == OFF_POLICY and grp == g]


def test_one_line_solutions_score_their_format_alone_and_keep_pool_order(tiny_model):
    """A one-line solution is all answer: A (the answer after the prompt alone) equals B, so its
    score is 0.1·format, 0 without answer tags, whatever the policy's comprehension: best_k keeps
    pool order (the teachers in turn) and no second forward pass is made."""
    engine, mix = setup(tiny_model)
    asc, desc, found = two_solvers(engine, mix)
    problem, a, d = found[0]
    for favoured in (d, a):
        def hook(batch, favoured=favoured):  # 0.9 per token for one candidate, 0.05 for the other
            for r, text in enumerate(batch.texts):
                batch.old_logp[r] = batch.mask[r] * math.log(0.9 if text == favoured else 0.05)

        ctx = guide_context(engine, mix, {"solver_asc": asc, "solver_desc": desc}, score_hook=hook)
        out, m = AMPO(num_off_policy_targets=1).guide(rollouts(engine, [problem], [[0.0] * 4]), ctx)
        assert teacher_rows(out, 0) == [a]                             # the pool's first: solver_asc's
        assert m["guide/ampo_score"] == 0.0 and m["guide/ampo_score_pool"] == 0.0
        b = 0.9 if favoured == a else 0.05
        assert m["guide/ampo_comprehension"] == pytest.approx(b, rel=1e-5)
        assert m["guide/ampo_comprehension_prompt"] == pytest.approx(b, rel=1e-5)
        assert m["guide/ampo_candidates"] == 2 and ctx.scored == [2]  # the whole pool was read once
    assert select_targets([0.2, 0.7, 0.5], 2, "best_k") == [1, 2]
    assert select_targets([0.0, 0.0, 0.0], 2, "best_k") == [0, 1]     # ties keep pool order
    assert select_targets([0.2, 0.7, 0.5], 2, "first") == [0, 1]


def test_comprehension_score_is_the_policys_mean_token_probability(tiny_model):
    engine, mix = setup(tiny_model)
    _, _, found = two_solvers(engine, mix)
    problem, a, _ = found[0]
    rows = engine.score_responses([problem], [1], texts=[a])
    n = int(rows.lengths[0]) - 1  # the solution's tokens, its stop token left out
    assert n == len(a)
    by_hand = rows.old_logp[0, :n].exp().mean().item()
    assert AMPO().answer_comprehension(rows, engine.tokenizer)[0] == pytest.approx([by_hand])
    logp = torch.log(torch.tensor([0.5, 0.2]))
    assert comprehension_score(logp) == pytest.approx(0.35)
    assert comprehension_score(logp, "exp_mean_log_softmax") == pytest.approx(math.sqrt(0.1))
    assert comprehension_score(logp, "mean_log_softmax") == pytest.approx(math.log(0.1) / 2)
    assert comprehension_score(logp, "exp_sum_log_softmax") == pytest.approx(0.1)
    # worked solutions: the answer is the final line, after the teacher's reasoning
    tokenizer = lambda text, add_special_tokens=False: SimpleNamespace(input_ids=list(text))
    assert answer_span(tokenizer, "3+4=7\n7*2=14\n14", 15) == (13, 15)
    assert answer_span(tokenizer, "3*4+2", 5) == (0, 5)


def test_the_score_is_0_9_times_the_gain_over_the_prompt_alone_plus_0_1_format():
    """prob.py: score = (1 − 0.1)·threshold_0(B − A) + 0.1·format, threshold_0(x) = 0 below 0."""
    from explorl.explore.guidance.ampo import answer_tag_format, target_score
    assert target_score(0.9, 0.5, 0.0) == pytest.approx(0.9 * 0.4)
    assert target_score(0.9, 0.5, 1.0) == pytest.approx(0.9 * 0.4 + 0.1)
    assert target_score(0.5, 0.9, 1.0) == pytest.approx(0.1)              # a negative gain counts 0
    assert target_score(0.5, 0.9, 0.0) == 0.0
    # format_reward(format_mode='R1_nothink'): exactly one <answer> and one </answer>, in order
    assert answer_tag_format("so <answer>7</answer>.") == 1.0
    assert answer_tag_format("<answer>7</answer><answer>7</answer>") == 0.0
    assert answer_tag_format("</answer>7<answer>") == 0.0
    assert answer_tag_format("7") == 0.0


def test_fewer_wrong_rollouts_than_k_take_the_candidate_at_j_mod_available():
    """mix_dapo_trainer.py: the replaced rollouts, in group order, take available[j % len(left)]."""
    from explorl.explore.guidance.ampo import assign_targets
    assert assign_targets([5, 2], [1]) == [2]          # one wrong rollout at position 1: the second-ranked
    assert assign_targets([5, 2], [0]) == [5]
    assert assign_targets([5, 2], [3, 6]) == [2, 5]    # position 3 -> index 1; then one left
    assert assign_targets([5, 2, 7], [4]) == [2]       # 4 % 3 = 1
    assert assign_targets([5], [1, 2]) == [5]          # no candidate left for position 2


@pytest.fixture(scope="module")
def newline_model():
    """The tiny model over the testbed alphabet and a newline (worked, multi-line solutions)."""
    from explorl.policy.model import build_tiny
    from explorl.tasks import ALPHABET
    return build_tiny("qwen2", ALPHABET + "\n", 32, 2, 4, 2, 64, 64, seed=0)


def forced_scores(probs):
    """A score hook giving every token of a scored row the probability ``probs[text]``."""
    def hook(batch):
        for r, text in enumerate(batch.texts):
            batch.old_logp[r] = batch.mask[r] * math.log(probs[text])
    return hook


# B (after the reasoning line) and A (the answer line alone) of three candidates:
# X: B 0.9, A 0.5 -> 0.9·0.4 = 0.36; Y: B 0.95, A 0.9 -> 0.045; Z, one line with answer tags: B = A -> 0.1
PROBS = {"a\n7": 0.9, "7": 0.5, "b\n8": 0.95, "8": 0.9, "<answer>9</answer>": 0.2}


def test_best_k_ranks_by_the_gain_over_the_prompt_alone_not_by_b(newline_model):
    engine, mix = setup(newline_model, {"addition": {"digits": [1, 1]}})
    problem = mix.sources["addition"].problem(0)
    teachers = {"t": Fixed("b\n8", "a\n7", "<answer>9</answer>")}
    ctx = guide_context(engine, mix, teachers, score_hook=forced_scores(PROBS))
    out, m = AMPO(num_off_policy_targets=1).guide(rollouts(engine, [problem], [[0.0] * 4]), ctx)
    assert teacher_rows(out, 0) == ["a\n7"]                        # not "b\n8", whose B is higher
    assert m["guide/ampo_score"] == pytest.approx(0.9 * (0.9 - 0.5), rel=1e-5)
    assert m["guide/ampo_comprehension"] == pytest.approx(0.9, rel=1e-5)
    assert m["guide/ampo_comprehension_prompt"] == pytest.approx(0.5, rel=1e-5)
    assert m["guide/ampo_score_pool"] == pytest.approx((0.36 + 0.9 * 0.05 + 0.1) / 3, rel=1e-5)
    assert ctx.scored == [3, 2]                                    # the pool, then its two answer lines alone


@pytest.mark.parametrize("rewards,expect", [([1.0, 0.0, 1.0, 1.0], "<answer>9</answer>"),
                                            ([0.0, 1.0, 1.0, 1.0], "a\n7")])
def test_one_wrong_rollout_and_k_2_takes_the_candidate_at_its_position_mod_2(newline_model, rewards, expect):
    """Ranked X (0.36), Z (0.1), Y (0.045): the available two are X, Z; the one wrong rollout at
    position j takes available[j % 2]: Z at position 1, X at position 0."""
    engine, mix = setup(newline_model, {"addition": {"digits": [1, 1]}})
    problem = mix.sources["addition"].problem(0)
    teachers = {"t": Fixed("b\n8", "a\n7", "<answer>9</answer>")}
    ctx = guide_context(engine, mix, teachers, score_hook=forced_scores(PROBS))
    out, _ = AMPO(injection_strategy="always", num_off_policy_targets=2).guide(
        rollouts(engine, [problem], [rewards]), ctx)
    assert teacher_rows(out, 0) == [expect]


def test_the_pool_takes_the_teachers_in_turn():
    ctx = SimpleNamespace(teachers={"t1": Fixed("a", "b", "c"), "t2": Fixed("x", "a", "y")}, extras={})
    assert candidate_pool(ctx, None, None, 4) == [("t1", "a"), ("t2", "x"), ("t1", "b"), ("t1", "c")]
    assert candidate_pool(ctx, None, ["t2"], 4) == [("t2", "x"), ("t2", "a"), ("t2", "y")]


def test_adaptive_guides_only_groups_with_no_correct_rollout(tiny_model):
    engine, mix = setup(tiny_model)
    asc, desc, found = two_solvers(engine, mix)
    problems = [found[0][0], found[1][0]]
    batch = rollouts(engine, problems, [[0.0] * 4, [0.0, 1.0, 0.0, 0.0]])
    ctx = guide_context(engine, mix, {"solver_asc": asc, "solver_desc": desc})
    out, m = AMPO().guide(batch, ctx)
    assert out.counts == [4, 4]  # replaced, not added
    assert len(teacher_rows(out, 0)) == 2 and teacher_rows(out, 1) == []
    assert m["guide/ampo_groups_triggered"] == 1 and m["guide/ampo_teacher_rows"] == 2
    # the group with a correct rollout is untouched; injected solutions count as correct
    assert out.texts[4:] == batch.texts[4:] and out.rewards[4:].tolist() == [0.0, 1.0, 0.0, 0.0]
    kinds = out.row_kind.tolist()
    assert [r for r, k in zip(out.rewards.tolist()[:4], kinds[:4]) if k == OFF_POLICY] == [1.0, 1.0]
    assert sorted(teacher_rows(out, 0)) == sorted([found[0][1], found[0][2]])
    # the kept on-policy rows of group 0 are two of the original four
    kept = [t for t, k in zip(out.texts[:4], kinds[:4]) if k == ON_POLICY]
    assert len(kept) == 2 and all(t in batch.texts[:4] for t in kept)


def test_always_guides_every_group_with_a_wrong_rollout(tiny_model):
    engine, mix = setup(tiny_model)
    asc, desc, found = two_solvers(engine, mix)
    problems = [found[i][0] for i in range(3)]
    batch = rollouts(engine, problems, [[0.0] * 4, [1.0, 1.0, 0.0, 1.0], [1.0] * 4])
    ctx = guide_context(engine, mix, {"solver_asc": asc, "solver_desc": desc})
    out, m = AMPO(injection_strategy="always").guide(batch, ctx)
    assert [len(teacher_rows(out, g)) for g in range(3)] == [2, 1, 0]  # nothing to replace in an all-correct group
    assert m["guide/ampo_groups_triggered"] == 3 and out.counts == [4, 4, 4]
    assert out.rewards.sum().item() == 2 + 4 + 4  # the wrong rollout of group 1 became a correct teacher row


def test_exactly_min_k_wrong_candidates_are_replaced(tiny_model):
    engine, mix = setup(tiny_model, {"addition": {"digits": [1, 1]}})
    problems = [mix.sources["addition"].problem(s) for s in range(4)]
    rewards = [[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0] * 4, [0.0] * 5]
    teachers = {"t1": Fixed("11", "12", "13"), "t2": Fixed("21", "22")}
    for k, pool, expect in ((2, 4, [1, 2, 2, 2]), (3, 4, [1, 3, 3, 3]), (4, 4, [1, 3, 4, 4]), (4, 2, [1, 2, 2, 2])):
        batch = rollouts(engine, problems, rewards)
        ctx = guide_context(engine, mix, teachers)
        out, m = AMPO(injection_strategy="always", num_off_policy_targets=k, max_available_targets=pool).guide(batch, ctx)
        assert [len(teacher_rows(out, g)) for g in range(4)] == expect, (k, pool)
        assert out.counts == [4, 4, 4, 5]
        # unverified teacher text still counts as correct once injected (and is counted)
        assert m["guide/ampo_unverified"] >= 0 and all(
            r == 1.0 for r, kd in zip(out.rewards.tolist(), out.row_kind.tolist()) if kd == OFF_POLICY)


def test_hybrid_guides_a_successful_group_with_its_probability(tiny_model):
    engine, mix = setup(tiny_model, {"addition": {"digits": [1, 1]}})
    problems = [mix.sources["addition"].problem(s) for s in range(2)]
    teachers = {"t": Fixed("7")}
    for p, expect in ((1.0, [1, 1]), (0.0, [1, 0])):
        batch = rollouts(engine, problems, [[0.0, 0.0], [1.0, 0.0]])
        out, _ = AMPO(injection_strategy="hybrid", hybrid_probability=p).guide(batch, guide_context(engine, mix, teachers))
        assert [len(teacher_rows(out, g)) for g in range(2)] == expect


def test_teacher_token_loss_and_the_per_sequence_option():
    # two teacher rows of 2 and 4 tokens, Â = 1 and 0.5
    probs = torch.tensor([[0.1, 0.3, 1.0, 1.0], [0.2, 0.4, 0.6, 0.8]], dtype=torch.float64)
    mask = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]], dtype=torch.float64)
    adv = torch.tensor([[1.0] * 4, [0.5] * 4], dtype=torch.float64)
    f = probs / (probs + 0.1)
    per_token = -adv * f
    per_seq = (per_token * mask).sum(-1) / mask.sum(-1)

    def ctx(mode):
        return LossContext(logp=probs.log(), old_logp=probs.log(), behaviour_logp=torch.zeros_like(probs),
                           advantages=adv, mask=mask, kind=torch.tensor([OFF_POLICY, OFF_POLICY]),
                           extras={"loss_agg_mode": mode, "max_length": 6})

    loss, metrics = AMPO().row_loss(ctx("seq-mean-token-sum-norm"))
    assert torch.allclose(loss * mask, per_token * mask)  # token: LUFFY's f(π) weight per token
    assert metrics["loss/ampo_off_seq_loss"] == pytest.approx(per_seq.mean().item())
    for mode in ("seq-mean-token-sum-norm", "token-mean", "seq-mean-token-mean"):
        loss, _ = AMPO(off_policy_loss_impl="seq").row_loss(ctx(mode))
        # whatever the aggregation, each teacher row counts as the mean of its own tokens
        assert aggregate(loss, mask, mode, 6).item() == pytest.approx(per_seq.mean().item())
    assert sequence_mean_scale(ctx("seq-mean-token-sum-norm")).tolist() == [3.0, 1.5]
    assert sequence_mean_scale(ctx("token-mean")).tolist() == [1.5, 0.75]


def test_ampo_recipe_trains(tmp_path, tiny_config):
    cfg = tiny_config(recipe="ampo", tasks=TASKS, train={"steps": 2})
    assert set(cfg.teachers) == {"solver_asc", "solver_desc", "reference"}
    Trainer(cfg, tmp_path / "run", progress=False, log=lambda *_: None).run()
    rows = run_metrics(tmp_path / "run")
    assert len(rows) == 2
    for r in rows:
        assert r["rollouts"] == 16 and r["rows/off_policy"] == r["guide/ampo_teacher_rows"] > 0  # replaced
        # the testbed's solutions are one line without answer tags: every score is 0 (B = A, format 0),
        # best_k keeps pool order (the teachers in turn: solver_asc first)
        assert r["guide/ampo_score"] == r["guide/ampo_score_pool"] == 0.0
        assert r["guide/ampo_comprehension"] == r["guide/ampo_comprehension_prompt"]
        assert r["guide/ampo_from/solver_asc"] == r["guide/ampo_groups_injected"]
        # pools of at most 2 distinct solutions here (addition: one answer; countdown over 2 numbers: the two
        # orders), so k = 2 injects every candidate, each read once: all teacher tokens are injected ones
        assert r["guide/ampo_teacher_rows"] == r["guide/ampo_candidates"]
        assert r["tokens/teacher"] == r["guide/ampo_teacher_tokens"] and math.isfinite(r["loss/total"])
    assert rows[-1]["tokens/total"] == sum(r["tokens/step"] for r in rows)


def test_ampo_stacks_with_knapsack_and_clip_cov(tmp_path, tiny_config):
    cfg = tiny_config(recipe="ampo", tasks=TASKS, train={"steps": 2},
                      budget={"name": "knapsack", "min_n": 2, "max_n": 8},
                      objective=[{"name": "clip_cov"}, {"name": "entropy", "coef": 0.001}])
    Trainer(cfg, tmp_path / "run", progress=False, log=lambda *_: None).run()
    rows = run_metrics(tmp_path / "run")
    assert len(rows) == 2 and all(math.isfinite(r["loss/total"]) for r in rows)
    assert sum(r["rows/off_policy"] for r in rows) > 0
