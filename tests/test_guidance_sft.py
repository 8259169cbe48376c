"""``sft``: the supervised term coef(s)·(−log π_θ(e_t)) on teacher demonstrations, added to the RL
loss as its own token mean, its coefficient schedules, and a step on it lowering the
demonstrations' NLL (the SFT-then-GRPO recipe)."""
import math

import pytest
import torch

from explorl.batch import DEMO, ON_POLICY
from explorl.explore.guidance.sft import SFT
from explorl.policy.sampling import token_logp_entropy
from explorl.train.loop import Trainer
from loss_records import kind_mask, record_row_loss
from teacher_rows_helpers import loss_context
from run_records import run_metrics


def test_the_loss_is_coef_times_the_nll_and_its_gradient_raises_log_prob():
    ctx = loss_context([0.5, 0.25], 0.0, kind=DEMO)
    loss, _ = SFT(coef=0.3).row_loss(ctx)
    assert loss[0].tolist() == pytest.approx([0.3 * math.log(2), 0.3 * math.log(4)], rel=1e-12)
    loss.sum().backward()
    # d(−c log π)/d log π = −c: descending the loss raises the demonstration's log-prob
    assert ctx.logp.grad[0].tolist() == pytest.approx([-0.3, -0.3], rel=1e-12)


def test_the_linear_and_cosine_schedules_by_hand():
    linear = SFT(coef=0.4, schedule="linear", decay_steps=10)
    assert [linear.coefficient(s) for s in (0, 2, 5, 10, 15)] == pytest.approx([0.4, 0.32, 0.2, 0.0, 0.0])
    cosine = SFT(coef=0.4, schedule="cosine", decay_steps=10)
    # 0.4·(1 + cos(π s/10))/2: s = 2 → 0.4·(1 + 0.809017)/2, s = 8 → 0.4·(1 − 0.809017)/2
    assert [cosine.coefficient(s) for s in (0, 2, 5, 8, 10, 15)] == pytest.approx(
        [0.4, 0.3618034, 0.2, 0.0381966, 0.0, 0.0], abs=1e-7)
    assert [SFT(coef=0.4).coefficient(s) for s in (0, 5, 50)] == [0.4, 0.4, 0.4]
    # the loss takes the step's coefficient in the joint phase
    ctx = loss_context([0.5], 0.0, kind=DEMO)
    ctx.step = 2
    loss, _ = SFT(coef=0.4, schedule="cosine", decay_steps=10).row_loss(ctx)
    assert loss.item() == pytest.approx(0.3618034 * math.log(2), rel=1e-6)


def test_sft_loss_is_rl_plus_coef_times_its_own_token_mean():
    """sft: L = L_RL + coef·L_SFT, the SFT loss the mean NLL over the demonstration tokens alone (LUFFY's
    SFT+RL baseline: sft_loss·coef + pg_loss). Rollouts of 2, 3 and 1 tokens (Â = 2, −1, 0.5), one
    demonstration of 3 tokens, every token at P(token 0) = 0.8, ratio 1."""
    from explorl.explore.objective.ppo_clip import PPOClip
    from update_helpers import TableEngine, one_update, policy_logp, table_batch, two_token_logits
    batch = table_batch([ON_POLICY, ON_POLICY, ON_POLICY, DEMO], [[1, 1, 0], [1, 1, 1], [1, 0, 0], [1, 1, 1]],
                        [[0, 0, 0]] * 3 + [[0, 0, 1]], [2.0, -1.0, 0.5, 0.0])
    engine = TableEngine(torch.tensor([[two_token_logits(0.8)] * 3] * 4))
    batch.old_logp = policy_logp(engine, batch)
    loss, grad = one_update(engine, batch, [PPOClip(0.2, 0.2)], [SFT(coef=0.1)])
    l_rl = -(2.0 * 2 - 1.0 * 3 + 0.5 * 1) / 6
    l_sft = (-2 * math.log(0.8) - math.log(0.2)) / 3
    assert loss == pytest.approx(l_rl + 0.1 * l_sft, rel=1e-5)
    p, e = torch.tensor([0.8, 0.2]), torch.eye(2)
    for t, y in enumerate([0, 0, 1]):
        assert torch.allclose(grad[3, t], 0.1 / 3 * (p - e[y]), atol=1e-7), t
    assert torch.allclose(grad[1, 0], 1.0 / 6 * (e[0] - p), atol=1e-7)     # Â = −1: −Â/6·(e_0 − p)


