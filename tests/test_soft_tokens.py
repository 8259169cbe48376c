"""Soft tokens in the engine: CoT2 with K = 1 is ordinary decoding bit for bit, a soft token is
the stated mixture of embeddings, the per-step log-prob rules (MTS with its 1/K scaling,
Dirichlet) give the hand-computed numbers, and the training forward recomputes what sampling
recorded, on both backends."""
import math

import numpy as np
import pytest
import torch

from explorl.batch import RolloutBatch
from explorl.explore.decoding.cot2 import CoT2Steps
from explorl.explore.decoding.swireasoning import SwiReasoning
from explorl.policy.engine import RolloutEngine
from explorl.policy.sampling import token_logp_entropy
from explorl.policy.soft import (DIRICHLET, MTS, TOKEN, UNSCORED, SoftInputs, dirichlet_concentration,
                                 dirichlet_log_density, mix_embeddings, mts_log_prob, response_logp_entropy)
from explorl.tasks import Problem

PROMPTS = ["12+3=", "9=", "sort:5432="]


def problems():
    return [Problem(id=str(i), prompt=p, answer="", source="x") for i, p in enumerate(PROMPTS)]


def mts(k, think=3):
    return CoT2Steps(think, "mts", k, True, 1.0, 1e-3)


@pytest.mark.parametrize("backend", ["fast", "hf"])
@pytest.mark.parametrize("with_noise", [False, True])
def test_cot2_with_one_token_is_ordinary_decoding_bit_for_bit(tiny_model, backend, with_noise):
    engine = RolloutEngine(*tiny_model, backend)
    counts, T = [3, 2, 2], 8
    noise = torch.rand(sum(counts), T, generator=torch.Generator().manual_seed(1)) if with_noise else None
    plain = engine.rollout(problems(), counts, [0.9] * T, seed=5, noise=noise)
    soft = engine.rollout(problems(), counts, [0.9] * T, seed=5, noise=noise, thinking=mts(1))
    for name in ("response_ids", "mask", "behaviour_logp", "old_logp", "entropy"):
        assert torch.equal(getattr(plain, name), getattr(soft, name)), name
    thought = soft.mask[:, :3] > 0  # a row may end (sample EOS) inside the thought
    assert torch.equal(soft.soft.fed[:, :3], thought) and (soft.soft.rule[:, :3][thought] == MTS).all()
    # the thought is not text: the verifier reads the positions after it
    shown = plain.response_ids[:, 3:].masked_fill(torch.isin(plain.response_ids[:, 3:], engine.stop_ids), engine.pad)
    assert soft.texts == engine.tokenizer.batch_decode(shown, skip_special_tokens=True)
    # training feeds the recorded soft inputs and recomputes the same log-probs, bit for bit
    logits_plain, logits_soft = engine.response_logits(plain), engine.response_logits(soft)
    assert torch.equal(logits_plain, logits_soft)
    assert torch.equal(response_logp_entropy(logits_soft, soft, None, True)[0],
                       token_logp_entropy(logits_plain, plain.response_ids, True)[0])


def test_soft_token_is_the_stated_mixture():
    embed = torch.nn.Embedding(4, 2)
    with torch.no_grad():
        embed.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 1.0], [-1.0, 4.0]]))
    tokens, fed = torch.tensor([2, 0]), torch.tensor([False, True])
    dense = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.5, 0.25, 0.25, 0.0]])  # p^T E
    out = mix_embeddings(embed, tokens, fed, None, dense)
    assert torch.allclose(out[1], torch.tensor([0.5 * 1 + 0.25 * 3, 0.25 * 2 + 0.25 * 1]))
    assert torch.equal(out[0], embed.weight[2])  # not fed: the token's own embedding
    ids, w = torch.tensor([[0, 0, 0], [1, 1, 3]]), torch.full((2, 3), 1 / 3)  # MTS: mean of K = 3 draws
    out = mix_embeddings(embed, tokens, fed, ids, w)
    assert torch.allclose(out[1], torch.tensor([(0 + 0 - 1) / 3, (2 + 2 + 4) / 3]))


def test_mts_log_prob_and_ratio_hand_numbers():
    z = torch.log(torch.tensor([[1.0, 2.0, 3.0]]))
    ids, w = torch.tensor([[1, 2]]), torch.full((1, 2), 0.5)
    # K = 2: softmax(z / 2) is proportional to sqrt of (1, 2, 3)
    s = 1 + math.sqrt(2) + math.sqrt(3)
    expected = math.log(math.sqrt(2) / s) + math.log(math.sqrt(3) / s)
    assert mts_log_prob(z, ids, w, scale_logits=True).item() == pytest.approx(expected, abs=1e-6)
    # without the scaling the code divides the summed log-ratio by K
    assert mts_log_prob(z, ids, w, scale_logits=False).item() == pytest.approx(
        (math.log(2 / 6) + math.log(3 / 6)) / 2, abs=1e-6)
    # the same id drawn twice counts twice (the ordered draw, not the multiset)
    twice = mts_log_prob(z, torch.tensor([[2, 2]]), w).item()
    assert twice == pytest.approx(2 * math.log(math.sqrt(3) / s), abs=1e-6)
    # the ratio of a step: exp(sum of new log-probs - sum of old), new logits (1, 1, 6)
    z_new = torch.log(torch.tensor([[1.0, 1.0, 6.0]]))
    s_new = 1 + 1 + math.sqrt(6)
    ratio = torch.exp(mts_log_prob(z_new, ids, w) - mts_log_prob(z, ids, w)).item()
    assert ratio == pytest.approx((1 / s_new) * (math.sqrt(6) / s_new) / ((math.sqrt(2) / s) * (math.sqrt(3) / s)),
                                  rel=1e-5)
    # the same numbers through a batch's record (what training calls)
    soft = SoftInputs(torch.tensor([[True, False]]), torch.tensor([[MTS, TOKEN]], dtype=torch.int8),
                      torch.tensor([[[0.5, 0.5], [0.0, 0.0]]]), torch.tensor([[[1, 2], [0, 0]]]))
    logits = torch.cat([z, z])[None]
    logp = soft.rescore(logits, torch.zeros(1, 2))
    assert logp[0, 0].item() == pytest.approx(expected, abs=1e-6) and logp[0, 1].item() == 0.0


