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
from explorl.explore.objective.entropy_quantile import EntropyQuantile, high_entropy_mask
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

PAD_LOGP, PAD_ADV = -30.0, 7.0  # garbage at padding: it would dominate any mean taken over it


def cov_ctx():
    """Three rows of lengths 6, 4, 3 (A = +2, −2, +1); padding holds garbage logp and A."""
    logp = torch.full((3, 6), PAD_LOGP)
    logp[0] = torch.tensor([-0.1, -0.5, -3.0, -4.0, -2.0, -1.0])
    logp[1, :4] = torch.tensor([-0.2, -3.5, -4.5, -1.0])
    logp[2, :3] = torch.tensor([-0.3, -2.5, -0.05])
    mask = torch.tensor([[1.0] * 6, [1.0] * 4 + [0.0] * 2, [1.0] * 3 + [0.0] * 3])
    adv = torch.tensor([[2.0], [-2.0], [1.0]]).expand(3, 6).clone()
    adv[mask == 0] = PAD_ADV
    logp[1, 5] = -1.3  # this pad's Cov against the valid means, (7 − 0.54)(−1.3 + 1.74) = 2.86, is in the band
    old = logp.clone()
    old[0, 0] = -0.4  # ratio e^0.3 = 1.35 > 1.2 with A > 0: clipped by PPO (and Cov = 2.40 in band)
    return make_ctx(logp, old, adv, mask)


def cov_by_hand(ctx):
    """{(row, t): Cov} over the valid tokens only: (A − Ā)(log π − mean log π), means over valid tokens."""
    valid = [(i, t) for i in range(ctx.mask.shape[0]) for t in range(ctx.mask.shape[1]) if ctx.mask[i, t] > 0]
    adv, logp = ctx.advantages.detach(), ctx.logp.detach()
    a_bar = sum(float(adv[i, t]) for i, t in valid) / len(valid)
    l_bar = sum(float(logp[i, t]) for i, t in valid) / len(valid)
    return {(i, t): (float(adv[i, t]) - a_bar) * (float(logp[i, t]) - l_bar) for i, t in valid}


def as_mask(cells, like):
    out = torch.zeros_like(like, dtype=torch.bool)
    for i, t in cells:
        out[i, t] = True
    return out


def test_token_covariance_uses_only_the_valid_tokens():
    # N = 13 valid tokens: Ā = (6·2 − 4·2 + 3·1)/13 = 7/13 = 0.5385; mean log π = −22.65/13 = −1.7423
    # row 0: 1.4615·(−0.1 + 1.7423) = 2.400, ...; row 1: −2.5385·(−3.5 + 1.7423) = 4.462, ...
    ctx = cov_ctx()
    cov = cov_by_hand(ctx)
    assert cov[0, 0] == pytest.approx(2.400, abs=1e-3) and cov[1, 1] == pytest.approx(4.462, abs=1e-3)
    assert cov[1, 2] == pytest.approx(7.000, abs=1e-3) and cov[2, 2] == pytest.approx(0.781, abs=1e-3)
    got = token_covariance(ctx.advantages, ctx.logp, ctx.mask)
    for (i, t), c in cov.items():
        assert float(got[i, t]) == pytest.approx(c, abs=1e-5)


