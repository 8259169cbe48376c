"""SPEAR (arXiv:2509.22601): self-imitation replay of the policy's own positive-advantage answers,
recalibrated against a p50 baseline, with its own Clip-Cov and a cosine ramp."""
import io
import math
import random

import pytest
import torch

from explorl.batch import ON_POLICY, REPLAYED
from explorl.explore.base import GuideContext, LossContext, StepStats
from explorl.explore.guidance.spear import SPEAR, p50_baseline, recalibrate, replay_coefficient
from explorl.explore.objective.ppo_clip import PPOClip
from explorl.policy.engine import RolloutEngine
from explorl.tasks import TaskMix
from explorl.train.checkpoint import decode_state, encode_state
from explorl.train.loop import Trainer
from explorl.train.update import combine_terms
from run_records import run_metrics

PARITY = {"parity": {"kind": "user_sources:Parity", "length": [2, 3]}}


def _engine(tiny_model):
    model, tokenizer = tiny_model
    return RolloutEngine(model, tokenizer)


def _batch(engine, rewards, seed=0):
    source = TaskMix.from_config({"addition": {"digits": [1, 1]}}).sources["addition"]
    problems = [source.problem(seed * 10 + i) for i in range(2)]
    batch = engine.rollout(problems, [4, 4], [1.0] * 4, seed=seed)
    batch.rewards = torch.tensor(rewards, dtype=torch.float32)
    grid, _ = batch.to_groups(batch.rewards)
    batch.advantages = batch.rewards - batch.from_groups(grid.sum(1, keepdim=True).expand_as(grid) / 4)
    return batch


def _stats(batch, step):
    rewards = [[float(batch.rewards[r]) for r in (batch.group == g).nonzero().squeeze(-1).tolist()]
               for g in range(len(batch.problems))]
    return StepStats(step=step, problems=batch.problems, rewards=rewards, advantages=rewards, entropy=0.0,
                     tokens=batch.tokens, extras={"batch": batch})


def _ctx(engine, step):
    def score(problems, counts, texts=None, token_ids=None, behaviour_logp=None, kind=None):
        rows = engine.score_responses(problems, counts, texts=texts, token_ids=token_ids,
                                      behaviour_logp=behaviour_logp, kind=kind)
        rows.rewards = torch.ones(rows.size)
        return rows
    return GuideContext(step=step, sample=None, score=score, teachers={}, engine=engine, verify=None,
                        rng=random.Random(step))


def test_recalibration_keeps_what_beats_the_p50_baseline(tiny_model):
    means = [[1, [0.0, 0.25]], [2, [0.5, 0.75]]]
    stds = [[1, [0.0, 0.5]], [2, [0.5, 0.5]]]
    assert p50_baseline(means, stds) == (0.375, 0.5)   # numpy's median of [0, .25, .5, .75] and of [0, .5, .5, .5]
    rewards = torch.tensor([1.0, 0.5, 0.25])
    assert torch.allclose(recalibrate(rewards, 0.375, 0.5, False), torch.tensor([0.625, 0.125, -0.125]))
    assert torch.allclose(recalibrate(rewards, 0.375, 0.5, True), torch.tensor([0.625, 0.125, -0.125]) / 0.500001)
    # through the buffer: three stored answers, two beat the baseline and are replayed with r - p50 as advantage
    engine = _engine(tiny_model)
    batch = _batch(engine, [1, 0, 0, 0, 1, 1, 0, 0])
    method = SPEAR(trajectory_buffer_size=2, fill_factor=0.5)
    method.mean_history, method.std_history = means, stds
    p = batch.problems
    method.buffer = [{"problem": p[i], "ids": batch.response_ids[r, :int(batch.mask[r].sum())].clone(),
                      "logp": torch.full((int(batch.mask[r].sum()),), -0.7), "reward": rew, "advantage": 0.5,
                      "step": 2} for i, r, rew in [(0, 0, 1.0), (1, 4, 0.5), (1, 5, 0.25)]]
    assert method.ready()                               # 2 rows beat 0.375: more than 0.5 x capacity 2
    method.guide(batch, _ctx(engine, 3))
    out, m = method.augment(batch, None)
    replayed = (out.row_kind == REPLAYED).nonzero().squeeze(-1)
    assert m["guide/spear_replayed"] == 2 and len(replayed) == 2 and method.buffer == []
    assert sorted(out.advantages[replayed].tolist()) == pytest.approx([0.125, 0.625])
    assert torch.equal(out.advantages[:8], batch.advantages)      # the on-policy rows keep theirs
    assert len(out.problems) == 4 and out.counts[2:] == [1, 1]     # their own groups, after the batch's
    n = int(out.mask[replayed[0]].sum())
    assert torch.allclose(out.behaviour_logp[replayed[0], :n], torch.full((n,), -0.7))   # recorded pi_old


def test_the_replay_coefficient_follows_the_cosine_ramp():
    assert replay_coefficient(0, 1.0, 200) == 0.0
    assert replay_coefficient(50, 1.0, 200) == pytest.approx((1 - math.cos(math.pi / 4)) / 2)   # 0.1464466
    assert replay_coefficient(100, 2.0, 200) == pytest.approx(1.0)
    assert replay_coefficient(200, 1.0, 200) == pytest.approx(1.0)
    assert replay_coefficient(201, 0.5, 200) == 0.5 and replay_coefficient(10_000, 1.0, 200) == 1.0


