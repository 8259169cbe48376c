"""ExGRPO (arXiv:2510.02245): a buffer of the policy's own correct answers, bucketed by success
count, replayed with the recorded behaviour log-probs."""
import io
import math
import random
from types import SimpleNamespace

import pytest
import torch

from explorl.batch import ON_POLICY, REPLAYED
from explorl.explore.base import GuideContext, LossContext, StepStats
from explorl.explore.guidance.exgrpo import ExGRPO, bucket_weight, pick_per_group, sample_buckets, trajectory_metric
from explorl.policy.engine import RolloutEngine
from explorl.tasks import TaskMix
from explorl.train.checkpoint import decode_state, encode_state
from explorl.train.loop import Trainer
from loss_records import kind_mask, masked_mean, mean_centred, per_step_mean, record_batches, record_row_loss
from run_records import run_metrics

PARITY = {"parity": {"kind": "user_sources:Parity", "length": [2, 3]}}


def _stats(batch, step=1):
    own = batch.row_kind == ON_POLICY
    rewards = [[float(batch.rewards[r]) for r in (batch.group == g).nonzero().squeeze(-1).tolist() if own[r]]
               for g in range(len(batch.problems))]
    return StepStats(step=step, problems=batch.problems, rewards=rewards, advantages=[[0.0] * len(r) for r in rewards],
                     entropy=0.0, tokens=batch.tokens, extras={"batch": batch})


def _engine_batch(tiny_model, rewards, counts=(4, 4)):
    model, tokenizer = tiny_model
    engine = RolloutEngine(model, tokenizer)
    source = TaskMix.from_config({"addition": {"digits": [1, 1]}}).sources["addition"]
    problems = [source.problem(i) for i in range(len(counts))]
    batch = engine.rollout(problems, list(counts), [1.0] * 4, seed=0)
    batch.rewards = torch.tensor(rewards, dtype=torch.float32)
    return engine, batch


def _ctx(engine, step=2):
    def score(problems, counts, texts=None, token_ids=None, behaviour_logp=None, kind=None):
        rows = engine.score_responses(problems, counts, texts=texts, token_ids=token_ids,
                                      behaviour_logp=behaviour_logp, kind=kind)
        rows.rewards = torch.ones(rows.size)
        return rows

    def sample(problems, counts, temperatures=None):
        rows = engine.rollout(problems, counts, [1.0] * 4, seed=7)
        rows.rewards = torch.zeros(rows.size)
        return rows

    return GuideContext(step=step, sample=sample, score=score, teachers={}, engine=engine, verify=None,
                        rng=random.Random(step))


def test_bucket_weights_are_the_normal_density_around_half_the_group():
    density = lambda x: math.exp(-x * x / 2) / math.sqrt(2 * math.pi)
    assert math.isclose(bucket_weight(4, 8), 1 / math.sqrt(2 * math.pi))          # k = G/2: the peak, 0.39894
    assert math.isclose(bucket_weight(3, 8), 0.24197072451914337)                 # one from the centre
    assert math.isclose(bucket_weight(7, 8), density(3)) and bucket_weight(7, 8) < 0.0045
    assert math.isclose(bucket_weight(1, 4), bucket_weight(3, 4))                 # symmetric around G/2 = 2
    assert math.isclose(bucket_weight(2, 8, "linear"), 0.25) and bucket_weight(6, 8, "linear_clip") == 0.5
    # the multinomial draw: bucket 2 of {1, 2, 3} (G = 4) is drawn with probability 0.3989 / (0.3989 + 2 * 0.2420)
    buckets = {k: [f"{k}-{i}" for i in range(1000)] for k in (1, 2, 3)}
    rng = random.Random(0)
    drawn = [sample_buckets(buckets, 1, 4, rng)[0].split("-")[0] for _ in range(20000)]
    share = drawn.count("2") / len(drawn)
    assert abs(share - 0.39894 / (0.39894 + 2 * 0.24197)) < 0.015
    # a bucket drawn more often than it holds gives its excess to the others; no item twice
    small = {2: ["a"], 0: [], 7: ["x", "y", "z"]}
    out = sample_buckets(small, 3, 4, random.Random(1))
    assert sorted(out) == ["a", "x", "y"] or sorted(out) == ["a", "x", "z"] or sorted(out) == ["a", "y", "z"]
    assert len(set(out)) == 3 and sample_buckets(small, 10, 4, random.Random(1)).__len__() == 4