def test_clip_cov_cuts_gradient_exactly_on_unclipped_tokens_in_the_covariance_band():
    ctx = cov_ctx()
    valid = ctx.mask > 0
    cov = cov_by_hand(ctx)
    # in the band (1, 5): (0,0) 2.400, (0,1) 1.816, (0,5) 1.085, (1,1) 4.462; (1,2) = 7.0 is above it
    band = {k for k, c in cov.items() if 1.0 < c < 5.0}
    assert band == {(0, 0), (0, 1), (0, 5), (1, 1)}
    ratio = torch.exp(ctx.logp - ctx.old_logp).detach()
    _, low, high = clipped_surrogate(ratio, ctx.advantages, 0.2, 0.2)
    clipped = (low | high) & valid
    assert clipped.nonzero().tolist() == [[0, 0]]  # a clipped token inside the band ...
    expect_cut = as_mask(band - {(0, 0)}, valid)
    loss, m = ClipCov(clip_cov_ratio=1.0).term(ctx)  # ratio 1: every eligible token is cut
    g = grad_of(loss, ctx)
    assert torch.equal((g == 0) & valid, expect_cut | clipped)  # ... is not counted: PPO already stops it
    assert m["loss/clip_cov_frac"] == pytest.approx(3 / 13)    # a mean over the 13 valid tokens
    # ratio 0.2: floor(0.2 · 13 valid tokens) = 2 of the 3 candidates (padding does not count)
    for seed in range(5):
        ctx = cov_ctx()
        ctx.extras["generator"] = torch.Generator().manual_seed(seed)
        cut = (grad_of(ClipCov(clip_cov_ratio=0.2).term(ctx)[0], ctx) == 0) & valid & ~clipped
        assert int(cut.sum()) == 2 and not (cut & ~expect_cut).any()
    # the default ratio cuts max(1, floor(r*N)) = 1 random token, always one inside the band
    for seed in range(5):
        ctx = cov_ctx()
        ctx.extras["generator"] = torch.Generator().manual_seed(seed)
        g = grad_of(ClipCov().term(ctx)[0], ctx)
        cut = (g == 0) & valid & ~clipped
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
    # pi_old off pi_theta on every token (log ratio ±0.1, ±0.2, ...), so the penalty shows wherever it acts
    step = torch.arange(1.0, 19.0).view(3, 6) * 0.1 * torch.tensor([1.0, -1.0]).repeat(9).view(3, 6)
    ctx.old_logp = ctx.logp.detach() - step
    valid = ctx.mask > 0
    cov = cov_by_hand(ctx)
    # k = max(1, floor(0.25 · 13)) = 3 of the valid tokens: (1,2) 7.0, (1,1) 4.46, (0,0) 2.40
    top3 = sorted(cov, key=cov.get, reverse=True)[:3]
    assert set(top3) == {(1, 2), (1, 1), (0, 0)}
    top = as_mask(top3, valid)
    loss, m = KLCov(kl_cov_ratio=0.25, ppo_kl_coef=0.5).term(ctx)
    log_ratio = (ctx.logp - ctx.old_logp).detach()
    plain = -ctx.advantages * torch.exp(log_ratio)   # unclipped everywhere (verl)
    penalty = torch.where(top, 0.5 * log_ratio.abs(), torch.zeros(()))
    assert torch.allclose((loss.detach() - plain)[valid], penalty[valid])
    g = grad_of(loss, ctx)
    diff = (g - plain)[valid]
    assert torch.allclose(diff, torch.where(top, 0.5 * torch.sign(log_ratio), torch.zeros(()))[valid], atol=1e-6)
    assert m["loss/kl_cov_frac"] == pytest.approx(3 / 13)
    assert not (KLCov(kl_cov_ratio=1.0).select(ctx) & ~valid).any()  # padding is never selected


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


def test_lp_reg_keeps_the_ratio_unclipped_on_regularised_tokens():
    """π_old off π_θ (ratio e^−0.5 = 0.61 < 0.8) with a 0.2 clip: the regularised tokens (A < 0) take
    −A·ρ unclipped plus the KL, every other token the clipped PPO loss (−A·0.8 where A < 0)."""
    ctx, logits = lp_ctx()
    ctx.old_logp = ctx.logp.detach() + 0.5
    obj = LpReg(min_p_threshold=0.02, logp_neg_k_percent=0.5, ppo_kl_coef=1.0, clip_ratio_low=0.2, clip_ratio_high=0.2)
    proxy = min_p_proxy_logp(logits, ctx.logp, 0.02)
    chosen = obj.select(ctx, proxy)
    assert chosen.any()
    loss, _ = obj.term(ctx)
    ratio, adv = math.exp(-0.5), ctx.advantages
    x = proxy - ctx.logp.detach()
    kl = (torch.exp(x) - x - 1).clamp(-10, 10)
    ppo = torch.where(adv < 0, -adv * 0.8, -adv * ratio)
    assert torch.allclose(loss.detach(), torch.where(chosen, -adv * ratio + kl, ppo), atol=1e-5)


