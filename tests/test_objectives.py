"""Advantage, clipping, KL and aggregation against hand-computed small cases."""
import math

import pytest
import torch

from explorl.explore.advantage.grpo import GRPO
from explorl.explore.base import Groups, LossContext
from explorl.explore.objective.aggregate import aggregate
from explorl.explore.objective.entropy import EntropyBonus
from explorl.explore.objective.kl import KL, k3
from explorl.explore.objective.ppo_clip import PPOClip


def groups(rewards, mask):
    r, m = torch.tensor(rewards), torch.tensor(mask)
    return Groups(rewards=r, mask=m, lengths=m, logp_mean=torch.zeros_like(r), problems=[None] * len(r))


def ctx(logp, old, adv, mask=None, **kw):
    logp = torch.tensor(logp).log()
    old = torch.tensor(old).log()
    mask = torch.ones_like(logp) if mask is None else torch.tensor(mask)
    return LossContext(logp=logp, old_logp=old, behaviour_logp=old.clone(), advantages=torch.tensor(adv), mask=mask, **kw)


def test_grpo_matches_hand_computation_with_variable_group_sizes():
    # group 0: rewards 1,0,0 (3 rollouts); group 1: 1,1 (2 rollouts, zero std); group 2: single rollout
    g = groups([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [1.0, 0.0, 0.0]],
               [[1.0, 1.0, 1.0], [1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    adv, m = GRPO().compute(g, None)
    mean, std = 1 / 3, math.sqrt(((2 / 3) ** 2 + 2 * (1 / 3) ** 2) / 2)  # unbiased std
    assert adv[0].tolist() == pytest.approx([(1 - mean) / (std + 1e-6), -mean / (std + 1e-6), -mean / (std + 1e-6)])
    assert adv[1].tolist() == [0.0, 0.0, 0.0]
    assert adv[2].tolist() == [0.0, 0.0, 0.0]  # a group of one has no baseline: no signal
    assert m["adv/frac_zero_std"] == pytest.approx(2 / 3)


def test_dr_grpo_drops_the_std_division():
    g = groups([[1.0, 0.0, 0.0, 0.0]], [[1.0] * 4])
    adv, _ = GRPO(scale_by_std=False).compute(g, None)
    assert adv[0].tolist() == pytest.approx([0.75, -0.25, -0.25, -0.25])


def test_ppo_clip_higher_lets_a_low_probability_token_rise_past_one_plus_eps_low():
    # ratio 1.25 with A > 0: symmetric 0.2 clip caps the surrogate at 1.2·A (no gradient),
    # clip-higher (0.28) keeps the unclipped 1.25·A with its gradient.
    old = [[0.04]]
    new = torch.tensor([[0.05]]).log().requires_grad_(True)
    for eps_high, expect, grads in ((0.2, -1.2, False), (0.28, -1.25, True)):
        c = ctx([[0.05]], old, [[1.0]])
        c.logp = new
        loss, m = PPOClip(0.2, eps_high).term(c)
        assert loss.item() == pytest.approx(expect, rel=1e-5)
        (g,) = torch.autograd.grad(loss.sum(), new)
        assert (g.abs().item() > 0) == grads
        assert m["loss/clip_frac_high"] == (0.0 if grads else 1.0)


def test_ppo_clip_low_side_and_dual_clip():
    # A < 0, ratio 0.5: clipped at 0.8 -> loss = max(0.5, 0.8)·1 = 0.8
    loss, m = PPOClip(0.2, 0.28).term(ctx([[0.5]], [[1.0]], [[-1.0]]))
    assert loss.item() == pytest.approx(0.8)
    assert m["loss/clip_frac_low"] == 1.0
    # A < 0, ratio 5: unclipped 5·1 = 5 but the dual clip caps at c = 3
    loss, _ = PPOClip(0.2, 0.28, clip_ratio_c=3.0).term(ctx([[0.5]], [[0.1]], [[-1.0]]))
    assert loss.item() == pytest.approx(3.0)
    loss, _ = PPOClip(0.2, 0.28, clip_ratio_c=None).term(ctx([[0.5]], [[0.1]], [[-1.0]]))
    assert loss.item() == pytest.approx(5.0)


def test_truncated_importance_weight_uses_behaviour_logprobs():
    # π_θ = 0.45, π_old = 0.5, π_behaviour = 0.1 (sampled from a sharper/tempered distribution): the
    # weight is π_old/π_behaviour = 5 (π_θ/π_behaviour would be 4.5), the ratio 0.9 is inside the clip
    c = ctx([[0.45]], [[0.5]], [[1.0]])
    c.behaviour_logp = torch.tensor([[0.1]]).log()
    loss, m = PPOClip(tis_cap=2.0).term(c)
    assert m["loss/tis_weight_mean"] == pytest.approx(2.0)  # 5, capped at 2
    assert loss.item() == pytest.approx(-0.9 * 2.0)
    loss, m = PPOClip(tis_cap=10.0).term(c)
    assert m["loss/tis_weight_mean"] == pytest.approx(5.0)
    assert loss.item() == pytest.approx(-0.9 * 5.0)


def test_k3_kl_value_and_sign():
    logp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    x = math.log(0.25) - math.log(0.5)
    assert k3(logp, ref).item() == pytest.approx(math.exp(x) - x - 1)
    assert k3(ref, ref).item() == 0.0
    c = ctx([[0.5]], [[0.5]], [[0.0]])
    c.ref_logp = torch.tensor([[0.25]]).log()
    loss, m = KL(coef=0.1).term(c)
    assert loss.item() == pytest.approx(0.1 * (math.exp(x) - x - 1))


def test_entropy_bonus_is_negative_entropy():
    c = ctx([[0.5, 0.5]], [[0.5, 0.5]], [[0.0, 0.0]])
    c.entropy = torch.tensor([[1.0, 2.0]])
    loss, _ = EntropyBonus(coef=0.01).term(c)
    assert loss[0].tolist() == pytest.approx([-0.01, -0.02])


def test_aggregation_modes_by_hand():
    loss = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    assert aggregate(loss, mask, "token-mean").item() == pytest.approx(10 / 4)
    assert aggregate(loss, mask, "seq-mean-token-mean").item() == pytest.approx((2 + 4) / 2)
    assert aggregate(loss, mask, "seq-mean-token-sum-norm", max_length=5).item() == pytest.approx(10 / (2 * 5))
    with pytest.raises(ValueError, match="loss_agg_mode"):
        aggregate(loss, mask, "token-sum-typo")
