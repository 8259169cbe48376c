"""RED (Recall-Extend Dynamics, unofficial form): the SFT weight from the ratio of the entropy
changes on demonstration vs rollout rows, the accuracy-aware shift of the demonstration loss,
and runs of its recipe alone and stacked."""
import math

import pytest
import torch

from explorl.batch import DEMO, ON_POLICY, RolloutBatch
from explorl.explore.base import LossContext, StepStats
from explorl.explore.guidance.red import RED, accuracy_factor, red_weight
from explorl.tasks.problem import Problem
from run_records import unbroken_and_resumed


def make_batch(rewards_per_problem, demo_per_problem=1, length=3):
    """P problems, each with its on-policy rows (rewards given) followed by ``demo_per_problem``
    demonstration rows; every response ``length`` tokens long."""
    problems = [Problem(id=f"p{i}", prompt="1+1=", answer="2", source="addition")
                for i in range(len(rewards_per_problem))]
    counts, group, kinds, rewards = [], [], [], []
    for g, rs in enumerate(rewards_per_problem):
        counts.append(len(rs) + demo_per_problem)
        group += [g] * (len(rs) + demo_per_problem)
        kinds += [ON_POLICY] * len(rs) + [DEMO] * demo_per_problem
        rewards += list(rs) + [1.0] * demo_per_problem
    R = len(group)
    return RolloutBatch(problems=problems, counts=counts, group=torch.tensor(group),
                        prompt_ids=torch.ones(len(problems), 2, dtype=torch.long),
                        prompt_mask=torch.ones(len(problems), 2), response_ids=torch.zeros(R, length, dtype=torch.long),
                        mask=torch.ones(R, length), behaviour_logp=torch.zeros(R, length),
                        old_logp=torch.zeros(R, length), entropy=torch.ones(R, length), texts=["x"] * R,
                        rewards=torch.tensor(rewards), advantages=torch.zeros(R), kind=torch.tensor(kinds))


class UniformEngine:
    """response_logits: uniform over ``n_online`` tokens on on-policy rows, over ``n_offline`` on
    demonstration rows (token entropies log n)."""

    def __init__(self, n_online, n_offline, vocab=8):
        self.n_online, self.n_offline, self.vocab = n_online, n_offline, vocab

    def response_logits(self, batch, rows):
        out = torch.full((len(rows), batch.response_ids.shape[1], self.vocab), -1e9)
        for i, r in enumerate(rows.tolist()):
            n = self.n_offline if int(batch.kind[r]) == DEMO else self.n_online
            out[i, :, :n] = 0.0
        return out


def test_weight_formula_by_hand():
    assert red_weight(0.3, 0.1) == pytest.approx(3.0)
    assert red_weight(-0.3, 0.1) == pytest.approx(3.0)          # absolute changes
    assert red_weight(0.05, 0.1) == 1.0                          # clipped below at 1
    assert red_weight(2.0, 0.1) == 5.0                           # clipped above at G = 5
    assert red_weight(0.3, 0.0) == 5.0                           # no online change: the bound


@pytest.mark.parametrize("n_online,n_offline", [(2, 4), (4, 8), (7, 8)])
def test_observe_sets_the_weight_from_the_entropy_changes(n_online, n_offline):
    """Before: entropy 1 on every token; after (the fake updated policy): log n_online on the
    rollouts, log n_offline on the demonstrations. w = clip(|ΔH_off| / |ΔH_on|, 1, 5)."""
    red = RED(ema=0.0)
    red._engine = UniformEngine(n_online, n_offline)
    batch = make_batch([[1.0, 0.0], [0.0, 0.0]])
    metrics = red.observe(StepStats(step=1, problems=batch.problems, rewards=[], advantages=[], entropy=0.0,
                                    tokens=0, extras={"batch": batch}))
    dh_on, dh_off = math.log(n_online) - 1.0, math.log(n_offline) - 1.0
    assert metrics["guide/red_dH_online"] == pytest.approx(dh_on, abs=1e-5)
    assert metrics["guide/red_dH_offline"] == pytest.approx(dh_off, abs=1e-5)
    assert red.weight == pytest.approx(min(max(abs(dh_off) / abs(dh_on), 1.0), 5.0), rel=1e-4)
    assert red.state_dict() == {"weight": red.weight, "ema_offline": None, "ema_online": None}