def padded_lp_ctx():
    """lp_ctx with padding: row 1 ends after 3 tokens, row 3 after 4. The padding holds garbage that
    looks like the best candidates: negative advantages (row 3's pad gets A = −5) and the lowest
    non-noise probabilities (the sampled token 3.8 nats under the row's top logit: kept by min-p)."""
    ctx, logits = lp_ctx()
    logits = logits.detach().clone()
    mask = torch.ones(4, 5)
    mask[1, 3:] = 0.0
    mask[3, 4] = 0.0
    gen = torch.Generator().manual_seed(0)                   # lp_ctx's draws: its logits, then its ids
    torch.randn(4, 5, 6, generator=gen)
    ids = torch.randint(0, 6, (4, 5), generator=gen).clamp(max=4)
    for i, t in ((1, 3), (1, 4), (3, 4)):
        others = torch.cat([logits[i, t, :ids[i, t]], logits[i, t, ids[i, t] + 1:5]])
        logits[i, t, ids[i, t]] = others.max() - 3.8
    logits[..., 5] = logits[..., :5].max(-1).values - 4.5  # the never-sampled noise token, as lp_ctx
    logits.requires_grad_(True)
    logp = torch.log_softmax(logits, -1).gather(-1, ids[..., None]).squeeze(-1)
    assert torch.equal(logp.detach()[mask > 0], ctx.logp.detach()[mask > 0])  # valid tokens as in lp_ctx
    adv = ctx.advantages.clone()
    adv[3, 4] = -5.0
    return LossContext(logp=logp, old_logp=logp.detach(), behaviour_logp=logp.detach(), advantages=adv,
                       mask=mask, logits=logits), logits


def test_lp_reg_selection_ignores_padding():
    ctx, logits = padded_lp_ctx()
    lp, valid = ctx.logp.detach(), ctx.mask > 0
    proxy = min_p_proxy_logp(logits, ctx.logp, 0.02)
    pads = [(1, 3), (1, 4), (3, 4)]
    negatives = [(i, t) for i in range(4) for t in range(5) if valid[i, t] and ctx.advantages[i, t] < 0]
    assert len(negatives) == 8                        # rows 0 and 1, valid tokens only
    order = sorted(negatives, key=lambda c: float(lp[c]))
    bottom = order[:int(0.5 * 8)]                     # k = floor(0.5 · 8) = 4
    expect = {c for c in bottom if lp[c] < proxy[c]}  # minus the min-p noise token (0, 1)
    assert bottom[0] == (0, 1) and (0, 1) not in expect and len(expect) == 3
    # the garbage at the padding would take bottom slots if padding were not excluded
    assert all(lp[p] < lp[c] and lp[p] < proxy[p] for p in pads for c in expect)
    obj = LpReg(min_p_threshold=0.02, logp_neg_k_percent=0.5, ppo_kl_coef=1.0)
    chosen = obj.select(ctx, proxy)
    assert {tuple(c) for c in chosen.nonzero().tolist()} == expect
    loss, m = obj.term(ctx)
    assert m["loss/lp_reg_frac"] == pytest.approx(3 / 17)   # a mean over the 17 valid tokens


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
    g = grad_of(combine_terms([PPOClip(), EntropyQuantile(0.2)], ctx)[0][0].loss, ctx)
    assert (g != 0).flatten().tolist() == [False] * 8 + [True] * 2   # top 20%: entropies 8, 9
    ctx.ref_logp = torch.full((1, 10), -2.0)                         # a regularizer is not masked
    g = grad_of(combine_terms([PPOClip(), EntropyQuantile(0.2), KL(coef=0.1)], ctx)[0][0].loss, ctx)
    assert bool((g != 0).all())
    assert EntropyQuantile.kind == "token_mask"


