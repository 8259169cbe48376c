"""SPEAR (arXiv:2509.22601): self-imitation replay of the policy's own positive-advantage answers,
recalibrated against a p50 baseline, with its own Clip-Cov and a cosine ramp."""
import io
import math
import random

import numpy as np
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
from loss_records import kind_mask, record_batches, record_row_loss
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


def test_clip_cov_on_replayed_tokens_is_anchored_at_the_recorded_pi_old():
    """Row 0 on-policy (A = 10); rows 1 and 2 replayed with A = 4 and −2, recorded π_old set so that
    their ratios π_θ/π_old are [1.5, 1.1, 0.9] and [0.7, 1.2, 1.1]; π_old recomputed now (old_logp =
    −5) is not the anchor. Clip 0.2/0.28, Clip-Cov r = 1, band (1, 6), step 100 of a 200-step ramp."""
    logp = torch.tensor([[-0.2, -2.5, -0.1], [-0.1, -2.0, -0.5], [-0.3, -1.0, -3.0]], requires_grad=True)
    ratios = torch.tensor([[1.0, 1.0, 1.0], [1.5, 1.1, 0.9], [0.7, 1.2, 1.1]])
    recorded = logp.detach() - ratios.log()
    kind = torch.tensor([ON_POLICY, REPLAYED, REPLAYED])
    adv = torch.tensor([10.0, 4.0, -2.0])[:, None].expand(3, 3)
    old = logp.detach().clone()
    old[1:] = -5.0
    ctx = LossContext(logp=logp, old_logp=old, behaviour_logp=recorded, advantages=adv, mask=torch.ones(3, 3),
                      step=100, kind=kind, extras={"generator": torch.Generator().manual_seed(0)})
    method = SPEAR(clip_cov_ratio_replay=1.0, clip_cov_lb_replay=1.0, clip_cov_ub_replay=6.0, max_replay_loss_steps=200)
    (part,), m = combine_terms([PPOClip()], ctx, [method])
    loss = part.loss
    # over the replayed tokens: mean A = 1, mean log π = −1.15, so Cov = 3(log π + 1.15) on row 1 and
    # −3(log π + 1.15) on row 2: [[3.15, −2.55, 1.95], [−2.55, 0.45, 5.55]]; in the band (1, 6): (1,0),
    # (1,2), (2,2). (1,0) has ratio 1.5 > 1.28 with A > 0: PPO already clips it, so it is not cut;
    # (2,0) has ratio 0.7 < 0.8 with A < 0: clipped, loss −A·0.8. ⌊1·6⌋ ≥ 2: both candidates are cut.
    # c(100) = (1 − cos(π/2))/2 = 0.5
    c = 0.5
    expected = torch.tensor([[-10.0, -10.0, -10.0],
                             [-c * 4 * 1.28, -c * 4 * 1.1, 0.0],
                             [c * 2 * 0.8, c * 2 * 1.2, 0.0]])
    assert torch.allclose(loss, expected, atol=1e-5)
    assert m["loss/spear_coef"] == pytest.approx(c)
    assert m["loss/spear_clip_cov_frac"] == pytest.approx(2 / 6)
    assert m["loss/spear_ratio_mean"] == pytest.approx((1.5 + 1.1 + 0.9 + 0.7 + 1.2 + 1.1) / 6, rel=1e-5)
    loss.sum().backward()
    # gradient −c·A·ratio where the token is neither clipped nor cut; the on-policy row's is −A
    grad = torch.tensor([[-10.0, -10.0, -10.0], [0.0, -c * 4 * 1.1, 0.0], [0.0, c * 2 * 1.2, 0.0]])
    assert torch.allclose(logp.grad, grad, atol=1e-5)


