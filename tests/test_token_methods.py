"""Token-level and advantage-level exploration methods: each checked on its defining behaviour."""
import itertools
import math
from types import SimpleNamespace

import pytest
import torch

from explorl.explore.advantage.effective_rank import EffectiveRank, effective_rank, rank_metrics
from explorl.explore.advantage.grpo import GRPO
from explorl.explore.advantage.passk import PassK, passk_advantages
from explorl.explore.advantage.repr_bonus import ReprBonus, leverage_bonus, mean_response_hidden
from explorl.explore.advantage.xrpo_novelty import XRPONovelty
from explorl.explore.base import Groups, LossContext, StepStats
from explorl.explore.objective.adaptive_entropy import AdaptiveEntropy
from explorl.explore.objective.aepo import AEPO
from explorl.explore.objective.clip_cov import ClipCov, token_covariance
from explorl.explore.objective.entropy_quantile import EntropyQuantile
from explorl.explore.objective.epo import EPO, phase_weight
from explorl.explore.objective.kl import KL
from explorl.explore.objective.kl_cov import KLCov
from explorl.explore.objective.lp_reg import NOISE, LpReg, min_p_proxy_logp
from explorl.explore.objective.ppo_clip import PPOClip, clipped_surrogate
from explorl.tasks import Problem
from explorl.train.update import combine_terms

RECIPES = ["clip_higher", "dr_grpo", "clip_cov", "kl_cov", "lp_reg", "entropy_quantile", "adaptive_entropy",
           "aepo", "epo", "passk", "xrpo_novelty", "repr_bonus", "effective_rank"]


def make_ctx(logp, old, adv, mask=None, **kw):
    logp = torch.as_tensor(logp, dtype=torch.float).clone().requires_grad_(True)
    old = torch.as_tensor(old, dtype=torch.float)
    adv = torch.as_tensor(adv, dtype=torch.float).expand_as(old).clone()
    mask = torch.ones_like(old) if mask is None else torch.as_tensor(mask, dtype=torch.float)
    kw.setdefault("extras", {"generator": torch.Generator().manual_seed(0)})
    return LossContext(logp=logp, old_logp=old, behaviour_logp=old.clone(), advantages=adv, mask=mask, **kw)


def grad_of(loss, ctx):
    (g,) = torch.autograd.grad((loss * ctx.mask).sum(), ctx.logp)
    return g


def groups_of(rewards, mask=None, logp_mean=None, **extras):
    r = torch.as_tensor(rewards, dtype=torch.float)
    m = torch.ones_like(r) if mask is None else torch.as_tensor(mask, dtype=torch.float)
    lm = torch.zeros_like(r) if logp_mean is None else torch.as_tensor(logp_mean, dtype=torch.float)
    return Groups(rewards=r, mask=m, lengths=m, logp_mean=lm, problems=[None] * len(r), extras=extras)


# ---- Clip-Cov / KL-Cov -----------------------------------------------------------------

def cov_ctx():
    # row 0: A = +2, row 1: A = -2 (mean 0), so Cov = A * (logp - mean logp)
    logp = torch.tensor([[-0.1, -0.5, -3.0, -4.0, -2.0, -1.0], [-0.2, -3.5, -4.5, -1.0, -0.3, -2.5]])
    old = logp.clone()
    old[0, 0] = -0.4  # ratio e^0.3 = 1.35 > 1.2 with A > 0: clipped by PPO (and Cov = 2*(−0.1+1.9) = 3.6 in band)
    adv = torch.tensor([[2.0], [-2.0]])
    return make_ctx(logp, old, adv)