def test_entropy_quantile_threshold_is_taken_over_valid_tokens_only():
    # row 0: 10 tokens, entropies 0..9; row 1: 5 tokens, entropies 10..14, then 5 padding positions
    # holding entropy 50. Over the 15 valid tokens, the 0.8-quantile (linear interpolation, as
    # torch.quantile) sits at position 0.8 · 14 = 11.2 of the sorted values: 11 + 0.2 · (12 − 11) = 11.2,
    # so the top 20% are the entropies 12, 13, 14. (Over all 20 positions it would be 50: none kept.)
    entropy = torch.cat([torch.arange(10.0), torch.arange(10.0, 15.0), torch.full((5,), 50.0)]).view(2, 10)
    mask = torch.tensor([[1.0] * 10, [1.0] * 5 + [0.0] * 5])
    weight, threshold = high_entropy_mask(entropy, mask, 0.2)
    assert threshold == pytest.approx(11.2)
    expect = torch.zeros(2, 10, dtype=torch.bool)
    expect[1, 2:5] = True
    assert torch.equal(weight > 0, expect)
    ctx = make_ctx(torch.full((2, 10), -1.0), torch.full((2, 10), -1.0), [[1.0], [1.0]], mask)
    ctx.entropy = entropy
    (part,), m = combine_terms([PPOClip(), EntropyQuantile(0.2)], ctx)
    assert torch.equal(grad_of(part.loss, ctx) != 0, expect)
    assert m["loss/entropy_mask_threshold"] == pytest.approx(11.2)
    assert m["loss/entropy_mask_frac"] == pytest.approx(3 / 15)
    # low garbage pulls the other way: 0.8-quantile of 0..14 plus five −50 would be 9.2 (keeps 10, 11)
    entropy[1, 5:] = -50.0
    assert high_entropy_mask(entropy, mask, 0.2)[1] == pytest.approx(11.2)


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


def test_adaptive_entropy_target_relative_to_the_runs_first_steps():
    """target_relative: the coefficient stays 0 while the first steps' entropy is measured; the
    target is then that share of their mean, and the control acts against it from the next step."""
    obj = AdaptiveEntropy(target_entropy=None, target_relative=0.75, relative_steps=2, delta=0.01, max_coef=0.05)
    ctx = make_ctx([[-1.0, -1.0]], [[-1.0, -1.0]], [[0.0]])
    ctx.entropy = torch.tensor([[1.0, 2.0]])
    assert obj.term(ctx)[0].abs().sum() == 0 and obj.target is None
    assert "entropy/adaptive_target" not in obj.observe(stats(0.6))
    assert obj.term(ctx)[0].abs().sum() == 0 and obj.coef == 0.0
    assert obj.observe(stats(1.0))["entropy/adaptive_target"] == pytest.approx(0.6)  # 0.75 × mean(0.6, 1.0)
    obj.observe(stats(0.59))                          # below the floor: the coefficient rises
    assert obj.coef == pytest.approx(0.01) and obj.term(ctx)[0][0].tolist() == pytest.approx([-0.01, -0.02])
    fresh = AdaptiveEntropy(target_entropy=None, target_relative=0.75, relative_steps=2)
    fresh.load_state_dict(obj.state_dict())
    assert (fresh.target, fresh.start_entropies, fresh.coef) == (obj.target, [0.6, 1.0], obj.coef)
    with pytest.raises(ValueError, match="either target_entropy .* or target_relative"):
        AdaptiveEntropy(target_entropy=0.2, target_relative=0.75)
    with pytest.raises(ValueError, match="either target_entropy"):
        AdaptiveEntropy(target_entropy=None)


# ---- EPO ---------------------------------------------------------------------------------

def test_recipes_are_set_as_their_papers_intend_on_any_testbed():
    """Lp-Reg on-policy whatever the config's updates per batch; EPO's schedule over the run's
    length; adaptive entropy's target relative to the run's start."""
    from explorl.config import load_config
    lp = load_config("configs/testbed.yaml", [], "lp_reg")
    assert (lp.train.ppo_epochs, lp.train.minibatches) == (1, 1)
    objectives = lambda cfg: {o["name"]: o for o in cfg.to_dict()["objective"]}  # noqa: E731
    assert objectives(load_config(None, [], "epo"))["epo"]["total_steps"] is None
    adaptive = objectives(load_config(None, [], "adaptive_entropy"))["adaptive_entropy"]
    assert adaptive["target_entropy"] is None and adaptive["target_relative"] == 0.75


