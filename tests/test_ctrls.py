"""CTRLS: the transition policy's update moves toward codes with positive advantage and away
from negative ones, its entropy term spreads it, the ε-greedy importance weight gives the hand
value; a run keeps the language model frozen, and the policy learns from a batch's rewards."""
import math

import pytest
import torch

from explorl.explore.decoding.ctrls import CTRLS, policy_logits, transition_loss


def small_phi(seed=0, d=4, hidden=3, actions=3):
    g = torch.Generator().manual_seed(seed)
    return {"w1": torch.randn(d, hidden, generator=g), "b1": torch.zeros(hidden),
            "w2": torch.randn(hidden, actions, generator=g), "b2": torch.zeros(actions)}


def step(phi, states, actions, advantages, epsilon=0.1, entropy_coef=0.0, lr=0.1):
    phi = {k: v.clone().requires_grad_(True) for k, v in phi.items()}
    loss, _ = transition_loss(phi, states, actions, advantages, epsilon, entropy_coef)
    loss.backward()
    with torch.no_grad():
        return {k: v - lr * v.grad for k, v in phi.items()}


def probs(phi, states):
    return torch.softmax(policy_logits(phi, states), -1)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_update_moves_toward_positive_advantage_and_away_from_negative(sign):
    for seed in range(5):  # one state at a time: a step on several may trade one state against another
        phi, states = small_phi(seed), torch.randn(1, 4, generator=torch.Generator().manual_seed(seed + 10))
        after = step(phi, states, torch.tensor([1]), torch.tensor([sign]))
        change = probs(after, states)[0] - probs(phi, states)[0]
        assert change[1] * sign > 0


def test_entropy_term_spreads_the_policy():
    phi = small_phi()
    phi["b2"] = torch.tensor([3.0, 0.0, -1.0])
    states = torch.randn(6, 4, generator=torch.Generator().manual_seed(2))
    entropy = lambda p: -(p * p.log()).sum(-1)  # noqa: E731
    after = step(phi, states, torch.zeros(6, dtype=torch.long), torch.zeros(6), entropy_coef=1.0)
    assert (entropy(probs(after, states)) > entropy(probs(phi, states))).all()


def test_loss_value_with_epsilon_greedy_behaviour():
    # pi = softmax(1, 0, 0, -1) in every state (the states do not matter with w2 = 0)
    phi = {"w1": torch.zeros(2, 2), "b1": torch.zeros(2), "w2": torch.zeros(2, 4),
           "b2": torch.tensor([1.0, 0.0, 0.0, -1.0])}
    states, actions = torch.randn(3, 2), torch.tensor([0, 1, 3])
    advantages = torch.tensor([1.0, -2.0, 4.0])
    eps, beta = 0.5, 0.2
    loss, m = transition_loss(phi, states, actions, advantages, eps, beta)
    z = math.e + 1 + 1 + 1 / math.e
    pi = [math.e / z, 1 / z, 1 / z, 1 / (math.e * z)]
    ratios = [pi[a] / ((1 - eps) * pi[a] + eps / 4) for a in (0, 1, 3)]  # pi / epsilon-greedy behaviour
    entropy = -sum(p * math.log(p) for p in pi)
    expected = -sum(r * a for r, a in zip(ratios, advantages.tolist())) / 3 - beta * entropy
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert m["decode/ctrls_entropy"] == pytest.approx(entropy, abs=1e-6)


def test_ctrls_names_no_objective(tiny_config):
    from explorl.train.plugins import Plugins
    with pytest.raises(ValueError, match="frozen"):
        Plugins.from_config(tiny_config(recipe="ctrls", objective=["ppo_clip"]))


def test_a_run_keeps_the_language_model_frozen_and_the_policy_learns(tiny_config, tmp_path):
    from explorl.train.loop import Trainer
    cfg = tiny_config(recipe="ctrls", tasks={"addition_steps": {"digits": [2, 2]}},
                      train={"steps": 1, "max_new_tokens": 16})
    trainer = Trainer(cfg, tmp_path / "run", progress=False, log=lambda *_: None)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    metrics = trainer.train_step()
    assert metrics["loss/policy_frozen"] == 1.0
    assert all(torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
    decoding = trainer.plugins.decoding
    assert isinstance(decoding, CTRLS) and decoding.phi is not None
    engaged, note = decoding.engagement()[0].check([metrics])  # soft tokens fed: the board's criterion
    assert metrics["decode/soft_frac"] > 0 and engaged, note
    # a batch whose rollouts chose codes at step boundaries, with rewards: the policy moves
    problems = [trainer.tasks.sample(__import__("random").Random(s)) for s in range(2)]
    batch = trainer.engine.rollout(problems, [2, 2], [1.0] * 16, seed=0, thinking=decoding.thinking(1))
    rows = torch.arange(4)
    batch.soft.tag.fill_(-1)
    batch.soft.tag[rows, 2] = torch.tensor([0, 0, 1, 1])
    batch.mask[:, :3] = 1.0
    batch.advantages = torch.tensor([1.0, 1.0, -1.0, -1.0])
    phi_before = {k: v.detach().clone() for k, v in decoding.phi.items()}
    from explorl.explore.base import StepStats
    out = decoding.observe(StepStats(step=2, problems=problems, rewards=[[1, 1], [0, 0]], advantages=[[1, 1], [-1, -1]],
                                     entropy=0.0, tokens=0, extras={"batch": batch}))
    assert out["decode/ctrls_boundaries"] == 4.0
    assert any(not torch.equal(phi_before[k], v.detach()) for k, v in decoding.phi.items())
    assert all(torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
    trainer.close()
