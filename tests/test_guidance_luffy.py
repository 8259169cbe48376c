"""LUFFY (arXiv:2504.14945): a teacher row added to each group, in the group statistics, its
tokens weighted by f(π) = π/(π+γ) and counted apart from the policy's budget."""
import math

import pytest
import torch

from explorl.batch import OFF_POLICY, ON_POLICY
from explorl.explore.advantage.grpo import GRPO
from explorl.explore.guidance.luffy import Luffy
from explorl.explore.objective.ppo_clip import PPOClip
from explorl.teachers.solver import Solver
from explorl.train.loop import Trainer
from loss_records import kind_mask, masked_mean, mean_centred, per_step_mean, record_batches, record_row_loss
from teacher_rows_helpers import guide_context, loss_context, rollouts, setup
from run_records import run_metrics

TASKS = {"addition": {"digits": [1, 1]}, "countdown": {"numbers": [2, 3]}}


def test_teacher_token_gradient_is_the_shaped_one_by_hand():
    gamma, adv = 0.1, 0.5
    ctx = loss_context([0.05, 0.9], adv)
    loss, metrics = Luffy(gamma=gamma).row_loss(ctx)
    loss.sum().backward()
    for p, g in zip([0.05, 0.9], ctx.logp.grad[0].tolist()):
        assert g == pytest.approx(-adv * gamma * p / (p + gamma) ** 2, rel=1e-9)  # d(−Â f(π))/d log π
    assert loss[0].tolist() == pytest.approx([-adv * 0.05 / 0.15, -adv * 0.9 / 1.0])
    # plain imitation (−Â log π) gives every token the gradient −Â: relative to it the rare
    # token keeps 0.05·0.1/0.15² = 0.22 of the update, the confident one 0.9·0.1/1.0² = 0.09
    relative = [g / -adv for g in ctx.logp.grad[0].tolist()]
    assert relative == pytest.approx([0.05 * 0.1 / 0.15 ** 2, 0.09]) and relative[0] > relative[1]
    assert metrics["loss/luffy_off_prob"] == pytest.approx(0.475)


def test_target_probs_uses_the_teachers_probability():
    ctx = loss_context([0.2, 0.6], 1.0, behaviour_probs=[0.5, 0.8])
    loss, _ = Luffy(target_probs=True).row_loss(ctx)
    assert loss[0].tolist() == pytest.approx([-0.2 / 0.5, -0.6 / 0.8], rel=1e-5)
    clipped, _ = Luffy(target_probs=True, off_max_clip=0.5).row_loss(loss_context([0.2, 0.6], 1.0, behaviour_probs=[0.5, 0.8]))
    assert clipped[0].tolist() == pytest.approx([-0.4, -0.5], rel=1e-5)


def test_teacher_row_is_in_the_group_statistics(tiny_model):
    engine, mix = setup(tiny_model, {"addition": {"digits": [1, 1]}})
    problem = mix.sources["addition"].problem(5)
    batch = rollouts(engine, [problem], [[0.0] * 7])
    ctx = guide_context(engine, mix, {"solver": Solver()})
    mixed, metrics = Luffy().guide(batch, ctx)
    assert mixed.size == 8 and mixed.row_kind.tolist() == [ON_POLICY] * 7 + [OFF_POLICY]
    assert mixed.rewards.tolist() == [0.0] * 7 + [1.0] and metrics["guide/luffy_teacher_rows"] == 1
    assert mixed.texts[-1] == problem.answer
    # 7 wrong + 1 correct teacher: mean 1/8, so Â = 7/8 for the teacher and −1/8 for each rollout
    adv, _ = GRPO(scale_by_std=False).compute(mixed.groups())
    assert adv[0].tolist() == pytest.approx([-0.125] * 7 + [0.875])
    # the paper's variant divides by the (unbiased) std of the mixed group, sqrt(1/8)
    adv, _ = GRPO(scale_by_std=True).compute(mixed.groups())
    assert adv[0, -1].item() == pytest.approx(0.875 / math.sqrt(1 / 8), rel=1e-5)
    assert adv[0, 0].item() == pytest.approx(-0.125 / math.sqrt(1 / 8), rel=1e-5)


def test_n_off_teacher_rows_per_group(tiny_model):
    engine, mix = setup(tiny_model, {"countdown": {"numbers": [3, 4]}})
    solver = Solver()
    solver.bind(mix, engine, None)
    problems = [p for p in (mix.sources["countdown"].problem(s) for s in range(50)) if len(solver.solutions(p, 2)) == 2][:2]
    batch = rollouts(engine, problems, [[0.0] * 3, [1.0] * 3])
    mixed, m = Luffy(n_off=2).guide(batch, guide_context(engine, mix, {"solver": solver}))
    assert mixed.counts == [5, 5] and m["guide/luffy_teacher_rows"] == 4
    assert all(r == 1.0 for r, k in zip(mixed.rewards.tolist(), mixed.row_kind.tolist()) if k == OFF_POLICY)