def test_the_recipe_runs_and_replays_on_the_tiny_config(tmp_path, tiny_config):
    cfg = tiny_config(recipe="spear", tasks={"addition": {"digits": [1, 1]}, "countdown": {"numbers": [2, 3]}},
                      train={"steps": 2})
    Trainer(cfg, tmp_path / "run", progress=False, log=lambda *_: None).run()
    assert len(run_metrics(tmp_path / "run")) == 2
    cfg = tiny_config(recipe="spear", tasks=PARITY, train={"steps": 3}, model={"warmup": {"steps": 150, "batch_size": 16}},
                      guidance=[{"name": "spear", "trajectory_buffer_size": 2}])
    trainer = Trainer(cfg, tmp_path / "parity", progress=False, log=lambda *_: None)
    method = trainer.plugins.guidance[0]
    calls, batches = record_row_loss(method), record_batches(method)
    trainer.run()
    rows = run_metrics(tmp_path / "parity")
    assert rows[0]["guide/spear_stored"] > 3 and "rows/replayed" not in rows[0]   # nothing stored before step 1
    assert rows[1]["rows/replayed"] == 2 and rows[1]["rollouts"] == 16 + 2        # 2^1 <= capacity 2, extra rows
    ramp = lambda step: (1 - math.cos(math.pi * step / 200)) / 2                  # c(s), coef 1, S = 200
    assert all(call["metrics"]["loss/spear_coef"] == pytest.approx(ramp(call["step"]), rel=1e-12) for call in calls)
    assert rows[1]["loss/spear_coef"] == pytest.approx(ramp(2), abs=5e-7)          # metrics.jsonl keeps 6 decimals
    # recomputed from the run: the baseline is the median of step 1's group means; each replayed row is an
    # answer of step 1 with Â' = r − baseline and its π_old recorded then
    first, second = batches[0], batches[1]
    own = first.row_kind == ON_POLICY
    means = [float(first.rewards[(first.group == g) & own].mean()) for g in range(len(first.problems))]
    baseline = float(np.percentile(means, 50))
    assert rows[1]["guide/spear_baseline_mean"] == pytest.approx(baseline, abs=5e-7)
    replayed = (second.row_kind == REPLAYED).nonzero().squeeze(-1).tolist()
    assert len(replayed) == 2
    for r in replayed:
        n = int(second.mask[r].sum())
        assert float(second.advantages[r]) == pytest.approx(float(second.rewards[r]) - baseline, abs=1e-6)
        assert float(second.advantages[r]) > 0
        pid = second.problems[int(second.group[r])].id
        source = [q for q in own.nonzero().squeeze(-1).tolist() if first.problems[int(first.group[q])].id == pid
                  and int(first.mask[q].sum()) == n and torch.equal(first.response_ids[q, :n], second.response_ids[r, :n])]
        assert source and torch.equal(second.behaviour_logp[r, :n], first.old_logp[source[0], :n])
    # the loss on replayed tokens: c(s)·PPO(0.2/0.28) with ratio π_θ/π_old(recorded), zero on the Clip-Cov cut
    # (max(⌊0.02·N⌋, 1) tokens, or all candidates if fewer: unclipped, 1 < Cov < 40 over the replayed tokens)
    assert 2 in {call["step"] for call in calls}
    fractions, ratio_means = {}, {}
    for call in calls:
        replay = kind_mask(call, REPLAYED) > 0
        adv, logp = call["advantages"], call["logp"]
        ratio = (logp - call["behaviour_logp"]).exp()
        ppo = torch.maximum(-adv * ratio, -adv * ratio.clamp(0.8, 1.28))
        clipped = (ppo != -adv * ratio) & replay
        cut = replay & (call["loss"] == 0) & (ppo != 0)
        c = ramp(call["step"])
        assert torch.allclose(call["loss"][replay & ~cut], c * ppo[replay & ~cut], rtol=1e-5, atol=1e-9)
        n = int(replay.sum())
        cov = (adv - adv[replay].mean()) * (logp - logp[replay].mean())
        candidates = replay & ~clipped & (cov > 1.0) & (cov < 40.0)
        assert not (cut & ~candidates).any() and int(cut.sum()) == min(int(candidates.sum()), max(int(0.02 * n), 1))
        fractions.setdefault(call["step"], []).append(int(cut.sum()) / n)
        ratio_means.setdefault(call["step"], []).append(float(ratio[replay].mean()))
    for step, values in fractions.items():
        assert rows[step - 1]["loss/spear_clip_cov_frac"] == pytest.approx(sum(values) / len(values), abs=5e-7)
        assert rows[step - 1]["loss/spear_ratio_mean"] == pytest.approx(sum(ratio_means[step]) / len(values), abs=1e-6)


def test_spear_stacks_with_a_knapsack_budget_and_clip_cov(tmp_path, tiny_config):
    cfg = tiny_config(recipe="spear", tasks=PARITY, model={"warmup": {"steps": 150, "batch_size": 16}},
                      budget={"name": "knapsack", "min_n": 2, "max_n": 8},
                      objective=[{"name": "clip_cov", "clip_cov_ratio": 0.02}, {"name": "entropy", "coef": 0.001}],
                      guidance=[{"name": "spear", "trajectory_buffer_size": 2}], train={"steps": 2})
    Trainer(cfg, tmp_path / "run", progress=False, log=lambda *_: None).run()
    rows = run_metrics(tmp_path / "run")
    assert len(rows) == 2 and rows[-1]["rows/replayed"] > 0