def test_clip_cov_cuts_gradient_exactly_on_unclipped_tokens_in_the_covariance_band():
    ctx = cov_ctx()
    cov = token_covariance(ctx.advantages, ctx.logp, ctx.mask)
    ratio = torch.exp(ctx.logp - ctx.old_logp).detach()
    _, low, high = clipped_surrogate(ratio, ctx.advantages, 0.2, 0.2)
    clipped = low | high
    band = (cov > 1.0) & (cov < 5.0)
    assert clipped[0, 0] and band[0, 0]          # a clipped token inside the band ...
    expect_cut = band & ~clipped
    assert 2 <= int(expect_cut.sum()) < int((~clipped).sum())
    loss, m = ClipCov(clip_cov_ratio=1.0).term(ctx)  # ratio 1: every eligible token is cut
    g = grad_of(loss, ctx)
    assert torch.equal(g == 0, expect_cut | clipped)  # ... is not counted: PPO already stops it
    assert m["loss/clip_cov_frac"] == pytest.approx(float(expect_cut.float().mean()))
    # the default ratio cuts max(1, floor(r*N)) = 1 random token, always one inside the band
    for seed in range(5):
        ctx = cov_ctx()
        ctx.extras["generator"] = torch.Generator().manual_seed(seed)
        g = grad_of(ClipCov().term(ctx)[0], ctx)
        cut = (g == 0) & ~clipped
        assert int(cut.sum()) == 1 and bool((cut & expect_cut).any())


def test_clip_cov_draw_is_reproducible_with_the_update_generator():
    cuts = []
    for _ in range(2):
        ctx = cov_ctx()
        ctx.extras["generator"] = torch.Generator().manual_seed(3)
        cuts.append(grad_of(ClipCov(clip_cov_ratio=0.2).term(ctx)[0], ctx) == 0)
    assert torch.equal(cuts[0], cuts[1])


def test_kl_cov_penalises_exactly_the_top_covariance_tokens():
    ctx = cov_ctx()
    ctx.logp.data[1, 3] = -1.2                      # move off pi_old so |log ratio| has a gradient
    ctx.old_logp[0, 0] = -0.1
    cov = token_covariance(ctx.advantages, ctx.logp, ctx.mask).flatten()
    top = torch.zeros(12, dtype=torch.bool)
    top[torch.topk(cov, 2).indices] = True
    top = top.view(2, 6)
    loss, m = KLCov(kl_cov_ratio=2 / 12, ppo_kl_coef=0.5).term(ctx)
    log_ratio = (ctx.logp - ctx.old_logp).detach()
    plain = -ctx.advantages * torch.exp(log_ratio)   # unclipped everywhere (verl)
    assert torch.allclose(loss.detach() - plain, torch.where(top, 0.5 * log_ratio.abs(), torch.zeros(())))
    g = grad_of(loss, ctx)
    g_plain = -ctx.advantages * torch.exp(log_ratio)
    diff = g - g_plain
    assert torch.allclose(diff, torch.where(top, 0.5 * torch.sign(log_ratio), torch.zeros(())), atol=1e-6)
    assert m["loss/kl_cov_frac"] == pytest.approx(2 / 12)


def test_stacking_two_policy_losses_fails_clearly():
    from explorl.config import load_config
    from explorl.train.plugins import Plugins
    cfg = load_config(overrides=["objective=[ppo_clip, clip_cov]"])
    with pytest.raises(ValueError, match=r"exactly one policy-loss term.*ppo_clip.*clip_cov"):
        Plugins.from_config(cfg)


# ---- Lp-Reg ------------------------------------------------------------------------------

def test_lp_reg_min_p_proxy_values():
    probs = torch.tensor([0.5, 0.3, 0.19, 0.01])
    logits = probs.log().view(1, 1, 4).expand(1, 4, 4)
    token_logp = probs.log().view(1, 4)              # token j sampled at position j
    proxy = min_p_proxy_logp(logits, token_logp, kappa=0.1)   # keeps pi >= 0.05: the first three
    assert proxy[0, :3].exp().tolist() == pytest.approx((probs[:3] / 0.99).tolist(), rel=1e-5)
    assert proxy[0, 3] < NOISE / 2                   # noise: pi_proxy ~ 0
    proxy = min_p_proxy_logp(logits, token_logp, kappa=0.01)  # keeps all four
    assert proxy.exp()[0].tolist() == pytest.approx(probs.tolist(), rel=1e-5)


