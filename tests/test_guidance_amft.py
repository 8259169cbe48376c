"""AMFT: the μ controller by hand, the meta-gradient's inner product on a two-parameter model and
on the tiny model (gradients checked by finite differences), the loss split (1 − μ)·RL + μ·SFT,
and runs of its recipe alone and stacked."""
import json
import math

import pytest
import torch

from explorl.batch import DEMO, ON_POLICY
from explorl.explore.base import LossContext
from explorl.explore.guidance.amft import AMFT, gradients, meta_gradient, update_mu
from explorl.tasks.problem import Problem
from run_records import unbroken_and_resumed
from update_helpers import TableEngine, one_update, policy_logp, table_batch, two_token_logits


def test_mu_update_by_hand():
    # μ + η_meta·g + η_ent·(H* − H) = 0.8 + 0.01·2 + 0.1·(1.0 − 0.5)
    assert update_mu(0.8, 2.0, 1.0, 0.5, 0.01, 0.1, 0.05, 0.95) == pytest.approx(0.87)
    # the entropy term's sign: entropy below target raises μ (more imitation), above lowers it
    assert update_mu(0.5, 0.0, 1.0, 0.8, 1e-4, 0.1, 0.05, 0.95) > 0.5
    assert update_mu(0.5, 0.0, 1.0, 1.2, 1e-4, 0.1, 0.05, 0.95) < 0.5
    # clipped at both bounds
    assert update_mu(0.94, 100.0, 1.0, 1.0, 0.01, 0.1, 0.05, 0.95) == 0.95
    assert update_mu(0.06, -100.0, 1.0, 1.0, 0.01, 0.1, 0.05, 0.95) == 0.05
    assert update_mu(0.5, 0.0, 0.0, 50.0, 0.0, 0.1, 0.05, 0.95) == 0.05
    # no target entropy yet: no entropy term; descent flips the meta term only
    assert update_mu(0.5, 2.0, None, 9.0, 0.01, 0.1, 0.05, 0.95) == pytest.approx(0.52)
    assert update_mu(0.5, 2.0, 1.0, 0.5, 0.01, 0.1, 0.05, 0.95, direction=-1.0) == pytest.approx(0.5 - 0.02 + 0.05)


class TwoParams(torch.nn.Module):
    def __init__(self, a, b):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor([a, b], dtype=torch.float64))


def test_meta_gradient_on_a_two_parameter_model():
    """L_val = (a−1)² + (b−2)², L_SFT = a² + 3b, L_RL = 2a − b² at (a, b) = (0.5, 1):
    ∇L_val = (−1, −2), ∇L_SFT = (1, 3), ∇L_RL = (2, −2); ⟨∇L_val, ∇L_SFT⟩ = −7, ⟨∇L_val, ∇L_RL⟩ = 2,
    g_meta = −lr·(−7 − 2) = 9·lr."""
    m = TwoParams(0.5, 1.0)
    a, b = m.w[0], m.w[1]
    val = lambda: (m.w[0] - 1) ** 2 + (m.w[1] - 2) ** 2
    sft = lambda: m.w[0] ** 2 + 3 * m.w[1]
    rl = lambda: 2 * m.w[0] - m.w[1] ** 2
    lr = 1e-3
    g, d_sft, d_rl = meta_gradient([m.w], val, sft, rl, lr)
    assert (d_sft, d_rl) == (pytest.approx(-7.0), pytest.approx(2.0))
    assert g == pytest.approx(9 * lr)
    del a, b
    # g_meta is dL_val(θ')/dμ of the look-ahead θ' = θ − lr·((1 − μ)∇L_RL + μ∇L_SFT), to first order
    g_sft, g_rl = gradients([m.w], sft)[0], gradients([m.w], rl)[0]

    def look_ahead(mu):
        theta = m.w.detach() - lr * ((1 - mu) * g_rl + mu * g_sft)
        return float((theta[0] - 1) ** 2 + (theta[1] - 2) ** 2)
    h = 1e-3
    fd = (look_ahead(0.5 + h) - look_ahead(0.5 - h)) / (2 * h)
    assert fd == pytest.approx(g, rel=1e-2)


