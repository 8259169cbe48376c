"""REX-RAG (arXiv:2508.08149): wrong rollouts cloned, cut, probed and continued; kept by probe
log-prob; the PPO anchor becomes the mixture behaviour policy."""
import math
import random
from collections import Counter

import pytest
import torch

from explorl.batch import ON_POLICY, PREFIX, RolloutBatch
from explorl.explore.base import GuideContext, LossContext
from explorl.explore.guidance.rex_rag import RexRAG, ewma_keep_ratio, mixture_logp, probe_trie, rank_clones
from explorl.explore.objective.ppo_clip import PPOClip
from explorl.policy.engine import RolloutEngine
from explorl.tasks import TaskMix
from explorl.train.loop import Trainer
from run_records import run_metrics

SOURCE = TaskMix.from_config({"addition": {"digits": [1, 1]}}).sources["addition"]


def _setup(tiny_model, rewards):
    model, tokenizer = tiny_model
    engine = RolloutEngine(model, tokenizer)
    problems = [SOURCE.problem(i) for i in range(2)]
    batch = engine.rollout(problems, [4, 4], [1.0] * 4, seed=0)
    batch.rewards = torch.tensor(rewards, dtype=torch.float32)

    def sample(probs, counts, temperatures=None):
        rows = engine.rollout(probs, counts, [1.0] * 4, seed=5)
        rows.rewards = torch.tensor([SOURCE.verify(probs[g], probs[g].completed(t))
                                     for g, t in zip(rows.group.tolist(), rows.texts)])
        return rows

    def score(probs, counts, texts=None, token_ids=None, behaviour_logp=None, kind=None):
        rows = engine.score_responses(probs, counts, texts=texts, token_ids=token_ids, behaviour_logp=behaviour_logp,
                                      kind=kind)
        rows.rewards = torch.zeros(rows.size)
        return rows

    ctx = GuideContext(step=1, sample=sample, score=score, teachers={}, engine=engine, verify=None, rng=random.Random(0))
    return engine, batch, ctx


def _content(ids, engine):
    ids = [int(i) for i in ids]
    return tuple(ids[:-1]) if ids and ids[-1] in engine.stop_ids.tolist() else tuple(ids)


def test_only_wrong_rollouts_are_cloned(tiny_model):
    engine, batch, ctx = _setup(tiny_model, [1, 0, 1, 0, 0, 1, 1, 1])   # wrong: rows 1, 3 (group 0) and 4 (group 1)
    method = RexRAG(probes=[""], clone_prob=1.0, keep_ratio=1.0, truncate_min=1.0, truncate_max=1.0)
    out, m = method.guide(batch, ctx)
    assert m["guide/rex_candidates"] == 3 and m["guide/rex_kept"] == 3
    assert out.counts == [6, 5] and out.kind_counts()["prefix"] == 3
    clones = (out.row_kind == PREFIX).nonzero().squeeze(-1).tolist()
    wrong = Counter(_content(batch.response_ids[r, :int(batch.mask[r].sum())], engine) for r in (1, 3, 4))
    # kept whole (truncate at 1.0), no probe: each clone starts with the full content of a wrong answer
    starts = Counter()
    for r in clones:
        ids = out.response_ids[r, :int(out.mask[r].sum())].tolist()
        starts.update([max((w for w in wrong if tuple(ids[:len(w)]) == w), key=len)])
    assert starts == wrong
    assert out.group[clones].tolist() == [0, 0, 1]                        # in their originals' groups
    # continuation-only training: the copied prefix and the probe carry no gradient
    _, batch, ctx = _setup(tiny_model, [1, 0, 1, 1, 1, 1, 1, 1])
    method = RexRAG(probes=[" wait, "], clone_prob=1.0, keep_ratio=1.0, truncate_min=1.0, truncate_max=1.0,
                    train_on="continuation")
    out, _ = method.guide(batch, ctx)
    (r,) = (out.row_kind == PREFIX).nonzero().squeeze(-1).tolist()
    cut = len(_content(batch.response_ids[1, :int(batch.mask[1].sum())], engine)) + len(" wait, ")
    assert out.loss_mask[r, :cut].sum() == 0 and torch.equal(out.loss_mask[r, cut:], out.mask[r, cut:])
    orig = out.row_kind == ON_POLICY
    assert torch.equal(out.loss_mask[orig], out.mask[orig])              # originals train on every token