def test_the_lowest_entropy_correct_trajectory_is_replayed(tiny_model):
    values = torch.tensor([0.9, 0.2, 0.5, 1.0, 0.7])
    group = torch.tensor([0, 0, 0, 1, 1])
    assert pick_per_group(values, group) == [1, 4] and pick_per_group(values, group, "argmax") == [0, 3]
    rows = SimpleNamespace(entropy=torch.tensor([[1.0, 3.0, 9.0], [2.0, 2.0, 0.0]]),
                           mask=torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]]), old_logp=torch.zeros(2, 3))
    assert torch.allclose(trajectory_metric(rows, "ent"), torch.tensor([2.0, 2.0]))  # padding left out
    # through guide: a problem with three stored answers replays the one the current policy is surest of
    engine, batch = _engine_batch(tiny_model, [1, 0, 0, 0, 1, 1, 0, 0])
    method = ExGRPO(collect_before_start=True, experience_start_sratio=0.0)
    method.observe(_stats(batch))
    assert method.mixing
    p = batch.problems[0]
    stored = [engine.tokenizer(text, add_special_tokens=False).input_ids + [engine.eos] for text in ("7", "77", "1")]
    method.buffer = {p.id: {"problem": p, "k": 2, "ids": [torch.tensor(s) for s in stored],
                            "logp": [torch.full((len(s),), -1.0) for s in stored]}}
    scored = engine.score_responses([p], [3], token_ids=stored, kind=REPLAYED)
    want = int(trajectory_metric(scored, "ent").argmin())
    other = TaskMix.from_config({"addition": {"digits": [1, 1]}}).sources["addition"].problem(99)
    fresh = engine.rollout([other], [4], [1.0] * 4, seed=3)
    fresh.rewards = torch.zeros(4)
    out, m = method.guide(fresh, _ctx(engine))
    assert m["guide/exgrpo_experience_problems"] == 1.0
    assert out.counts == [4, 4] and out.problems[1].id == p.id   # G - 1 = 3 fresh rollouts + the replayed one
    replayed = (out.row_kind == REPLAYED).nonzero().squeeze(-1)
    assert len(replayed) == 1 and int(out.group[replayed]) == 1
    n = len(stored[want])
    assert out.response_ids[replayed[0], :n].tolist() == stored[want]
    assert torch.allclose(out.behaviour_logp[replayed[0], :n], torch.full((n,), -1.0))  # the recorded log-probs


def test_no_replay_and_no_collection_below_the_start_ratio(tiny_model):
    engine, batch = _engine_batch(tiny_model, [1, 0, 0, 0, 0, 0, 0, 0])   # solve rate 1/8 < 0.35
    method = ExGRPO()
    m = method.observe(_stats(batch))
    assert not method.mixing and method.buffer == {} and m["guide/exgrpo_mixing"] == 0.0
    out, found = method.guide(batch, _ctx(engine))
    assert out is batch and found == {}
    batch.rewards = torch.tensor([1.0, 1, 0, 0, 1, 0, 0, 0])              # exactly 3/8 = 0.375 > 0.35: switch on
    method.observe(_stats(batch))
    assert method.mixing and method.buffer == {}                          # the code collects only after the switch
    batch.rewards = torch.tensor([1.0, 1, 1, 1, 1, 0, 0, 0])
    method.observe(_stats(batch, step=3))
    assert batch.problems[0].id in method.retired                         # all 4 correct: retired, never stored
    entry = method.buffer[batch.problems[1].id]
    assert entry["k"] == 1 and len(entry["ids"]) == 1                     # bucket k = latest success count


def test_the_replayed_rows_loss_uses_the_recorded_behaviour_log_prob():
    logp = torch.log(torch.tensor([[0.5, 0.2]])).requires_grad_(True)
    recorded = torch.log(torch.tensor([[0.25, 0.4]]))
    ctx = LossContext(logp=logp, old_logp=torch.log(torch.tensor([[0.9, 0.9]])), behaviour_logp=recorded,
                      advantages=torch.full((1, 2), 2.0), mask=torch.ones(1, 2), kind=torch.tensor([REPLAYED]))
    loss, _ = ExGRPO().row_loss(ctx)
    # r = pi / mu_b = [2, 0.5]; f(r) = r / (r + 0.1) = [0.952381, 0.833333]; loss = -A f(r)
    assert torch.allclose(loss, torch.tensor([[-2 * 2 / 2.1, -2 * 0.5 / 0.6]]), atol=1e-6)
    loss.sum().backward()
    # d loss / d log pi = -A * gamma * r / (r + gamma)^2
    assert torch.allclose(logp.grad, torch.tensor([[-2 * 0.1 * 2 / 2.1 ** 2, -2 * 0.1 * 0.5 / 0.6 ** 2]]), atol=1e-6)
    # pi_old recomputed now does not enter; with exp_is_correct false it replaces the record
    loss_old, _ = ExGRPO(exp_is_correct=False).row_loss(ctx)
    assert torch.allclose(loss_old, -2 * (torch.tensor([[0.5, 0.2]]) / 0.9) / (torch.tensor([[0.5, 0.2]]) / 0.9 + 0.1))