def test_a_run_logs_the_scheduled_coefficient(tmp_path, tiny_config):
    cfg = tiny_config(recipe="sft", teachers={"solver": {"kind": "solver"}}, tasks={"addition": {"digits": [1, 1]}},
                      guidance=[{"name": "sft", "coef": 0.5, "schedule": "linear", "decay_steps": 4}],
                      train={"steps": 3})
    trainer = Trainer(cfg, tmp_path / "run", progress=False, log=lambda *_: None)
    calls = record_row_loss(trainer.plugins.guidance[0])
    trainer.run()
    rows = run_metrics(tmp_path / "run")
    assert [r["guide/sft_coef"] for r in rows] == pytest.approx([0.375, 0.25, 0.125])   # 0.5·(1 − s/4)
    assert all(r["rows/demo"] == 4 for r in rows)
    # the demonstration tokens' loss in the run: that step's coefficient times their NLL
    assert {c["step"] for c in calls} == {1, 2, 3}
    for c in calls:
        demo = kind_mask(c, DEMO)
        assert demo.sum() > 0
        assert torch.allclose(c["loss"] * demo, 0.5 * (1 - c["step"] / 4) * -c["logp"] * demo, atol=1e-6)


def test_sft_then_grpo_trains_on_the_demos_at_coef_one_and_lowers_their_nll(tmp_path, tiny_config):
    """The recipe's phase before: every update on teacher demonstrations lowers their NLL, and the
    loss is 1·NLL whatever the step (no schedule in that phase)."""
    cfg = tiny_config(recipe="sft_then_grpo", tasks={"addition": {"digits": [1, 1]}},
                      guidance=[{"name": "sft", "phase": "before", "coef": 1.0, "teacher_tokens": 60}],
                      train={"steps": 1, "lr": 1e-3})
    trainer = Trainer(cfg, tmp_path / "run", progress=False, log=lambda *_: None)
    method = trainer.plugins.guidance[0]
    assert (method.phase, method.coef, method.schedule) == ("before", 1.0, "constant")
    ctx = loss_context([0.5], 0.0, kind=DEMO)
    ctx.step = 10_000
    loss, _ = method.row_loss(ctx)
    assert loss.item() == pytest.approx(math.log(2), rel=1e-12)

    def nll(batch):
        with torch.no_grad():
            logits = trainer.engine.response_logits(batch)
            logp, _ = token_logp_entropy(logits, batch.response_ids, False)
        return float(-(logp * batch.mask).sum() / batch.mask.sum())

    changes = []
    before_training = method.before_training

    def spy(ctx):
        update = ctx.update

        def measured(batch):
            assert (batch.row_kind == DEMO).all() and not (batch.row_kind == ON_POLICY).any()
            start = nll(batch)
            out = update(batch)
            changes.append(nll(batch) - start)
            return out
        ctx.update = measured
        return before_training(ctx)

    method.before_training = spy
    try:
        trainer._before_training()
    finally:
        trainer.close()
    assert len(changes) >= 2 and all(c < 0 for c in changes), changes


def test_sft_then_grpo_is_evaluated_after_its_phase_and_says_the_phase_ran(tmp_path, tiny_config):
    """eval.json holds an evaluation after the SFT phase (where "tokens to a level" is measured
    from), every evaluation keeps its per-problem counts, the cheaper evaluations along the way
    use eval.every_samples, and step 1 carries the phase's guide/sft_steps (its engagement)."""
    import json

    from explorl.compare.results import engagement, read_metrics
    from explorl.eval.passk import pass_at_k
    cfg = tiny_config(recipe="sft_then_grpo", guidance=[{"name": "sft", "phase": "before", "coef": 1.0,
                                                         "teacher_tokens": 40}],
                      train={"steps": 2}, eval={"every_tokens": 1, "every_samples": 2})
    Trainer(cfg, tmp_path / "run", progress=False, log=lambda *_: None).run()
    ev = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert set(ev) == {"start", "after_phase", "end"}
    for part in ev.values():
        per = part["per_problem"]
        assert part["samples"] == 4 and len(per["correct"]) == len(per["id"]) == 4  # 2 sources x 2 problems
        assert per["id"] == ev["start"]["per_problem"]["id"]
        for k in (1, 4):
            assert part[f"pass@{k}"]["all"] == pytest.approx(sum(pass_at_k(4, c, k) for c in per["correct"]) / 4)
        assert part["entropy"]["all"] == pytest.approx(sum(per["entropy_sum"]) / sum(per["tokens"]))
        assert all(w <= 4 for w in per["wrong"]) and sum(per["wrong"]) == 16 - sum(per["correct"])
    metrics = read_metrics(tmp_path / "run")
    assert metrics[0]["guide/sft_steps"] >= 1 and metrics[0]["tokens/teacher"] >= 40
    along = [m for m in metrics if "heldout/correct" in m]
    assert along and all(m["heldout/samples"] == 2 and len(m["heldout/correct"]) == 4 for m in along)
    assert all(m["heldout/pass@1"] == pytest.approx(sum(m["heldout/correct"]) / 8) for m in along)
    assert "heldout/pass@4" not in along[0]  # only the ks the cheaper evaluation can estimate
    assert engagement(tmp_path / "run", metrics)["components"]["sft"]["engaged"]