def test_the_keep_ratio_is_an_ewma_of_the_kept_clones_success(tiny_model):
    assert ewma_keep_ratio(0.08, 0.5, 0.1) == pytest.approx(0.122)        # 0.9 * 0.08 + 0.1 * 0.5
    assert ewma_keep_ratio(0.122, 0.0, 0.1) == pytest.approx(0.1098)
    # in a run: 8 originals, keep floor(8 * 0.25) = 2 clones; they fail (the tiny model) -> 0.9 * 0.25
    _, batch, ctx = _setup(tiny_model, [0.0] * 8)
    method = RexRAG(probes=[""], clone_prob=1.0, keep_ratio=0.25)
    _, m = method.guide(batch, ctx)
    assert m["guide/rex_kept"] == 2 and m["guide/rex_keep_ratio"] == 0.25
    assert method.keep_ratio == pytest.approx(ewma_keep_ratio(0.25, m["guide/rex_clone_success"], 0.1))
    method.keep_ratio = 0.1                                               # floor(8 * 0.1) = 0: nothing sampled
    _, m = method.guide(batch, ctx)
    assert m["guide/rex_kept"] == 0 and method.keep_ratio == pytest.approx(0.09)
    floored = RexRAG(probes=[""], keep_ratio=0.1, min_keep_ratio=0.095)
    floored.guide(batch, ctx)
    assert floored.keep_ratio == pytest.approx(0.095)


def test_clones_are_ranked_by_their_probe_log_prob(tiny_model):
    assert rank_clones([-1.0, -0.2, -3.0, -0.5], 2, random.Random(0)) == [1, 3]
    assert rank_clones([-1.0, -0.2, -3.0, -0.5], 10, random.Random(0)) == [0, 1, 2, 3]
    ties = {tuple(rank_clones([0.0] * 4, 1, random.Random(s))) for s in range(20)}
    assert len(ties) > 1                                                  # ties in a random order
    # trie of the probe tokens: first token 1, then the share of probes going on that way
    assert probe_trie([[1, 2, 3], [1, 2, 4], [1, 5], []]) == [[1.0, 2 / 3, 0.5], [1.0, 2 / 3, 0.5], [1.0, 1 / 3], []]
    _, batch, ctx = _setup(tiny_model, [0.0] * 8)
    method = RexRAG(probes=[" wait, ", "zq?!", " ok "], clone_prob=1.0, keep_ratio=0.25)
    _, m = method.guide(batch, ctx)
    assert m["guide/rex_candidates"] == 8 and m["guide/rex_kept"] == 2
    assert m["guide/rex_probe_logp_kept"] > m["guide/rex_probe_logp_all"]
    with pytest.raises(ValueError, match="does not survive the policy's tokenizer"):
        RexRAG(probes=["Wait, let me check."]).guide(batch, ctx)          # upper case: not in the testbed alphabet