def test_entries_are_evicted_after_the_tolerance(tiny_model):
    engine = _engine(tiny_model)
    method = SPEAR(trajectory_tolerate_steps=5)
    assert SPEAR(trajectory_tolerate_steps=20).tolerate == 10   # the code caps it
    for step in range(1, 8):
        m = method.observe(_stats(_batch(engine, [1, 0, 0, 0, 0, 1, 0, 0], seed=step), step))
        assert m["guide/spear_stored"] == 2                # one positive-advantage answer per group
    assert sorted({e["step"] for e in method.buffer}) == [1, 2, 3, 4, 5, 6, 7]   # 6 - 1 <= 5 when step 7 came in
    method.observe(_stats(_batch(engine, [1, 0, 0, 0, 0, 1, 0, 0], seed=8), 8))
    assert min(e["step"] for e in method.buffer) == 2     # 7 - 1 > 5: step 1 is gone
    # the tolerance counts from the newest entry: steps that store nothing do not age the buffer
    for step in range(9, 20):
        method.observe(_stats(_batch(engine, [0.0] * 8, seed=step), step))
    assert min(e["step"] for e in method.buffer) == 3 and max(e["step"] for e in method.buffer) == 8
    assert sum(len(v) for _, v in method.mean_history) == 2 * 19   # the baseline history grows every step
    buf = io.BytesIO()                                             # and all of it survives a checkpoint
    torch.save(encode_state(method.state_dict()), buf)
    buf.seek(0)
    restored = SPEAR()
    restored.load_state_dict(decode_state(torch.load(buf, weights_only=True)))
    assert restored.mean_history == method.mean_history and len(restored.buffer) == len(method.buffer)
    assert all(torch.equal(a["ids"], b["ids"]) and a["problem"] == b["problem"] and a["step"] == b["step"]
               for a, b in zip(restored.buffer, method.buffer))


def test_clip_cov_cuts_replayed_tokens_only():
    # row 0 on-policy; rows 1 and 2 replayed with A = 4 and 0 (the covariance is over replayed tokens only)
    logp = torch.tensor([[-0.2, -2.5, -0.1], [-0.1, -2.0, -0.5], [-0.3, -1.0, -3.0]], requires_grad=True)
    kind = torch.tensor([ON_POLICY, REPLAYED, REPLAYED])
    adv = torch.tensor([10.0, 4.0, 0.0])[:, None].expand(3, 3)
    old = logp.detach().clone()
    old[1:] = -5.0                                        # pi_old now: not the anchor of replayed rows
    ctx = LossContext(logp=logp, old_logp=old, behaviour_logp=logp.detach().clone(), advantages=adv,
                      mask=torch.ones(3, 3), step=300, kind=kind, extras={"generator": torch.Generator().manual_seed(0)})
    method = SPEAR(clip_cov_ratio_replay=1.0, clip_cov_lb_replay=1.0, clip_cov_ub_replay=5.0, max_replay_loss_steps=200)
    (part,), m = combine_terms([PPOClip()], ctx, [method])
    loss = part.loss
    # replayed: mean A = 2, mean log pi = -1.15; Cov = [[2.1, -1.7, 1.3], [-1.7, -0.3, 3.7]]: band (1, 5) = 3 tokens
    cut = torch.tensor([[True, False, True], [False, False, True]])
    assert torch.equal(loss[1:] == 0, cut | (adv[1:] == 0))
    assert torch.allclose(loss[1], torch.tensor([0.0, -4.0, 0.0]))   # ratio 1 against the recorded anchor, c = 1
    assert torch.allclose(loss[0], -adv[0])                            # the on-policy row: plain PPO, nothing cut
    assert m["loss/spear_clip_cov_frac"] == pytest.approx(3 / 6) and m["loss/spear_coef"] == 1.0


def test_the_recipe_runs_and_replays_on_the_tiny_config(tmp_path, tiny_config):
    cfg = tiny_config(recipe="spear", tasks={"addition": {"digits": [1, 1]}, "countdown": {"numbers": [2, 3]}},
                      train={"steps": 2})
    Trainer(cfg, tmp_path / "run", progress=False, log=lambda *_: None).run()
    assert len(run_metrics(tmp_path / "run")) == 2
    cfg = tiny_config(recipe="spear", tasks=PARITY, train={"steps": 3}, model={"warmup": {"steps": 150, "batch_size": 16}},
                      guidance=[{"name": "spear", "trajectory_buffer_size": 2}])
    Trainer(cfg, tmp_path / "parity", progress=False, log=lambda *_: None).run()
    rows = run_metrics(tmp_path / "parity")
    assert rows[0]["guide/spear_stored"] > 3 and "rows/replayed" not in rows[0]   # nothing stored before step 1
    assert rows[1]["rows/replayed"] == 2 and rows[1]["rollouts"] == 16 + 2        # 2^1 <= capacity 2, extra rows
    assert 0 < rows[1]["loss/spear_coef"] < 1e-3                                  # early on the ramp: c(2) ~ 2.5e-4


def test_spear_stacks_with_a_knapsack_budget_and_clip_cov(tmp_path, tiny_config):
    cfg = tiny_config(recipe="spear", tasks=PARITY, model={"warmup": {"steps": 150, "batch_size": 16}},
                      budget={"name": "knapsack", "min_n": 2, "max_n": 8},
                      objective=[{"name": "clip_cov", "clip_cov_ratio": 0.02}, {"name": "entropy", "coef": 0.001}],
                      guidance=[{"name": "spear", "trajectory_buffer_size": 2}], train={"steps": 2})
    Trainer(cfg, tmp_path / "run", progress=False, log=lambda *_: None).run()
    rows = run_metrics(tmp_path / "run")
    assert len(rows) == 2 and rows[-1]["rows/replayed"] > 0