def lp_ctx():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 5, 6, generator=gen)
    ids = torch.randint(0, 6, (4, 5), generator=gen)
    ids = ids.clamp(max=4)
    logits[0, 1, ids[0, 1]] = -30.0                  # the lowest-probability negative token is min-p noise
    logits[2, 2, ids[2, 2]] = -30.0                  # a positive-advantage token, lowest of all
    # a never-sampled token just under the min-p cut everywhere: pi_proxy > pi for the kept tokens
    logits[..., 5] = logits[..., :5].max(-1).values - 4.5
    logits = logits.requires_grad_(True)
    logp = torch.log_softmax(logits, -1).gather(-1, ids[..., None]).squeeze(-1)
    adv = torch.tensor([[-1.0], [-1.0], [1.0], [1.0]]).expand(4, 5).clone()
    ctx = LossContext(logp=logp, old_logp=logp.detach(), behaviour_logp=logp.detach(), advantages=adv,
                      mask=torch.ones(4, 5), logits=logits)
    return ctx, logits


def test_lp_reg_regularises_only_negative_low_probability_non_noise_tokens():
    ctx, logits = lp_ctx()
    obj = LpReg(min_p_threshold=0.02, logp_neg_k_percent=0.5, ppo_kl_coef=1.0)
    proxy = min_p_proxy_logp(logits, ctx.logp, 0.02)
    lp = ctx.logp.detach()
    neg = (ctx.advantages < 0).flatten().nonzero().squeeze(-1)       # 10 tokens -> bottom 5
    bottom = torch.zeros(20, dtype=torch.bool)
    bottom[neg[torch.argsort(lp.flatten()[neg])[:5]]] = True
    bottom = bottom.view(4, 5)
    expect = bottom & (lp < proxy)
    assert bottom[0, 1] and not expect[0, 1]         # lowest negative token, but noise: excluded
    assert expect.any() and not expect[2:].any()     # positive-advantage rows never
    loss, m = obj.term(ctx)
    ratio = torch.exp(ctx.logp - ctx.old_logp)
    ppo, _, _ = clipped_surrogate(ratio, ctx.advantages, 1.0, 9.0)
    x = proxy - ctx.logp
    kl = (torch.exp(x) - x - 1).clamp(-10, 10)
    assert torch.allclose(loss, torch.where(expect, -ctx.advantages * ratio + kl, ppo))
    assert m["loss/lp_reg_frac"] == pytest.approx(float(expect.float().mean()))
    # the KL term's gradient acts exactly on the regularised tokens: loss - PPO has grad only there
    (g,) = torch.autograd.grad((loss - ppo).sum(), ctx.logp)
    assert torch.equal(g != 0, expect)
    # floor(rho * N_neg) <= 1: no token is regularised
    ctx, _ = lp_ctx()
    assert LpReg(logp_neg_k_percent=0.15).term(ctx)[1]["loss/lp_reg_frac"] == 0.0


def test_lp_reg_caches_the_proxy_of_each_row_on_its_first_pass():
    ctx, logits = lp_ctx()
    ctx.rows, ctx.step, ctx.extras = torch.tensor([3, 7, 8, 9]), 5, {"epoch": 0}
    obj = LpReg()
    first = obj.proxy(ctx)
    ctx.logits = logits.detach() + torch.randn_like(logits)  # the policy moved: a later epoch
    ctx.extras["epoch"] = 1
    assert torch.equal(obj.proxy(ctx), first)
    assert not torch.equal(LpReg(proxy_source="current").proxy(ctx), first)
    ctx.step = 6                                                # a new batch: recomputed
    assert not torch.equal(obj.proxy(ctx), first)
    ctx.step, ctx.extras["epoch"] = 5, 0                        # epoch 0 always recomputes
    assert not torch.equal(obj.proxy(ctx), first)


# ---- entropy quantile (token mask) -------------------------------------------------------

