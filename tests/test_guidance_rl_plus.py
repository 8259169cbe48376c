"""RL-PLUS (arXiv:2508.00222): LUFFY's layout; teacher tokens get −r_MIS·Â·(1 − sg π)^γ with the
balance-heuristic ratio r_MIS = π_θ/(½π_old + ½ω), ω = ½(π_old + 1)."""
import math

import pytest
import torch

from explorl.batch import OFF_POLICY, ON_POLICY
from explorl.explore.guidance.rl_plus import RLPlus, exploration_advantage, mis_ratio
from explorl.teachers.solver import Solver
from explorl.train.loop import Trainer
from loss_records import kind_mask, masked_mean, mean_centred, per_step_mean, record_batches, record_row_loss
from teacher_rows_helpers import guide_context, loss_context, rollouts, setup
from run_records import run_metrics

TASKS = {"addition": {"digits": [1, 1]}, "countdown": {"numbers": [2, 3]}}


def test_mis_ratio_and_exploration_advantage_by_hand():
    # π_old = 0.2: ω = ½(0.2 + 1) = 0.6, so r_MIS = π_θ / (0.1 + 0.3) = 0.3 / 0.4 = 0.75 for π_θ = 0.3
    logp, old = torch.tensor([math.log(0.3)]), torch.tensor([math.log(0.2)])
    assert mis_ratio(logp, old).item() == pytest.approx(0.75)
    # on-policy-like tokens (π_θ = π_old = p): r = 2p / (p + ½(p+1)) = 4p / (3p + 1)
    for p in (0.01, 0.5, 1.0):
        assert mis_ratio(torch.tensor([math.log(p)]), torch.tensor([math.log(p)])).item() == pytest.approx(4 * p / (3 * p + 1))
    # Â_exp = Â · (1 − π)^0.5
    assert exploration_advantage(torch.tensor([2.0]), logp, 0.5).item() == pytest.approx(2 * math.sqrt(0.7))


def test_teacher_token_loss_and_gradient_by_hand():
    adv = 2.0
    ctx = loss_context([0.3], adv, old_probs=[0.2])
    loss, metrics = RLPlus().row_loss(ctx)
    a_exp = adv * math.sqrt(0.7)
    assert loss.item() == pytest.approx(-0.75 * a_exp)
    loss.sum().backward()
    # the exploration factor is detached: d/d log π of −r·Â_exp is −r·Â_exp (r ∝ π_θ)
    assert ctx.logp.grad.item() == pytest.approx(-0.75 * a_exp)
    assert metrics["loss/rl_plus_mis_ratio"] == pytest.approx(0.75)


def test_a_confident_teacher_token_gets_almost_no_weight():
    probs = [0.05, 0.999, 1.0]
    ctx = loss_context(probs, 1.0)
    loss, _ = RLPlus().row_loss(ctx)
    loss.sum().backward()
    grad = ctx.logp.grad[0].abs().tolist()
    factors = [(1 - p) ** 0.5 for p in probs]
    assert factors[1] < 0.035 and factors[0] > 0.97
    assert grad[2] == 0.0  # π = 1: nothing left to explore
    # the advantage a token keeps: nearly all for the rare one, about 3% for the confident one;
    # with r_MIS ∝ π_θ the confident token still moves less than the rare one
    weights = exploration_advantage(torch.ones(1, 3), ctx.logp, 0.5)[0].tolist()
    assert weights == pytest.approx(factors) and weights[1] < 0.035 * weights[0] / 0.97
    assert grad[1] < grad[0]
    for p, g in zip(probs, grad):
        assert g == pytest.approx(4 * p / (3 * p + 1) * (1 - p) ** 0.5, abs=1e-9)


def test_teacher_rows_are_added_to_the_groups(tiny_model):
    engine, mix = setup(tiny_model, {"addition": {"digits": [1, 1]}})
    problems = [mix.sources["addition"].problem(s) for s in range(2)]
    batch = rollouts(engine, problems, [[0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    mixed, m = RLPlus().guide(batch, guide_context(engine, mix, {"solver": Solver()}))
    assert mixed.counts == [4, 4] and m["guide/rl_plus_teacher_rows"] == 2
    kinds = mixed.row_kind.tolist()
    assert kinds == [ON_POLICY] * 3 + [OFF_POLICY] + [ON_POLICY] * 3 + [OFF_POLICY]
    assert mixed.rewards.tolist() == [0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]


def test_rl_plus_recipe_trains(tmp_path, tiny_config):
    """A run of the recipe, its numbers recomputed from what the method saw: the mixed group's
    mean-centred advantage, −r_MIS·Â·(1 − π)^0.5 with r_MIS = π/(0.75·π_old + 0.25) on every teacher
    token, and the logged mean r_MIS."""
    cfg = tiny_config(recipe="rl_plus", tasks=TASKS, train={"steps": 2})
    trainer = Trainer(cfg, tmp_path / "run", progress=False, log=lambda *_: None)
    method = trainer.plugins.guidance[0]
    calls, batches = record_row_loss(method), record_batches(method)
    trainer.run()
    rows = run_metrics(tmp_path / "run")
    assert len(rows) == 2 and len(batches) == 2 and {c["step"] for c in calls} == {1, 2}
    for r, batch in zip(rows, batches):
        assert r["rows/off_policy"] == 4 and r["tokens/teacher"] > 0 and math.isfinite(r["loss/total"])
        assert torch.allclose(batch.advantages, mean_centred(batch), atol=1e-6)
    mis = lambda c: c["logp"].exp() / (0.75 * c["old_logp"].exp() + 0.25)  # noqa: E731
    for c in calls:
        off = kind_mask(c, OFF_POLICY)
        expected = -mis(c) * c["advantages"] * (1 - c["logp"].exp()).clamp_min(0) ** 0.5
        assert torch.allclose(c["loss"] * off, expected * off, atol=1e-6)
    ratios = per_step_mean(calls, lambda c: masked_mean(mis(c), kind_mask(c, OFF_POLICY)))
    assert [r["loss/rl_plus_mis_ratio"] for r in rows] == pytest.approx([ratios[1], ratios[2]], abs=1e-6)
    assert rows[-1]["tokens/total"] == sum(r["tokens/step"] for r in rows)


def test_rl_plus_stacks_with_a_budget_and_an_objective(tmp_path, tiny_config):
    cfg = tiny_config(recipe="rl_plus", tasks=TASKS, train={"steps": 2},
                      budget={"name": "knapsack", "min_n": 2, "max_n": 8},
                      objective=[{"name": "clip_cov"}, {"name": "entropy", "coef": 0.001}])
    Trainer(cfg, tmp_path / "run", progress=False, log=lambda *_: None).run()
    rows = run_metrics(tmp_path / "run")
    assert len(rows) == 2 and all(r["rows/off_policy"] == 4 for r in rows)