def test_the_mixture_behaviour_probability_and_the_corrected_ratio():
    pi = torch.tensor([0.5, 0.2, 0.4, 0.8, 0.6])
    # m = 2 prefix tokens, a 2-token probe (mu 1, 0.5), one continuation token; alpha 0.25, err 0.64
    got = mixture_logp(pi.log(), 2, [1.0, 0.5], 0.25, 0.64).exp()
    # prefix: 0.75 pi + 0.25 pi / 0.64^(1/2); probe: 0.75 pi + 0.25 mu; continuation: pi
    assert torch.allclose(got, torch.tensor([0.53125, 0.2125, 0.55, 0.725, 0.6]), atol=1e-6)
    # through augment: 2 originals and 1 kept clone -> alpha = 1/3
    old = torch.log(torch.tensor([[0.5, 0.5], [0.4, 0.9], [0.5, 0.8]]))
    mask = torch.ones(3, 2)
    batch = RolloutBatch(problems=[SOURCE.problem(0)], counts=[3], group=torch.zeros(3, dtype=torch.long),
                         prompt_ids=torch.zeros(1, 2, dtype=torch.long), prompt_mask=torch.ones(1, 2),
                         response_ids=torch.tensor([[3, 4], [5, 6], [7, 8]]), mask=mask, behaviour_logp=old.clone(),
                         old_logp=old.clone(), entropy=torch.zeros(3, 2), texts=["", "", ""],
                         rewards=torch.zeros(3), advantages=torch.tensor([1.0, -1.0, 1.0]),
                         kind=torch.tensor([ON_POLICY, ON_POLICY, PREFIX]))
    method = RexRAG(probes=[""])
    method._pending = {(SOURCE.problem(0).id, (7, 8)): [(1, [1.0])]}     # 1 prefix token, then a 1-token probe
    method._error_rate = 0.5
    out, m = method.augment(batch, None)
    assert m["guide/rex_alpha"] == pytest.approx(1 / 3)
    assert torch.equal(out.old_logp, old)                 # the batch keeps pi_old: the mixture is built in the loss
    minibatch = LossContext(logp=old.clone(), old_logp=old.clone(), behaviour_logp=old.clone(),
                            advantages=out.advantages[:, None].expand(3, 2), mask=mask, rows=torch.arange(3),
                            kind=out.kind)
    mu = method.ratio_anchor(minibatch).exp()
    assert torch.allclose(mu[:2], torch.tensor([[0.5, 0.5], [0.4, 0.9]]) * 2 / 3)      # mu_probe = 0 on originals
    assert torch.allclose(mu[2], torch.tensor([2 / 3 * 0.5 + 1 / 3 * 0.5 / 0.5, 2 / 3 * 0.8 + 1 / 3 * 1.0]))
    # the corrected ratio pi_theta / mu_b under the clipped PPO loss, with pi_theta = pi_old
    ctx = LossContext(logp=old.clone().requires_grad_(True), old_logp=method.ratio_anchor(minibatch),
                      behaviour_logp=out.behaviour_logp, advantages=out.advantages[:, None].expand(3, 2), mask=mask)
    loss, _ = PPOClip(clip_ratio_low=0.2, clip_ratio_high=0.2, clip_ratio_c=3.0).term(ctx)
    # originals: ratio 1 / (2/3) = 1.5 -> A = 1 clipped at 1.2, A = -1 unclipped 1.5 (below the dual clip 3)
    assert torch.allclose(loss[0], torch.tensor([-1.2, -1.2])) and torch.allclose(loss[1], torch.tensor([1.5, 1.5]))
    ratio = torch.tensor([0.5, 0.8]) / mu[2]                                          # [0.75, 0.923]
    assert torch.allclose(loss[2], -torch.minimum(ratio, ratio.clamp(0.8, 1.2)))      # A = 1: -min(r, clip(r))
    # the alternative: original rollouts keep pi_theta / pi_old
    method = RexRAG(probes=[""], original_correction="none")
    method._pending = {(SOURCE.problem(0).id, (7, 8)): [(1, [1.0])]}
    method.augment(batch, None)
    anchor = method.ratio_anchor(minibatch)
    assert torch.allclose(anchor[:2], old[:2])
    assert math.isclose(float(anchor[2, 1].exp()), 2 / 3 * 0.8 + 1 / 3, rel_tol=1e-6)