@pytest.fixture(scope="module")
def tiny_batch():
    """The tiny model, its engine, and a batch of 2 problems × (3 rollouts + 1 demonstration)."""
    from explorl.policy.engine import RolloutEngine
    from explorl.policy.model import build_tiny
    from explorl.tasks import ALPHABET
    model, tok = build_tiny("qwen2", ALPHABET, 32, 2, 4, 2, 64, 64, seed=0)
    engine = RolloutEngine(model, tok)
    problems = [Problem(id="a", prompt="12+7=", answer="19", source="addition"),
                Problem(id="b", prompt="3*4=", answer="12", source="multiplication")]
    # the "rollouts" are given texts (a random model may sample <pad>, whose embedding row has no gradient)
    roll = engine.score_responses(problems, [3, 3], texts=["19", "91", "1", "12", "21", "7"], kind=ON_POLICY)
    roll.rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0])
    demo = engine.score_responses(problems, [1, 1], texts=["19", "12"], kind=DEMO)
    demo.rewards = torch.ones(2)
    batch = roll.add_rows(demo, [0, 1])
    batch.advantages = torch.tensor([1.0, -0.5, -0.5, 0.0, -1.0, 0.5, 0.5, 0.0])
    val = engine.score_responses(problems[::-1], [1, 1], texts=["12", "19"], kind=DEMO)
    return model, engine, batch, val


def update_loss():
    """The amft recipe's objectives (PPO clip 0.2, entropy bonus 0.01), token-mean."""
    from explorl.explore.objective.entropy import EntropyBonus
    from explorl.explore.objective.ppo_clip import PPOClip
    from explorl.train.update import UpdateLoss
    return UpdateLoss([PPOClip(0.2, 0.2), EntropyBonus(0.01)], "token-mean", 6, {"entropy"})


def test_gradients_of_the_three_losses_match_finite_differences(tiny_batch):
    """Each loss's gradient as the meta-gradient takes it (``UpdateLoss.gradient``: the value over all
    rows from a pass without a graph, back-propagated in parts of 2 rows), read along a random
    direction d, equals the finite difference (L(θ + εd) − L(θ − εd)) / 2ε of that loss."""
    from explorl.explore.guidance.amft import token_mean_nll
    from explorl.explore.guidance.sft import nll
    model, engine, batch, val = tiny_batch
    loss = update_loss()
    params = [p for p in model.parameters() if p.requires_grad]
    kinds = batch.row_kind
    own = (kinds == ON_POLICY).nonzero().squeeze(-1)
    demo = (kinds == DEMO).nonzero().squeeze(-1)
    losses = {"val": (val, torch.arange(val.size), token_mean_nll),
              "sft": (batch, demo, lambda ctx: loss.aggregate(nll(ctx), ctx.mask)),
              "rl": (batch, own, loss.rl)}
    gen = torch.Generator().manual_seed(0)
    d = [torch.randn(p.shape, generator=gen) for p in params]
    norm = math.sqrt(sum(float((x * x).sum()) for x in d))
    d = [x / norm for x in d]
    eps = 1e-2
    for name, (rows_batch, rows, value) in losses.items():
        _, grad = loss.gradient(engine, rows_batch, rows, value, params, chunk=2)
        assert all(p.grad is None for p in params)                # the model's own gradients are left alone
        along = sum(float((g * x).sum()) for g, x in zip(grad, d))
        values = []
        for sign in (1, -1):
            with torch.no_grad():
                for p, x in zip(params, d):
                    p.add_(sign * eps * x)
            values.append(loss.gradient(engine, rows_batch, rows, value, params)[0])
            with torch.no_grad():
                for p, x in zip(params, d):
                    p.sub_(sign * eps * x)
        fd = (values[0] - values[1]) / (2 * eps)
        assert fd == pytest.approx(along, rel=2e-2, abs=2e-4), name


def direct_gradient(engine, batch, rows, per_token, params):
    """∇ of the token mean over ``rows`` of ``per_token(logp, entropy, rows)``, in one forward."""
    from explorl.policy.sampling import token_logp_entropy
    with torch.enable_grad():
        logits = engine.response_logits(batch, rows)
        logp, ent = token_logp_entropy(logits, batch.response_ids[rows], True)
        mask = batch.mask[rows]
        value = (per_token(logp, ent, rows) * mask).sum() / mask.sum()
        return gradients(params, lambda: value)