def test_entropy_quantile_masks_the_policy_gradient_to_high_entropy_tokens():
    ctx = make_ctx(torch.full((1, 10), -1.0), torch.full((1, 10), -1.0), [[1.0]])
    ctx.entropy = torch.arange(10.0).view(1, 10)
    g = grad_of(combine_terms([PPOClip(), EntropyQuantile(0.2)], ctx)[0], ctx)
    assert (g != 0).flatten().tolist() == [False] * 8 + [True] * 2   # top 20%: entropies 8, 9
    ctx.ref_logp = torch.full((1, 10), -2.0)                         # a regularizer is not masked
    g = grad_of(combine_terms([PPOClip(), EntropyQuantile(0.2), KL(coef=0.1)], ctx)[0], ctx)
    assert bool((g != 0).all())
    assert EntropyQuantile.kind == "token_mask"


# ---- adaptive entropy --------------------------------------------------------------------

def stats(entropy, batch=None):
    return StepStats(step=1, problems=[], rewards=[], advantages=[], entropy=entropy, tokens=0,
                     extras={} if batch is None else {"batch": batch})


def test_adaptive_entropy_coefficient_rises_below_target_and_falls_above():
    obj = AdaptiveEntropy(target_entropy=0.5, delta=0.01, min_coef=0.0, max_coef=0.025, init_coef=0.0)
    for expected in (0.01, 0.02, 0.025):
        obj.observe(stats(0.3))
        assert obj.coef == pytest.approx(expected)
    ctx = make_ctx([[-1.0, -1.0]], [[-1.0, -1.0]], [[0.0]])
    ctx.entropy = torch.tensor([[1.0, 2.0]])
    assert obj.term(ctx)[0][0].tolist() == pytest.approx([-0.025, -0.05])
    obj.observe(stats(0.9))
    assert obj.coef == pytest.approx(0.015)
    assert obj.term(ctx)[0].abs().sum() == 0          # above target: bonus off (alpha = c * 1[e <= tgt])
    for _ in range(3):
        obj.observe(stats(0.9))
    assert obj.coef == 0.0                            # clamped at min
    obj.observe(stats(0.2))
    fresh = AdaptiveEntropy(target_entropy=0.5, delta=0.01, max_coef=0.025)
    fresh.load_state_dict(obj.state_dict())
    assert (fresh.coef, fresh.last_entropy) == (obj.coef, obj.last_entropy) == (pytest.approx(0.01), 0.2)


# ---- EPO ---------------------------------------------------------------------------------

def test_epo_smoothing_penalises_entropy_outside_the_band_with_a_gradient():
    obj = EPO(entropy_coef=0.01, smooth_coef=1.0, kappa_low=0.8, kappa_high=1.2, smooth_penalty=0.1,
              total_steps=100, phase_weighting=False)
    batch = SimpleNamespace(entropy=torch.ones(3, 4), mask=torch.ones(3, 4))
    obj.observe(stats(1.0, batch))                    # history: Hbar = 1 at every position
    assert obj.hist_count == [1, 1, 1, 1] and obj.hist_sum == [1.0] * 4
    entropy = torch.tensor([[0.5, 1.0, 1.1, 2.0]], requires_grad=True)
    smooth, outside = obj.smoothing_penalty(entropy, torch.ones(1, 4), step=1)
    assert outside.tolist() == [[True, False, False, True]]
    assert smooth.detach()[0].tolist() == pytest.approx([0.01 * 0.1 * 0.5, 0, 0, 0.01 * 0.1 * 1.0])
    (g,) = torch.autograd.grad(smooth.sum(), entropy)
    assert g[0].tolist() == pytest.approx([-0.001, 0.0, 0.0, 0.001])   # nonzero exactly outside
    ctx = make_ctx([[-1.0] * 4], [[-1.0] * 4], [[0.0]], step=1)
    ctx.entropy = entropy
    loss, _ = obj.term(ctx)
    (g,) = torch.autograd.grad(loss.sum(), entropy)
    assert g[0].tolist() == pytest.approx([-0.011, -0.01, -0.01, -0.009])   # bonus everywhere
    squared = EPO(entropy_coef=0.01, smoothing="square", phase_weighting=False)
    squared.load_state_dict(obj.state_dict())
    assert squared.smoothing_penalty(entropy, torch.ones(1, 4), 1)[0][0, 3].item() == pytest.approx(0.001)