def test_recipe_drops_the_clip_as_the_code_does():
    # the recipe's ppo_clip settings: the surrogate is −Â·ρ for every ratio (loss_remove_clip)
    from explorl.explore.base import LossContext
    ratio = torch.tensor([[0.1, 0.7, 1.0, 3.0, 50.0]])
    for adv in (1.0, -1.0):
        ctx = LossContext(logp=ratio.log(), old_logp=torch.zeros_like(ratio), behaviour_logp=torch.zeros_like(ratio),
                          advantages=torch.full_like(ratio, adv), mask=torch.ones_like(ratio))
        loss, _ = PPOClip(clip_ratio_low=1.0, clip_ratio_high=1.0e9, clip_ratio_c=None).term(ctx)
        assert torch.allclose(loss, -adv * ratio)


def test_teacher_tokens_are_not_in_the_policys_budget(tmp_path, tiny_config):
    cfg = tiny_config(recipe="luffy", tasks=TASKS, train={"steps": 2})
    trainer = Trainer(cfg, tmp_path / "run", progress=False, log=lambda *_: None)
    method, seen = trainer.plugins.guidance[0], []
    guide = method.guide

    def spy(batch, ctx):
        out, m = guide(batch, ctx)
        seen.append(out)
        return out, m

    method.guide = spy
    try:
        m = trainer.train_step()
    finally:
        trainer.close()
    batch = seen[0]
    kinds = batch.row_kind
    assert (kinds == OFF_POLICY).sum() == cfg.train.problems_per_step
    assert batch.counts == [cfg.train.rollouts_per_problem + 1] * cfg.train.problems_per_step  # added, not replacing
    assert m["tokens/step"] == int(batch.mask[kinds == ON_POLICY].sum())
    assert m["tokens/teacher"] == int(batch.mask[kinds == OFF_POLICY].sum()) > 0
    assert m["tokens/total"] == m["tokens/step"]


def test_luffy_recipe_trains(tmp_path, tiny_config):
    """A run of the recipe, its numbers recomputed from what the method saw: the mixed group's
    mean-centred advantage, −Â·π/(π + 0.1) on every teacher token, and the logged mean weight."""
    cfg = tiny_config(recipe="luffy", tasks=TASKS, train={"steps": 2})
    assert cfg.train.loss_agg_mode == "seq-mean-token-sum-norm"
    trainer = Trainer(cfg, tmp_path / "run", progress=False, log=lambda *_: None)
    method = trainer.plugins.guidance[0]
    calls, batches = record_row_loss(method), record_batches(method)
    trainer.run()
    rows = run_metrics(tmp_path / "run")
    assert len(rows) == 2 and len(batches) == 2 and {c["step"] for c in calls} == {1, 2}
    for r, batch in zip(rows, batches):
        assert r["rows/off_policy"] == 4 and r["guide/luffy_teacher_reward"] == 1.0 and math.isfinite(r["loss/total"])
        assert torch.allclose(batch.advantages, mean_centred(batch), atol=1e-6)   # teacher rows in the group mean
    for c in calls:
        off = kind_mask(c, OFF_POLICY)
        p = c["logp"].exp()
        assert torch.allclose(c["loss"] * off, -c["advantages"] * p / (p + 0.1) * off, atol=1e-6)
    weights = per_step_mean(calls, lambda c: masked_mean(c["logp"].exp() / (c["logp"].exp() + 0.1), kind_mask(c, OFF_POLICY)))
    assert [r["loss/luffy_off_weight"] for r in rows] == pytest.approx([weights[1], weights[2]], abs=1e-6)
    assert rows[-1]["tokens/total"] == sum(r["tokens/step"] for r in rows)
    assert rows[-1]["tokens/teacher_total"] == sum(r["tokens/teacher"] for r in rows)


def test_luffy_stacks_with_a_budget_and_an_objective(tmp_path, tiny_config):
    cfg = tiny_config(recipe="luffy", tasks=TASKS, train={"steps": 2},
                      budget={"name": "knapsack", "min_n": 2, "max_n": 8},
                      objective=[{"name": "clip_cov"}, {"name": "entropy", "coef": 0.001}])
    Trainer(cfg, tmp_path / "run", progress=False, log=lambda *_: None).run()
    rows = run_metrics(tmp_path / "run")
    assert len(rows) == 2 and all(r["rows/off_policy"] == 4 for r in rows)