def test_dirichlet_log_density_matches_scipy():
    from scipy.stats import dirichlet
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 12, generator=g) * 3
    scale, min_prob = 1.0, 1e-3
    p = torch.softmax(logits, -1).double().numpy()
    for row in range(5):
        support = p[row] >= min_prob
        alpha = np.clip(p[row][support], min_prob, None)
        alpha = scale * alpha / alpha.sum()
        w_support = np.random.default_rng(row).dirichlet(alpha * 50 + 0.5)  # any point of the simplex
        w = np.zeros(12)
        w[support] = w_support
        ours = dirichlet_log_density(logits[row:row + 1], torch.tensor(w[None], dtype=torch.float64), scale, min_prob)
        assert ours.item() == pytest.approx(dirichlet.logpdf(w_support, alpha), rel=1e-4, abs=1e-3)
    # the concentration: clamped, renormalised on the support, times the scale, 0 off it
    support = torch.softmax(logits, -1) >= min_prob
    alpha = dirichlet_concentration(logits, support, 2.0, min_prob)
    assert torch.allclose(alpha.sum(-1), torch.full((5,), 2.0)) and (alpha[~support] == 0).all()


@pytest.mark.parametrize("backend", ["fast", "hf"])
@pytest.mark.parametrize("rule", ["mts3", "dirichlet", "mixture", "swireasoning"])
def test_training_recomputes_the_sampled_log_probs(tiny_model, backend, rule):
    engine = RolloutEngine(*tiny_model, backend)
    thinking = {"mts3": mts(3), "dirichlet": CoT2Steps(3, "dirichlet", 1, True, 1.0, 1e-3),
                "mixture": CoT2Steps(3, "mixture", 1, True, 1.0, 1e-3),
                "swireasoning": SwiReasoning(window_size=1, max_switch_count=1).thinking(0)}[rule]
    batch = engine.rollout(problems(), [3, 2, 2], [1.0] * 10, seed=2, thinking=thinking)
    logp, _ = response_logp_entropy(engine.response_logits(batch), batch, None, False)
    assert torch.allclose(logp * batch.grad_mask, batch.old_logp * batch.grad_mask, atol=1e-5)
    assert batch.soft.fed.any()
    unscored = (batch.soft.rule == UNSCORED) & (batch.mask > 0)
    if rule in ("mixture", "swireasoning"):  # deterministic latent steps have no log-prob: out of the loss
        assert unscored.any() and (batch.grad_mask[unscored] == 0).all() and (batch.old_logp[unscored] == 0).all()
    else:
        assert not unscored.any() and batch.loss_mask is None
        thought = batch.mask[:, :3] > 0
        assert (batch.soft.rule[:, :3][thought] == (MTS if rule == "mts3" else DIRICHLET)).all()


def test_soft_record_follows_rows_through_selection_and_joins(tiny_model):
    engine = RolloutEngine(*tiny_model)
    soft = engine.rollout(problems(), [2, 2, 2], [1.0] * 6, seed=0, thinking=mts(3, think=2))
    plain = engine.score_responses(problems()[:1], [1], texts=["12"])
    picked = soft.select_groups([2, 0])
    assert torch.equal(picked.soft.ids, torch.cat([soft.soft.ids[4:6], soft.soft.ids[0:2]]))
    joined = RolloutBatch.concat([picked, plain], engine.pad)
    assert joined.soft.size == joined.size and joined.soft.width == joined.response_ids.shape[1]
    assert not joined.soft.fed[-1].any() and (joined.soft.rule[-1] == TOKEN).all()
    logp, _ = response_logp_entropy(engine.response_logits(joined), joined, None, False)
    assert torch.allclose(logp[:4] * joined.mask[:4], joined.old_logp[:4], atol=1e-5)


def test_a_soft_token_decoding_with_a_tree_rollout_is_refused(tmp_path):
    from conftest import make_tiny_config
    from explorl.train.loop import Trainer
    cfg = make_tiny_config(recipe="cot2_mts", rollout={"name": "tree", "branch": 2, "segment_tokens": 4})
    with pytest.raises(ValueError, match="rollout tree does not"):
        Trainer(cfg, tmp_path / "run", progress=False)