def test_epo_history_is_a_running_mean_per_position_bucket_and_no_history_means_no_penalty():
    obj = EPO(bucket_size=2, phase_weighting=False)
    entropy = torch.tensor([[0.0, 9.0, 9.0]], requires_grad=True)
    assert obj.smoothing_penalty(entropy, torch.ones(1, 3), 1)[1].sum() == 0
    obj.observe(stats(0.0, SimpleNamespace(entropy=torch.tensor([[1.0, 3.0, 5.0]]), mask=torch.tensor([[1.0, 1.0, 1.0]]))))
    obj.observe(stats(0.0, SimpleNamespace(entropy=torch.tensor([[2.0, 2.0, 0.0]]), mask=torch.tensor([[1.0, 1.0, 0.0]]))))
    hbar, has = obj.history(5)           # bucket 0: mean(2, 2); bucket 1: 5 (only step 1 reached it)
    assert hbar.tolist() == pytest.approx([2.0, 2.0, 5.0, 5.0, 0.0]) and has.tolist() == [True] * 4 + [False]


def test_epo_phase_weight_values():
    E = 150
    assert phase_weight(0, E) == pytest.approx(1.0)
    assert phase_weight(37.5, E) == pytest.approx(1 - 0.2 * (1 - math.exp(-1)))
    assert phase_weight(75, E) == pytest.approx(0.8)
    assert phase_weight(150, E) == pytest.approx(0.8 * math.exp(-3))
    assert EPO(total_steps=E).weight(76) == pytest.approx(0.8)   # e = step - 1


# ---- AEPO --------------------------------------------------------------------------------

def problems(n):
    prompts = ["12+3=", "9=", "sort:5432=", "rev:ab=", "4+4=", "rev:xy=", "7=", "2+2="]
    return [Problem(id=str(i), prompt=prompts[i], answer="", source="x") for i in range(n)]


class FakeSampler:
    """Generates with the tiny engine and scores every other rollout correct."""

    def __init__(self, engine):
        self.engine, self.temps = engine, []

    def __call__(self, probs, counts, temps=None):
        self.temps.append(temps)
        t = 1.0 if temps is None else temps
        batch = self.engine.rollout(probs, counts, [t] * 6, seed=len(self.temps))
        batch.rewards = (torch.arange(batch.size) % 2 == 0).float()
        return batch


def test_aepo_adds_tempered_samples_as_reinforce_and_switches_temperature(tiny_model):
    from explorl.policy.engine import RolloutEngine
    engine = RolloutEngine(*tiny_model)
    batch = engine.rollout(problems(8), [4] * 8, [1.0] * 6, seed=0)
    batch.rewards = torch.zeros(batch.size)
    batch.advantages = torch.linspace(-1, 1, batch.size)
    sampler = FakeSampler(engine)
    obj = AEPO(entropy_target=0.5, reinforce_sample_num=60)

    obj.entropy_estimate = 0.2                        # below target: T_high, m = #kept = 2 per group
    out, m = obj.augment(batch, sampler)
    assert sampler.temps[-1] == 1.2 and m["aepo/temperature"] == 1.2
    assert m["aepo/kept"] == 4 and m["aepo/added"] == 4   # 2 problems x 2 correct of 4 (GRPO A > 0.05)
    assert out.size == batch.size                      # the first 4 GRPO samples are overwritten
    assert torch.equal(out.advantages[:-4], batch.advantages[4:])
    assert out.advantages[-4:].tolist() == [1.0] * 4   # REINFORCE: advantage 1
    assert out.rewards[-4:].tolist() == [1.0] * 4
    assert not torch.equal(out.behaviour_logp[-4:], out.old_logp[-4:])  # ratio against T = 1

    obj.entropy_estimate = 0.9                        # above target: T_low, m halved
    out, m = obj.augment(batch, sampler)
    assert sampler.temps[-1] == 0.8 and m["aepo/added"] == 2 and out.size == batch.size
    appender = AEPO(replace=False)
    appender.entropy_estimate = 0.2
    out, m = appender.augment(batch, sampler)
    assert out.size == batch.size + 4 and m["aepo/replaced"] == 0

    obj.observe(stats(0.0, out))
    mask = out.mask
    assert obj.entropy_estimate == pytest.approx(float(-(out.old_logp * mask).sum() / mask.sum()))
    assert AEPO().state_keys == ("entropy_estimate",)