def test_meta_step_differentiates_the_two_terms_as_optimised(tiny_batch):
    """On a meta step, augment computes g_meta = −lr·⟨∇L_val, ∇L_SFT − ∇L_RL⟩ with L_RL the loss
    the update optimises on the rollouts: −Â·π_θ/π_old minus the 0.01 entropy bonus, their token
    mean (ppo_loss.py: rl_loss = policy loss − 0.01·mean entropy); L_SFT and L_val token-mean NLL.
    Each gradient is taken here by hand in one forward; then μ moves by the formula."""
    model, engine, batch, val = tiny_batch
    amft = AMFT(mu=0.5, meta_lr=10.0, entropy_lr=0.0, policy_lr=1e-2)
    amft._engine, amft._loss, amft._step, amft._val_batch = engine, update_loss(), 1, val
    _, m = amft.augment(batch, None)
    params = [p for p in model.parameters() if p.requires_grad]
    kinds = batch.row_kind
    adv, old = batch.advantages, batch.old_logp
    gv = direct_gradient(engine, val, torch.arange(2), lambda lp, h, r: -lp, params)
    gs = direct_gradient(engine, batch, (kinds == DEMO).nonzero().squeeze(-1), lambda lp, h, r: -lp, params)
    gr = direct_gradient(engine, batch, (kinds == ON_POLICY).nonzero().squeeze(-1),
                         lambda lp, h, r: -adv[r][:, None] * torch.exp(lp - old[r]) - 0.01 * h, params)
    dot = lambda a, b: sum(float((x.double() * y.double()).sum()) for x, y in zip(a, b))
    assert m["guide/amft_dot_val_sft"] == pytest.approx(dot(gv, gs), rel=1e-4)
    assert m["guide/amft_dot_val_rl"] == pytest.approx(dot(gv, gr), rel=1e-4, abs=1e-7)
    g_meta = -1e-2 * (dot(gv, gs) - dot(gv, gr))
    assert m["guide/amft_g_meta"] == pytest.approx(g_meta, rel=1e-4)
    assert amft.mu == pytest.approx(min(max(0.5 + 10.0 * g_meta, 0.05), 0.95), rel=1e-6)
    # H* was measured on the demonstration rows (the first step's), H on the rollouts
    dm = batch.row_kind == DEMO
    assert amft.target == pytest.approx(float((batch.entropy[dm] * batch.mask[dm]).sum() / batch.mask[dm].sum()))
    # not a meta step: no meta term
    amft._step, amft._val_batch = 2, val
    _, m2 = amft.augment(batch, None)
    assert "guide/amft_g_meta" not in m2


def demo_batch():
    """Three rollouts of 2, 3 and 1 tokens (Â = 2, −1, 0.5) and one demonstration of 3 tokens, each
    token at P(token 0) = 0.8 under π_θ = π_old; the rollouts drew token 0, the demonstration 0, 0, 1."""
    batch = table_batch([ON_POLICY, ON_POLICY, ON_POLICY, DEMO],
                        [[1, 1, 0], [1, 1, 1], [1, 0, 0], [1, 1, 1]], [[0, 0, 0]] * 3 + [[0, 0, 1]],
                        [2.0, -1.0, 0.5, 0.0])
    engine = TableEngine(torch.tensor([[two_token_logits(0.8)] * 3] * 4))
    batch.old_logp = policy_logp(engine, batch)
    return engine, batch


P = torch.tensor([0.8, 0.2])
H = float(-(P * P.log()).sum())                        # entropy of every token
DH = -P * (P.log() + H)                                # ∂H/∂z at every token
NLL = [-math.log(0.8), -math.log(0.8), -math.log(0.2)]  # the demonstration's tokens