def test_epo_phase_schedule_over_the_runs_actual_length():
    """total_steps: null: the phase weight follows the share of the token budget generated (a run
    of unknown step count), or of train.steps without a budget; either way the code's w(e/E)."""
    budgeted = EPO(total_steps=None)
    assert budgeted.before_training(SimpleNamespace(run_length={"steps": 1_000_000, "max_tokens": 1000})) == {
        "phase schedule over tokens": 1000}
    assert budgeted.weight(1) == pytest.approx(1.0)
    for done in (250, 250, 200):                      # 700 of 1000 tokens generated: e/E = 0.7
        budgeted.observe(SimpleNamespace(tokens=done, extras={}))
    assert budgeted.weight(3) == pytest.approx(phase_weight(0.7, 1.0)) == pytest.approx(phase_weight(105, 150))
    assert budgeted.weight(3) > 0.1                   # a fixed 40-step schedule would be ~0 by step 40 of 112
    stepped = EPO(total_steps=None)
    stepped.before_training(SimpleNamespace(run_length={"steps": 40, "max_tokens": None}))
    assert stepped.weight(21) == pytest.approx(EPO(total_steps=40).weight(21))
    fresh = EPO(total_steps=None)
    fresh.load_state_dict(budgeted.state_dict())      # a resume does not run before_training again
    assert fresh.weight(3) == budgeted.weight(3)
    with pytest.raises(ValueError, match="the run's length was never set"):
        EPO(total_steps=None).weight(2)


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
    # with the phase weight: step 76 of E = 100 is e = 75 >= E/2, w = 0.8·exp(−3·25/50) scales the penalty
    weighted = EPO(entropy_coef=0.01, smooth_coef=1.0, kappa_low=0.8, kappa_high=1.2, smooth_penalty=0.1,
                   total_steps=100)
    weighted.load_state_dict(obj.state_dict())
    w = 0.8 * math.exp(-1.5)
    assert weighted.smoothing_penalty(entropy, torch.ones(1, 4), step=76)[0].detach()[0].tolist() == pytest.approx(
        [w * 0.0005, 0, 0, w * 0.001])
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
    half, _ = XRPONovelty(novelty_coef=0.5, kappa=1.0).compute(g, adv)
    assert half[0, 1] == pytest.approx(adv[0, 1] + 0.5 * (1 - eta[1].item()))   # λ(1 − η) = 0.31 < κA = 0.87


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
    half, _ = ReprBonus(apply_to="advantage", bonus_coef=0.5).compute(groups, adv)
    assert torch.allclose(half - adv, 0.5 * (out - adv), atol=1e-6)   # A + β·b
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


def aux_by_hand(era, erv, er, ema, ema_perf, gain=1.5, w_global=1.0):
    """aux of one response, the module docstring's formula written out in floats."""
    dev = {m: min(5.0, max(-5.0, (v - ema[m]) / (abs(ema[m]) + 1e-8)))
           for m, v in (("era", era), ("erv", erv), ("er", er))}
    tau = 1 / (1 + math.exp(-gain * dev["era"]))
    g = w_global * (1 - (ema_perf + 1) / 2)
    return g * (tau * math.tanh(dev["er"]) + (1 - tau) * math.tanh(dev["erv"]))  # w = τ·[0,0,1] + (1−τ)·[0,1,0]