# ---- Pass@k ------------------------------------------------------------------------------

def brute_force_passk(n, c, k):
    rewards = [1] * c + [0] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    group = {s: max(rewards[i] for i in s) for s in subsets}
    mean = sum(group.values()) / len(subsets)
    sigma = math.sqrt(mean * (1 - mean))
    per = [sum(group[s] - mean for s in subsets if i in s) / sum(1 for s in subsets if i in s) for i in range(n)]
    return [p / (sigma + 1e-6) for p in per], rewards


def test_passk_equals_the_subset_average_by_brute_force():
    for n in range(1, 7):
        for k in range(1, n + 1):
            for c in range(n + 1):
                expected, rewards = brute_force_passk(n, c, k)
                a_pos, a_neg = passk_advantages(n, c, k)
                got = [a_pos if r else a_neg for r in rewards]
                assert got == pytest.approx(expected, abs=1e-6), (n, c, k)


def test_passk_groups_use_their_own_size_and_small_groups_fall_back():
    g = groups_of([[1, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0]],
                  [[1] * 6, [1] * 4 + [0] * 2, [1, 1, 0, 0, 0, 0]])
    adv, m = PassK(k=3).compute(g, None)
    p6, n6 = passk_advantages(6, 1, 3)
    p4, n4 = passk_advantages(4, 2, 3)
    assert adv[0].tolist() == pytest.approx([p6] + [n6] * 5)
    assert adv[1].tolist() == pytest.approx([p4, p4, n4, n4, 0, 0])
    grpo, _ = GRPO().compute(g, None)
    assert adv[2].tolist() == pytest.approx(grpo[2].tolist())          # N = 2 < k: GRPO
    assert m["adv/passk_short_groups"] == pytest.approx(1 / 3)
    assert PassK(k=3, fallback="clamp").compute(g, None)[0][2].abs().sum() == 0
    # k = 1 is GRPO with the population std
    adv1, _ = PassK(k=1).compute(groups_of([[1, 0, 0, 0]]), None)
    r = torch.tensor([1.0, 0, 0, 0])
    assert adv1[0].tolist() == pytest.approx(((r - r.mean()) / (r.std(unbiased=False) + 1e-6)).tolist())


# ---- XRPO novelty ------------------------------------------------------------------------

def test_xrpo_novelty_low_likelihood_correct_responses_gain_capped_at_kappa_a():
    g = groups_of([[1, 1, 0, 0]], logp_mean=[[-0.1, -2.0, -1.0, -1.0]])
    adv, _ = GRPO().compute(g, None)
    out, _ = XRPONovelty(novelty_coef=1.0, kappa=1.0).compute(g, adv)
    s = torch.tensor([-0.1, -2.0, -1.0, -1.0])
    eta = torch.exp(s - s.mean())
    assert out[0, 0] == pytest.approx(adv[0, 0])                    # likelier than average: no gain
    assert out[0, 1] == pytest.approx(adv[0, 1] + min(1 - eta[1].item(), adv[0, 1].item()))
    assert out[0, 1] > adv[0, 1]
    assert out[0, 2:].tolist() == pytest.approx(adv[0, 2:].tolist())  # wrong responses unchanged
    capped, _ = XRPONovelty(novelty_coef=100.0, kappa=0.5).compute(g, adv)
    assert capped[0, 1] == pytest.approx(1.5 * adv[0, 1])           # capped at kappa * A


