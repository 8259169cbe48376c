"""The rollout engine: fast path == Hugging Face forward, determinism, variable counts,
per-position temperature and top-p, and recorded behaviour log-probs."""
import pytest
import torch

from explorl.policy.engine import RolloutEngine
from explorl.tasks import Problem

PROMPTS = ["12+3=", "9=", "sort:5432=", "rev:ab="]


def problems():
    return [Problem(id=str(i), prompt=p, answer="", source="x") for i, p in enumerate(PROMPTS)]


def test_fast_path_matches_hf_forward_logits_and_gradients(tiny_model):
    model, tok = tiny_model
    fast, hf = RolloutEngine(model, tok, "fast"), RolloutEngine(model, tok, "hf")
    batch = fast.rollout(problems(), [3, 1, 2, 2], [1.0] * 8, seed=0)
    lf, lh = fast.response_logits(batch), hf.response_logits(batch)
    assert torch.allclose(lf, lh, atol=1e-5)
    gf = torch.autograd.grad(lf.logsumexp(-1).sum(), model.model.layers[0].self_attn.q_proj.weight)[0]
    gh = torch.autograd.grad(lh.logsumexp(-1).sum(), model.model.layers[0].self_attn.q_proj.weight)[0]
    assert torch.allclose(gf, gh, atol=1e-5)
    # the recorded temperature-1 log-probs are those of the training forward
    logp = torch.log_softmax(lf, -1).gather(-1, batch.response_ids[..., None]).squeeze(-1)
    assert torch.allclose(logp * batch.mask, batch.old_logp, atol=1e-5)


def test_fast_and_hf_sample_the_same_tokens(tiny_model):
    model, tok = tiny_model
    a = RolloutEngine(model, tok, "fast").rollout(problems(), [2, 2, 2, 2], [1.0] * 8, seed=3)
    b = RolloutEngine(model, tok, "hf").rollout(problems(), [2, 2, 2, 2], [1.0] * 8, seed=3)
    assert a.texts == b.texts


def test_rollout_is_deterministic_for_a_seed(tiny_model):
    engine = RolloutEngine(*tiny_model)
    a = engine.rollout(problems(), [4, 4, 4, 4], [1.0] * 8, seed=11)
    b = engine.rollout(problems(), [4, 4, 4, 4], [1.0] * 8, seed=11)
    c = engine.rollout(problems(), [4, 4, 4, 4], [1.0] * 8, seed=12)
    assert a.texts == b.texts and torch.equal(a.behaviour_logp, b.behaviour_logp)
    assert a.texts != c.texts


def test_variable_rollout_counts_per_problem(tiny_model):
    engine = RolloutEngine(*tiny_model)
    counts = [5, 1, 3, 2]
    batch = engine.rollout(problems(), counts, [1.0] * 6, seed=0)
    assert batch.size == sum(counts)
    assert torch.bincount(batch.group).tolist() == counts
    rewards, mask = batch.to_groups(torch.arange(batch.size, dtype=torch.float))
    assert mask.sum(1).tolist() == counts
    assert torch.equal(batch.from_groups(rewards), torch.arange(batch.size, dtype=torch.float))
    with pytest.raises(ValueError, match="count"):
        engine.rollout(problems(), [1, 0, 1, 1], [1.0] * 6)


def test_eos_and_max_length(tiny_model):
    model, tok = tiny_model
    batch = RolloutEngine(model, tok).rollout(problems(), [8] * 4, [1.0] * 5, seed=0)
    assert batch.response_ids.shape[1] <= 5
    for row, length in zip(batch.response_ids, batch.lengths.long()):
        eos = (row[:length] == tok.eos_token_id).nonzero()
        assert len(eos) == 0 or eos[0].item() == length - 1  # nothing generated after EOS
        assert (row[length:] == tok.pad_token_id).all()


def test_per_position_temperature_and_behaviour_logprobs(tiny_model):
    model, tok = tiny_model
    engine = RolloutEngine(model, tok)
    temps = [2.0, 0.5, 1.0, 0.25, 1.0, 1.0]
    batch = engine.rollout(problems(), [4] * 4, temps, seed=5)
    logits = engine.response_logits(batch).detach()
    for t, temp in enumerate(temps[: batch.response_ids.shape[1]]):
        tempered = torch.log_softmax(logits[:, t] / temp, -1).gather(-1, batch.response_ids[:, t, None]).squeeze(-1)
        plain = torch.log_softmax(logits[:, t], -1).gather(-1, batch.response_ids[:, t, None]).squeeze(-1)
        m = batch.mask[:, t].bool()
        assert torch.allclose(batch.behaviour_logp[m, t], tempered[m], atol=1e-5)
        assert torch.allclose(batch.old_logp[m, t], plain[m], atol=1e-5)


def test_top_p_keeps_only_the_nucleus(tiny_model):
    model, tok = tiny_model
    engine = RolloutEngine(model, tok)
    batch = engine.rollout(problems(), [16] * 4, [1.0] * 4, top_p=0.3, seed=0)
    logits = engine.response_logits(batch).detach()
    probs = torch.softmax(logits[:, 0], -1)
    for r in range(batch.size):
        p = probs[r]
        sampled = p[batch.response_ids[r, 0]]
        mass_above = p[p > sampled].sum()
        assert mass_above < 0.3 + 1e-6  # the token is inside the smallest set reaching 0.3