def test_effective_rank_aux_by_hand_and_shaping_bounded_by_abs_a_over_kappa():
    obj = EffectiveRank(kappa=2.0)
    obj.ema, obj.ema_perf = {"era": 0.5, "erv": -0.2, "er": 2.0}, 0.2
    # g = 1 · (1 − (0.2 + 1)/2) = 0.4; dev_m = (m − EMA_m)/|EMA_m| clipped to ±5
    values = {"era": [1.0, -10.0, 0.5], "erv": [-0.1, -0.6, 10.0], "er": [5.0, 2.0, 0.0]}
    # r0: dev = (1 − 0.5)/0.5 = 1, (−0.1 + 0.2)/|−0.2| = 0.5, (5 − 2)/2 = 1.5; τ = σ(1.5·1) = 0.8175745
    #     aux = 0.4·((1 − τ)·tanh 0.5 + τ·tanh 1.5) = 0.4·(0.1824255·0.4621172 + 0.8175745·0.9051483)
    #         = 0.4·(0.0843020 + 0.7400261) = 0.3297312
    # r1: dev_era = (−10 − 0.5)/0.5 = −21 -> −5, τ = σ(−7.5) = 0.0005528; dev_erv = (−0.6 + 0.2)/0.2 = −2;
    #     dev_er = 0: aux = 0.4·(0.9994472·tanh(−2) + 0) = 0.4·(0.9994472·−0.9640276) = −0.3853979
    # r2: dev_era = 0, τ = 0.5; dev_erv = 10.2/0.2 = 51 -> 5; dev_er = −1:
    #     aux = 0.4·0.5·(tanh 5 + tanh(−1)) = 0.2·(0.9999092 − 0.7615942) = 0.0476630
    expected = [0.3297312, -0.3853979, 0.0476630]
    aux = obj.aux({m: torch.tensor(v, dtype=torch.float64) for m, v in values.items()})
    assert aux.tolist() == pytest.approx(expected, abs=1e-6)
    assert [aux_by_hand(*(values[m][i] for m in ("era", "erv", "er")), obj.ema, obj.ema_perf)
            for i in range(3)] == pytest.approx(expected, abs=1e-6)
    obj.fixed = True                                     # g = w_global = 1: 2.5 times the above
    assert obj.aux({m: torch.tensor(v, dtype=torch.float64) for m, v in values.items()}).tolist() == pytest.approx(
        [2.5 * a for a in expected], abs=1e-6)
    obj.fixed = False
    # shaping: A + min(ReLU(aux), |A|/κ). A = 1 caps at 0.5: r0 gains 0.3297 (0 < gain < 0.5),
    # r1 nothing (aux < 0), r2 0.0477; r0 again with A = 0.4 is capped at 0.4/2 = 0.2
    adv = torch.tensor([[1.0, 1.0, 1.0, 0.4]])
    row_aux = aux.float()[[0, 1, 2, 0]].view(1, 4)
    gain = obj.shape(adv, row_aux, torch.ones(1, 4)) - adv
    assert gain[0].tolist() == pytest.approx([0.3297312, 0.0, 0.0476630, 0.2], abs=1e-6)
    assert 0 < gain[0, 0] < 0.5 and gain[0, 3] == pytest.approx(0.4 / 2)
    masked = obj.shape(adv, row_aux, torch.tensor([[1.0, 1.0, 0.0, 1.0]])) - adv
    assert masked[0, 2] == 0.0                           # padding gets no bonus
    big = obj.shape(torch.tensor([[1.0, -0.5, 0.1, 0.0]]), torch.full((1, 4), 10.0), torch.ones(1, 4))
    assert (big - torch.tensor([[1.0, -0.5, 0.1, 0.0]]))[0].tolist() == pytest.approx([0.5, 0.25, 0.05, 0.0])


def test_effective_rank_shaping_is_bounded_by_abs_a_over_kappa(tiny_model):
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
    values = obj.metrics(engine, batch)
    # after one step every EMA is 0.3 · (batch mean), EMA_perf = 0.3 · mean(2r − 1)
    ema = {m: 0.3 * float(values[m].mean()) for m in ("era", "erv", "er")}
    assert obj.ema == pytest.approx(ema) and obj.ema_perf == pytest.approx(0.3 * float((2 * batch.rewards - 1).mean()))
    aux = torch.tensor([aux_by_hand(*(float(values[m][i]) for m in ("era", "erv", "er")), ema, obj.ema_perf)
                        for i in range(batch.size)])
    second, m = obj.compute(groups, adv)
    aux_groups, _ = batch.to_groups(aux.float())
    expect = adv + torch.minimum(aux_groups.clamp_min(0), adv.abs() / 2) * groups.mask
    assert torch.allclose(second, expect, atol=1e-5)
    gain = second - adv
    assert bool((gain >= 0).all()) and bool((gain <= adv.abs() / 2 + 1e-6).all())
    assert bool((gain > 0).any())                        # some response is actually shaped
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