def test_ema_smooths_the_changes():
    red = RED(ema=0.5)
    batch = make_batch([[1.0, 0.0]])
    stats = StepStats(step=1, problems=batch.problems, rewards=[], advantages=[], entropy=0.0, tokens=0,
                      extras={"batch": batch})
    red._engine = UniformEngine(2, 8)
    red.observe(stats)                                # |ΔH_off| = log 8 − 1, |ΔH_on| = 1 − log 2
    a_off, a_on = math.log(8) - 1, 1 - math.log(2)
    red._engine = UniformEngine(2, 2)
    red.observe(stats)                                # now both 1 − log 2
    b = 1 - math.log(2)
    assert red.weight == pytest.approx(red_weight(0.5 * a_off + 0.5 * b, 0.5 * a_on + 0.5 * b), rel=1e-4)


def test_accuracy_factor_by_hand():
    assert accuracy_factor(0.0) == pytest.approx(5.0)
    assert accuracy_factor(0.5) == pytest.approx(1.0)
    assert accuracy_factor(1.0) == pytest.approx(0.2)
    assert accuracy_factor(0.75) == pytest.approx(5 ** -0.5)


def test_policy_shift_on_an_accurate_and_an_inaccurate_problem():
    """Problem 0 is solved by 3 of 4 rollouts, problem 1 by none: the demonstration of problem 0
    gets f = 5^(1−1.5) = 0.447, that of problem 1 f = 5 (imitate). The demonstration loss is
    coef · w · f · (−log π) per token; on-policy rows get no term from red."""
    red = RED(coef=0.1)
    red.weight = 2.0
    batch = make_batch([[1.0, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    red.augment(batch, None)
    demo_rows = (batch.kind == DEMO).nonzero().squeeze(-1).tolist()
    assert red._row_factor[demo_rows].tolist() == pytest.approx([5 ** -0.5, 5.0])
    assert red._row_factor[batch.kind == ON_POLICY].tolist() == [1.0] * 8
    logp = torch.full((batch.size, 3), math.log(0.5))
    ctx = LossContext(logp=logp, old_logp=logp, behaviour_logp=logp, advantages=torch.zeros(batch.size, 3),
                      mask=batch.mask, rows=torch.arange(batch.size), kind=batch.kind)
    loss, _ = red.row_loss(ctx)
    assert loss[demo_rows[0]].tolist() == pytest.approx([0.1 * 2.0 * 5 ** -0.5 * math.log(2)] * 3)
    assert loss[demo_rows[1]].tolist() == pytest.approx([0.1 * 2.0 * 5.0 * math.log(2)] * 3)
    # the batch-accuracy variant (the third-party code's): one factor for every demonstration, acc = 3/8
    red_b = RED(accuracy_shift="batch")
    red_b.augment(batch, None)
    assert red_b._row_factor[demo_rows].tolist() == pytest.approx([5 ** (1 - 2 * 3 / 8)] * 2)
    red_off = RED(accuracy_shift="off")
    red_off.augment(batch, None)
    assert red_off._row_factor.tolist() == [1.0] * batch.size


def test_recipe_runs_end_to_end(tiny_config, tmp_path):
    from explorl.train.loop import Trainer
    cfg = tiny_config(recipe="red", tasks={"addition": {"digits": [1, 1]}, "countdown": {"numbers": [2, 3]}},
                      train={"steps": 2})
    lines = []
    Trainer(cfg, tmp_path / "run", progress=False, log=lines.append).run()
    import json
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["rows/demo"] > 0 and r["tokens/teacher"] > 0 for r in rows)
    assert rows[0]["guide/red_weight"] == 1.0                   # the initial weight
    # w = clip(|ΔH_off| / |ΔH_on|, 1, 5) of the EMAs (decay 0.9), which start at the first step's changes;
    # the logged changes carry 6 decimals (~2e-4 of their size), hence rel=1e-3
    off, on = abs(rows[0]["guide/red_dH_offline"]), abs(rows[0]["guide/red_dH_online"])
    assert rows[0]["guide/red_next_weight"] == pytest.approx(red_weight(off, on), rel=1e-3)
    off = 0.9 * off + 0.1 * abs(rows[1]["guide/red_dH_offline"])
    on = 0.9 * on + 0.1 * abs(rows[1]["guide/red_dH_online"])
    assert rows[1]["guide/red_next_weight"] == pytest.approx(red_weight(off, on), rel=1e-3)
    assert rows[1]["guide/red_weight"] == pytest.approx(rows[0]["guide/red_next_weight"])
    # every problem's rollouts failed (accuracy 0): f_acc = 5 on every demonstration
    assert [r["guide/red_acc_factor"] for r in rows] == [5.0, 5.0]
    state = torch.load(max((tmp_path / "run" / "ckpt").glob("step_*")) / "trainer.pt", weights_only=True)
    assert any(isinstance(s, dict) and s.get("weight") == pytest.approx(rows[1]["guide/red_next_weight"])
               for s in state["plugins"])


def test_stacks_with_knapsack_and_clip_cov(tiny_config, tmp_path):
    from explorl.train.loop import Trainer
    cfg = tiny_config(recipe="red", tasks={"addition": {"digits": [1, 1]}, "countdown": {"numbers": [2, 3]}},
                      budget={"name": "knapsack"}, objective=[{"name": "clip_cov"}], train={"steps": 2})
    Trainer(cfg, tmp_path / "run", progress=False, log=lambda *_: None).run()
    assert (tmp_path / "run" / "eval.json").exists()


def test_a_resumed_run_equals_an_unbroken_one(tiny_config, tmp_path):
    """The SFT weight and its EMA state are checkpointed: stopping after step 1 and resuming gives the
    same steps 2 and 3."""
    cfg = tiny_config(recipe="red", tasks={"addition": {"digits": [1, 1]}, "countdown": {"numbers": [2, 3]}},
                      train={"steps": 3})
    full, part = unbroken_and_resumed(cfg, tmp_path)
    assert part == full


@pytest.mark.parametrize("micro", [None, 2])
def test_loss_is_rl_plus_coef_weight_sft_each_its_own_token_mean(micro):
    """L = L_RL + coef·w·L_SFT (the docstring's equation; third-party dp_actor: policy loss +
    coef·SFT loss, the SFT loss a token mean over the demonstration batch). Three rollouts of 2, 3
    and 1 tokens (Â = 2, −1, 0.5; rewards 1, 0, 0: accuracy 1/3, f_acc = 5^(1/3)) and one
    demonstration of 3 tokens, every token at P(token 0) = 0.8, ratio 1: L_RL = mean of −Â over the
    6 rollout tokens, L_SFT = mean of f_acc·NLL over the 3 demonstration tokens."""
    from explorl.explore.objective.ppo_clip import PPOClip
    from update_helpers import TableEngine, one_update, policy_logp, table_batch, two_token_logits
    batch = table_batch([ON_POLICY, ON_POLICY, ON_POLICY, DEMO], [[1, 1, 0], [1, 1, 1], [1, 0, 0], [1, 1, 1]],
                        [[0, 0, 0]] * 3 + [[0, 0, 1]], [2.0, -1.0, 0.5, 0.0], rewards=[1.0, 0.0, 0.0, 1.0])
    engine = TableEngine(torch.tensor([[two_token_logits(0.8)] * 3] * 4))
    batch.old_logp = policy_logp(engine, batch)
    red = RED(coef=0.1)
    red.weight = 2.0
    red.augment(batch, None)
    f = 5 ** (1 / 3)
    loss, grad = one_update(engine, batch, [PPOClip(0.2, 0.2)], [red], micro_batch_size=micro)
    l_rl = -(2.0 * 2 - 1.0 * 3 + 0.5 * 1) / 6
    l_sft = f * (-2 * math.log(0.8) - math.log(0.2)) / 3
    assert loss == pytest.approx(l_rl + 0.1 * 2.0 * l_sft, rel=1e-5)
    # per term, in the gradient on the logits: a rollout token gets (1/6)·(−Â)·(e_0 − p),
    # a demonstration token y gets coef·w·f/3·(p − e_y)
    p, e = torch.tensor([0.8, 0.2]), torch.eye(2)
    for row, adv, n in ((0, 2.0, 2), (1, -1.0, 3), (2, 0.5, 1)):
        for t in range(n):
            assert torch.allclose(grad[row, t], -adv / 6 * (e[0] - p), atol=1e-7), (row, t)
    for t, y in enumerate([0, 0, 1]):
        assert torch.allclose(grad[3, t], 0.1 * 2.0 * f / 3 * (p - e[y]), atol=1e-7), t