def test_the_buffer_survives_a_checkpoint(tiny_model):
    _, batch = _engine_batch(tiny_model, [1, 1, 0, 0, 1, 1, 1, 1])
    method = ExGRPO(collect_before_start=True)
    method.observe(_stats(batch))
    assert method.mixing and len(method.buffer) == 1 and len(method.retired) == 1
    buf = io.BytesIO()
    torch.save(encode_state(method.state_dict()), buf)
    buf.seek(0)
    state = decode_state(torch.load(buf, weights_only=True))
    restored = ExGRPO()
    restored.load_state_dict(state)
    assert restored.mixing and restored.retired == method.retired
    (pid, entry), = method.buffer.items()
    again = restored.buffer[pid]
    assert again["problem"] == entry["problem"] and again["k"] == entry["k"] == 2
    assert len(again["ids"]) == len(entry["ids"]) >= 1
    assert all(torch.equal(a, b) for a, b in zip(again["ids"], entry["ids"]))
    assert all(torch.equal(a, b) for a, b in zip(again["logp"], entry["logp"]))


def test_the_recipe_runs_and_replays_on_the_tiny_config(tmp_path, tiny_config):
    cfg = tiny_config(recipe="exgrpo", tasks={"addition": {"digits": [1, 1]}, "countdown": {"numbers": [2, 3]}},
                      train={"steps": 2})
    Trainer(cfg, tmp_path / "run", progress=False, log=lambda *_: None).run()
    assert len(run_metrics(tmp_path / "run")) == 2
    # on a source the tiny model solves about half the time, the buffer fills and replay happens
    cfg = tiny_config(recipe="exgrpo", tasks=PARITY, train={"steps": 3},
                      model={"warmup": {"steps": 150, "batch_size": 16}})
    trainer = Trainer(cfg, tmp_path / "parity", progress=False, log=lambda *_: None)
    method = trainer.plugins.guidance[0]
    calls, batches = record_row_loss(method), record_batches(method)
    trainer.run()
    rows = run_metrics(tmp_path / "parity")
    assert rows[0]["guide/exgrpo_mixing"] == 1.0                       # solve rate above 0.35 at step 1
    assert rows[1]["guide/exgrpo_buffer_trajectories"] > 0             # filled at step 2
    last = rows[2]
    assert last["rows/replayed"] > 0 and last["guide/exgrpo_experience_problems"] == last["rows/replayed"]
    assert last["guide/exgrpo_replayed_reward"] == 1.0
    assert last["rollouts"] == 16 + 4 * last["rows/replayed"]           # extra groups: G - 1 fresh + 1 replayed each
    # recomputed from what the method saw: the mixed group's mean-centred advantage; each replayed row
    # carries, as μ_b, the behaviour log-probs recorded when that answer was sampled at an earlier step;
    # its tokens' loss is −Â·f(π_θ/μ_b), f(x) = x/(x + 0.1); the logged mean weight is f's
    for batch in batches:
        assert torch.allclose(batch.advantages, mean_centred(batch), atol=1e-6)
    earlier = [(b.problems[int(b.group[r])].id, b.response_ids[r][b.mask[r] > 0], b.behaviour_logp[r][b.mask[r] > 0])
               for b in batches[:2] for r in (b.row_kind == ON_POLICY).nonzero().squeeze(-1).tolist()]
    final = batches[2]
    replayed = (final.row_kind == REPLAYED).nonzero().squeeze(-1).tolist()
    assert len(replayed) == last["rows/replayed"]
    for r in replayed:
        pid, ids = final.problems[int(final.group[r])].id, final.response_ids[r][final.mask[r] > 0]
        records = [lp for p, i, lp in earlier if p == pid and torch.equal(i, ids)]
        assert records and any(torch.equal(final.behaviour_logp[r][final.mask[r] > 0], lp) for lp in records)
    f = lambda c: (c["logp"] - c["behaviour_logp"]).exp() / ((c["logp"] - c["behaviour_logp"]).exp() + 0.1)  # noqa: E731
    assert calls and {c["step"] for c in calls} == {3}
    for c in calls:
        replay = kind_mask(c, REPLAYED)
        assert torch.allclose(c["loss"] * replay, -c["advantages"] * f(c) * replay, atol=1e-6)
    weights = per_step_mean(calls, lambda c: masked_mean(f(c), kind_mask(c, REPLAYED)))
    assert last["loss/exgrpo_weight_mean"] == pytest.approx(weights[3], abs=1e-6)


def test_exgrpo_stacks_with_a_knapsack_budget_and_clip_cov(tmp_path, tiny_config):
    cfg = tiny_config(recipe="exgrpo", tasks=PARITY, model={"warmup": {"steps": 150, "batch_size": 16}},
                      budget={"name": "knapsack", "min_n": 2, "max_n": 8},
                      objective=[{"name": "clip_cov", "clip_cov_ratio": 0.02, "clip_cov_ub": 40.0}],
                      guidance=[{"name": "exgrpo", "collect_before_start": True}], train={"steps": 2})
    Trainer(cfg, tmp_path / "run", progress=False, log=lambda *_: None).run()
    rows = run_metrics(tmp_path / "run")
    assert len(rows) == 2 and rows[-1]["rows/replayed"] > 0