@pytest.mark.parametrize("micro", [None, 2])
def test_loss_is_one_minus_mu_rl_plus_mu_sft_each_its_own_token_mean(micro):
    """L = (1 − μ)·L_RL + μ·L_SFT (amft_trainer.py ~L145 with ppo_loss.py): L_RL = mean over the 6
    rollout tokens of −Â·ratio (ratio 1) minus 0.01·mean H over those tokens; L_SFT = mean NLL over
    the 3 demonstration tokens. The entropy bonus is on the rollouts only and scaled by 1 − μ."""
    from explorl.explore.objective.entropy import EntropyBonus
    from explorl.explore.objective.ppo_clip import PPOClip
    mu = 0.8
    engine, batch = demo_batch()
    loss, grad = one_update(engine, batch, [PPOClip(0.2, 0.2), EntropyBonus(0.01)], [AMFT(mu=mu)],
                            micro_batch_size=micro)
    l_rl = -(2.0 * 2 - 1.0 * 3 + 0.5 * 1) / 6 - 0.01 * H
    l_sft = sum(NLL) / 3
    assert loss == pytest.approx((1 - mu) * l_rl + mu * l_sft, rel=1e-5)
    # per term, in the gradient on the logits: a rollout token of advantage Â gets
    # (1 − μ)/6·(−Â·(e_0 − p) − 0.01·∂H/∂z); a demonstration token y gets μ/3·(p − e_y)
    e = torch.eye(2)
    for row, adv, n in ((0, 2.0, 2), (1, -1.0, 3), (2, 0.5, 1)):
        for t in range(3):
            want = (1 - mu) / 6 * (-adv * (e[0] - P) - 0.01 * DH) if t < n else torch.zeros(2)
            assert torch.allclose(grad[row, t], want, atol=1e-7), (row, t)
    for t, y in enumerate([0, 0, 1]):
        assert torch.allclose(grad[3, t], mu / 3 * (P - e[y]), atol=1e-7), t
    assert AMFT(mu=0.7).rl_weight(3) == pytest.approx(0.3)


def test_recipe_runs_end_to_end(tiny_config, tmp_path):
    from explorl.train.loop import Trainer
    cfg = tiny_config(recipe="amft", tasks={"addition": {"digits": [1, 1]}, "countdown": {"numbers": [2, 3]}},
                      train={"steps": 2})
    Trainer(cfg, tmp_path / "run", progress=False, log=lambda *_: None).run()
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    first, second = rows
    assert first["rows/demo"] > 0 and "guide/amft_g_meta" in first and "guide/amft_g_meta" not in second
    mu1 = (0.8 + 1e-4 * first["guide/amft_g_meta"]
           + 5e-4 * (first["guide/amft_target_entropy"] - first["guide/amft_entropy"]))
    assert first["guide/amft_mu"] == pytest.approx(mu1, abs=1e-6)
    mu2 = mu1 + 5e-4 * (second["guide/amft_target_entropy"] - second["guide/amft_entropy"])
    assert second["guide/amft_mu"] == pytest.approx(mu2, abs=1e-6)
    state = torch.load(max((tmp_path / "run" / "ckpt").glob("step_*")) / "trainer.pt", weights_only=True)
    amft_state = [s for s in state["plugins"] if isinstance(s, dict) and "mu" in s]
    assert amft_state and amft_state[0]["mu"] == pytest.approx(second["guide/amft_mu"])
    assert len(amft_state[0]["val_set"]) == 8


def test_stacks_with_knapsack_and_clip_cov(tiny_config, tmp_path):
    from explorl.train.loop import Trainer
    cfg = tiny_config(recipe="amft", tasks={"addition": {"digits": [1, 1]}, "countdown": {"numbers": [2, 3]}},
                      budget={"name": "knapsack"}, objective=[{"name": "clip_cov"}], train={"steps": 2})
    Trainer(cfg, tmp_path / "run", progress=False, log=lambda *_: None).run()
    assert (tmp_path / "run" / "eval.json").exists()


def test_a_resumed_run_equals_an_unbroken_one(tiny_config, tmp_path):
    """μ, H* and the validation set are checkpointed: a run stopped after step 1 and resumed (no second
    before_training draw) has the same steps 2 and 3, meta step 3 included (meta_update_freq 2)."""
    cfg = tiny_config(recipe="amft", tasks={"addition": {"digits": [1, 1]}, "countdown": {"numbers": [2, 3]}},
                      guidance=[{"name": "amft", "meta_update_freq": 2, "meta_lr": 1.0e3}], train={"steps": 3})
    full, part = unbroken_and_resumed(cfg, tmp_path)
    assert part == full
    assert "guide/amft_g_meta" in full[2]