# ---- RepExp ------------------------------------------------------------------------------

def test_leverage_bonus_is_largest_for_the_response_far_from_its_group():
    x = torch.tensor([[0.0, 0.1], [0.1, 0.0], [0.05, 0.05], [3.0, 2.0]])
    b = leverage_bonus(x, 0.01)
    assert int(b.argmax()) == 3
    xc = x.double() - x.double().mean(0)
    inv = torch.linalg.inv(0.01 * torch.eye(2, dtype=torch.float64) + xc.T @ xc)
    assert b.tolist() == pytest.approx([float(v @ inv @ v) for v in xc])


def test_repr_bonus_far_response_gains_and_groups_without_a_correct_one_get_zero():
    obj = ReprBonus(proj_dim=8, bonus_coef=1.0)
    feats = torch.randn(8, 16, generator=torch.Generator().manual_seed(0)) * 0.01
    feats[2] += 5.0                                      # far from its group
    feats[6] += 5.0                                      # far, but its group has no correct response
    group = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    b = obj.bonus(feats, group, torch.tensor([True, False]))
    assert int(b[:4].argmax()) == 2 and b[2] > 3 * b[[0, 1, 3]].max()
    assert b[4:].abs().sum() == 0
    assert torch.equal(b, obj.bonus(feats, group, torch.tensor([True, False])))   # seeded projection


def test_repr_bonus_uses_the_frozen_models_mean_response_hidden_state(tiny_model):
    from explorl.policy.engine import RolloutEngine
    engine = RolloutEngine(*tiny_model)
    batch = engine.rollout(problems(3), [4, 4, 4], [1.0] * 6, seed=0)
    batch.rewards = torch.tensor([1.0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 1])
    feats = mean_response_hidden(engine, batch)
    _, hidden = engine.response_logits(batch, return_hidden=True)
    r = 5
    n = int(batch.lengths[r])
    assert torch.allclose(feats[r], hidden[r, :n].double().mean(0), atol=1e-6)
    groups = batch.groups()
    groups.extras.update(batch=batch, ref_engine=engine)
    adv, _ = GRPO().compute(groups, None)
    out, _ = ReprBonus(apply_to="advantage", bonus_coef=1.0).compute(groups, adv)
    assert torch.equal(out[1], adv[1])                   # no correct response: no bonus
    assert (out[0] - adv[0]).abs().sum() > 0
    out_r, _ = ReprBonus(apply_to="reward").compute(groups, adv)
    assert torch.equal(out_r[1], adv[1])
    boosted = groups.rewards + 0.01 * (out[0:1] - adv[0:1]).expand_as(groups.rewards) * torch.tensor([[1.0], [0], [0]])
    import dataclasses
    expect, _ = GRPO().compute(dataclasses.replace(groups, rewards=boosted), None)
    assert out_r[0].tolist() == pytest.approx(expect[0].tolist(), abs=1e-5)   # GRPO(r + beta b)


# ---- effective rank ----------------------------------------------------------------------

def er_direct(h):
    """Effective rank via the Gram-matrix eigenvalues (the authors' route)."""
    hc = h.double() - h.double().mean(0)
    s = torch.linalg.eigvalsh(hc @ hc.T).clamp_min(0).sqrt()
    p = s / s.sum()
    p = p[p > 1e-12]
    return math.exp(float(-(p * p.log()).sum()))


