"""AMFT: the μ controller by hand, the meta-gradient's inner product on a two-parameter model and
on the tiny model (gradients checked by finite differences), the loss split (1 − μ)·RL + μ·SFT,
and runs of its recipe alone and stacked."""
import json
import math

import pytest
import torch

from explorl.batch import DEMO, ON_POLICY
from explorl.explore.base import LossContext
from explorl.explore.guidance.amft import (
    AMFT,
    gradients,
    meta_gradient,
    token_mean_loss,
    update_mu,
)
from explorl.tasks.problem import Problem
from run_records import unbroken_and_resumed


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


def test_gradients_of_the_three_losses_match_finite_differences(tiny_batch):
    """Each loss's autograd gradient, read along a random direction d, equals the finite difference
    (L(θ + εd) − L(θ − εd)) / 2ε of that loss computed through the model."""
    model, engine, batch, val = tiny_batch
    params = [p for p in model.parameters() if p.requires_grad]
    kinds = batch.row_kind
    own = (kinds == ON_POLICY).nonzero().squeeze(-1)
    demo = (kinds == DEMO).nonzero().squeeze(-1)
    adv, old = batch.advantages, batch.old_logp
    losses = {"val": token_mean_loss(engine, val, torch.arange(val.size), lambda lp, r: -lp),
              "sft": token_mean_loss(engine, batch, demo, lambda lp, r: -lp),
              "rl": token_mean_loss(engine, batch, own, lambda lp, r: -adv[r][:, None] * torch.exp(lp - old[r]),
                                    chunk=2)}                     # chunks add up to the whole loss
    gen = torch.Generator().manual_seed(0)
    d = [torch.randn(p.shape, generator=gen) for p in params]
    norm = math.sqrt(sum(float((x * x).sum()) for x in d))
    d = [x / norm for x in d]
    eps = 1e-2
    for name, parts in losses.items():
        with torch.enable_grad():
            grad = gradients(params, parts)
        along = sum(float((g * x).sum()) for g, x in zip(grad, d))
        values = []
        for sign in (1, -1):
            with torch.no_grad():
                for p, x in zip(params, d):
                    p.add_(sign * eps * x)
                values.append(float(sum(part() for part in parts)))
                for p, x in zip(params, d):
                    p.sub_(sign * eps * x)
        fd = (values[0] - values[1]) / (2 * eps)
        assert fd == pytest.approx(along, rel=2e-2, abs=2e-4), name


def test_meta_step_uses_the_batch_and_the_validation_set(tiny_batch):
    """On a meta step, augment computes g_meta = −lr·⟨∇L_val, ∇L_SFT − ∇L_RL⟩ from the batch's
    demonstration and on-policy rows and the validation rows, then μ moves by the formula."""
    model, engine, batch, val = tiny_batch
    amft = AMFT(mu=0.5, meta_lr=10.0, entropy_lr=0.0, policy_lr=1e-2)
    amft._engine, amft._step, amft._val_batch = engine, 1, val
    _, m = amft.augment(batch, None)
    params = [p for p in model.parameters() if p.requires_grad]
    kinds = batch.row_kind
    with torch.enable_grad():
        gv = gradients(params, token_mean_loss(engine, val, torch.arange(2), lambda lp, r: -lp))
        gs = gradients(params, token_mean_loss(engine, batch, (kinds == DEMO).nonzero().squeeze(-1), lambda lp, r: -lp))
    d_sft = sum(float((a * b).sum()) for a, b in zip(gv, gs))
    assert m["guide/amft_dot_val_sft"] == pytest.approx(d_sft, rel=1e-4)
    assert m["guide/amft_g_meta"] == pytest.approx(-1e-2 * (m["guide/amft_dot_val_sft"] - m["guide/amft_dot_val_rl"]))
    assert amft.mu == pytest.approx(min(max(0.5 + 10.0 * m["guide/amft_g_meta"], 0.05), 0.95))
    # H* was measured on the demonstration rows (the first step's), H on the rollouts
    dm = batch.row_kind == DEMO
    assert amft.target == pytest.approx(float((batch.entropy[dm] * batch.mask[dm]).sum() / batch.mask[dm].sum()))
    # not a meta step: no meta term
    amft._step, amft._val_batch = 2, val
    _, m2 = amft.augment(batch, None)
    assert "guide/amft_g_meta" not in m2


def test_rl_weight_and_demo_loss_scale():
    from explorl.explore.objective.ppo_clip import PPOClip
    from explorl.train.update import combine_terms
    amft = AMFT(mu=0.7)
    assert amft.rl_weight(3) == pytest.approx(0.3)
    logp = torch.log(torch.tensor([[0.5, 0.25], [0.5, 0.25]]))
    ctx = LossContext(logp=logp, old_logp=logp.clone(), behaviour_logp=logp.clone(),
                      advantages=torch.tensor([[2.0, 2.0], [0.0, 0.0]]), mask=torch.ones(2, 2),
                      kind=torch.tensor([ON_POLICY, DEMO]), rows=torch.arange(2))
    loss, _ = combine_terms([PPOClip()], ctx, [amft])
    # on-policy row: (1 − μ)·(−Â·ratio) = 0.3·(−2); demonstration row: μ·(−log π)
    assert loss[0].tolist() == pytest.approx([-0.6, -0.6])
    assert loss[1].tolist() == pytest.approx([0.7 * math.log(2), 0.7 * math.log(4)])


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