@pytest.mark.parametrize("micro", [None, 2])
def test_with_recompute_old_logp_the_ratio_is_pi_theta_over_the_mixture(micro):
    """train.recompute_old_logp: the update's forward replaces pi_old after augment; the correction
    is kept, built on the recomputed pi_old as the authors' actor builds it (dp_actor.py ~L447-497
    mixes data["old_log_probs"], which verl has recomputed). 2 originals and 1 clone (1 prefix token,
    a 1-token probe with mu_probe 1), alpha = 1/3, err = 0.5. pi_theta (the table) = the recomputed
    pi_old: originals [0.5, 0.5], [0.4, 0.9]; the clone [0.5, 0.8]; the sampler's pi_old differs.
    mu_b: originals 2/3 pi -> ratio 1.5; clone prefix 2/3*0.5 + 1/3*0.5/0.5 = 2/3 -> ratio 0.75;
    probe 2/3*0.8 + 1/3*1 -> ratio 0.8/0.8667. PPO clip 0.2, dual clip 3, A = 1, -1, 1."""
    from update_helpers import TableEngine, one_update, table_batch, two_token_logits

    from explorl.train.update import recompute_old_logp
    batch = table_batch([ON_POLICY, ON_POLICY, PREFIX], [[1, 1]] * 3, [[0, 0], [0, 0], [0, 1]], [1.0, -1.0, 1.0])
    batch.old_logp = torch.log(torch.tensor([[0.6, 0.6], [0.5, 0.8], [0.3, 0.7]]))   # the sampler's
    engine = TableEngine(torch.tensor([[two_token_logits(0.5), two_token_logits(0.5)],
                                       [two_token_logits(0.4), two_token_logits(0.9)],
                                       [two_token_logits(0.5), two_token_logits(0.2)]]))
    method = RexRAG(probes=[""])
    method._pending = {(batch.problems[0].id, (0, 1)): [(1, [1.0])]}
    method._error_rate = 0.5
    method.augment(batch, None)
    batch.old_logp = recompute_old_logp(engine, batch)                       # as the trainer does, after augment
    assert torch.allclose(batch.old_logp.exp(), torch.tensor([[0.5, 0.5], [0.4, 0.9], [0.5, 0.8]]))
    loss, _ = one_update(engine, batch, [PPOClip(0.2, 0.2, clip_ratio_c=3.0)], [method], micro_batch_size=micro)
    probe = 0.8 / (2 / 3 * 0.8 + 1 / 3)
    tokens = [-1.2, -1.2, 1.5, 1.5, -0.75, -probe]
    assert loss == pytest.approx(sum(tokens) / 6, rel=1e-5)


def test_the_recipe_runs_on_the_tiny_config(tmp_path, tiny_config):
    cfg = tiny_config(recipe="rex_rag", tasks={"addition": {"digits": [1, 1]}, "countdown": {"numbers": [2, 3]}},
                      train={"steps": 2})
    Trainer(cfg, tmp_path / "run", progress=False, log=lambda *_: None).run()
    rows = run_metrics(tmp_path / "run")
    assert len(rows) == 2
    for r in rows:                      # min(floor(16 * keep_ratio), candidates) clones kept: 1 per step here
        assert r["guide/rex_kept"] == r["rows/prefix"] == min(int(16 * r["guide/rex_keep_ratio"] + 1e-9),
                                                              r["guide/rex_candidates"]) == 1
        assert r["guide/rex_alpha"] == pytest.approx(r["rows/prefix"] / r["rollouts"], abs=1e-6)   # 1/17
    assert rows[0]["guide/rex_keep_ratio"] == 0.08
    assert rows[1]["guide/rex_keep_ratio"] == pytest.approx(0.9 * 0.08 + 0.1 * rows[0]["guide/rex_clone_success"],
                                                            abs=1e-6)


def test_rex_rag_stacks_with_a_knapsack_budget_and_clip_cov(tmp_path, tiny_config):
    cfg = tiny_config(recipe="rex_rag", tasks={"addition": {"digits": [1, 1]}, "countdown": {"numbers": [2, 3]}},
                      budget={"name": "knapsack", "min_n": 2, "max_n": 8},
                      objective=[{"name": "clip_cov", "clip_cov_ratio": 0.02}],
                      guidance=[{"name": "rex_rag", "probes": [""], "clone_prob": 1.0, "keep_ratio": 0.25}],
                      train={"steps": 2})
    Trainer(cfg, tmp_path / "run", progress=False, log=lambda *_: None).run()
    rows = run_metrics(tmp_path / "run")
    assert len(rows) == 2 and all(r["rows/prefix"] > 0 for r in rows)