def test_effective_rank_metrics_equal_a_direct_computation():
    h = torch.randn(9, 5, generator=torch.Generator().manual_seed(1))
    assert effective_rank(h) == pytest.approx(er_direct(h), abs=1e-5)
    assert effective_rank(h[:1]) == 1.0                         # no spread: one direction
    m = rank_metrics(h, stride=2)
    ers = [er_direct(h[:t]) for t in (2, 4, 6, 8)]               # 8 >= T - 1: no extra full step
    diffs = [ers[i] - sum(ers[:i]) / i for i in range(1, 4)]
    assert m["er"] == pytest.approx(er_direct(h), abs=1e-5)
    assert m["erv"] == pytest.approx(sum(diffs) / 3, abs=1e-5)
    assert m["era"] == pytest.approx(((diffs[1] - diffs[0]) + (diffs[2] - diffs[1])) / 2, abs=1e-5)
    m = rank_metrics(h, stride=3)                                # 3, 6, then the full 9 (6 < 8)
    ers = [er_direct(h[:t]) for t in (3, 6, 9)]
    diffs = [ers[1] - ers[0], ers[2] - (ers[0] + ers[1]) / 2]
    assert m["erv"] == pytest.approx(sum(diffs) / 2, abs=1e-5)
    assert m["era"] == pytest.approx(diffs[1] - diffs[0], abs=1e-5)
    assert rank_metrics(h[:3], stride=4) == {"er": pytest.approx(er_direct(h[:3]), abs=1e-5), "erv": 0.0, "era": 0.0}


def test_effective_rank_shaping_is_bounded_by_abs_a_over_kappa(tiny_model):
    obj = EffectiveRank(kappa=2.0)
    adv = torch.tensor([[1.0, -0.5, 0.1, 0.0]])
    mask = torch.ones(1, 4)
    big = obj.shape(adv, torch.full((1, 4), 10.0), mask)
    assert (big - adv)[0].tolist() == pytest.approx([0.5, 0.25, 0.05, 0.0])
    small = obj.shape(adv, torch.tensor([[0.1, 0.1, -3.0, 0.2]]), mask)
    assert (small - adv)[0].tolist() == pytest.approx([0.1, 0.1, 0.0, 0.0])
    # on the tiny model: the first step only records, later steps shape within |A| / kappa
    from explorl.policy.engine import RolloutEngine
    engine = RolloutEngine(*tiny_model)
    batch = engine.rollout(problems(4), [4] * 4, [1.0] * 6, seed=2)
    batch.rewards = (torch.arange(batch.size) % 3 == 0).float()
    groups = batch.groups()
    groups.extras.update(batch=batch, engine=engine)
    adv, _ = GRPO().compute(groups, None)
    obj = EffectiveRank(stride=2)
    first, _ = obj.compute(groups, adv)
    assert torch.equal(first, adv) and obj.steps == 1
    assert obj.ema["er"] != 0.0
    second, m = obj.compute(groups, adv)
    gain = second - adv
    assert bool((gain >= 0).all()) and bool((gain <= adv.abs() / 2 + 1e-6).all())
    restored = EffectiveRank(stride=2)
    restored.load_state_dict(obj.state_dict())
    assert restored.ema == obj.ema and restored.ema_perf == obj.ema_perf and restored.steps == 2


# ---- recipes -----------------------------------------------------------------------------

@pytest.mark.parametrize("name", RECIPES)
def test_recipe_loads_and_builds(name):
    from explorl.config import load_config
    from explorl.train.plugins import Plugins
    cfg = load_config(recipe=name)
    plugins = Plugins.from_config(cfg)
    assert [o.kind for o in plugins.objectives].count("policy") == 1
    if name == "dr_grpo":
        assert cfg.train.loss_agg_mode == "seq-mean-token-sum-norm"
        assert plugins.advantages[0].scale_by_std is False


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_trains_end_to_end_on_the_tiny_config(name, tmp_path, tiny_overrides, monkeypatch, capsys):
    from explorl import cli
    overrides = [o for o in tiny_overrides if not o.startswith(("recipe=", "train.steps="))]
    assert cli.main(["train", "--out", str(tmp_path / name), "--recipe", name, "--steps", "2", "--quiet",
                     *sum((["--set", o] for o in overrides), [])]) == 0
    assert (tmp_path / name / "metrics.jsonl").read_text().count("\n") == 2
