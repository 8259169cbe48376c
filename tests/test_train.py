"""The training loop: resume is exact, variable rollout counts reach the loss correctly,
and a step changes the weights."""
import json

import torch

from explorl.explore.base import Budget
from explorl.registry import register
from explorl.train.loop import Trainer
from explorl.train.update import optimise
from run_records import metrics_without_time


@register("budget", "test_uneven", paper="test only: 1, 2, 3, ... rollouts")
class Uneven(Budget):
    def allocate(self, problems, total):
        return [1 + i % 3 for i in range(len(problems))], {}


def test_resume_is_identical_to_an_unbroken_run(tmp_path, tiny_config):
    cfg = tiny_config(train={"steps": 4, "checkpoint_every": 2})
    Trainer(cfg, tmp_path / "full", progress=False, log=lambda *_: None).run()
    first = Trainer(cfg, tmp_path / "split", progress=False, log=lambda *_: None)
    first.run(steps=2)
    resumed = Trainer(cfg, tmp_path / "split", resume=True, progress=False, log=lambda *_: None)
    assert resumed.step == 2
    resumed.run()
    a = Trainer(cfg, tmp_path / "full", resume=True, progress=False, log=lambda *_: None)
    for (name, p), q in zip(a.model.named_parameters(), resumed.model.parameters()):
        assert torch.equal(p, q), name
    assert metrics_without_time(tmp_path / "full") == metrics_without_time(tmp_path / "split")
    assert a.tokens == resumed.tokens
    full_eval = json.loads((tmp_path / "full" / "eval.json").read_text())
    split_eval = json.loads((tmp_path / "split" / "eval.json").read_text())
    assert full_eval["end"] == split_eval["end"]


def test_refuses_to_overwrite_a_run_without_resume(tmp_path, tiny_config):
    cfg = tiny_config(train={"steps": 1, "checkpoint_every": 1})
    Trainer(cfg, tmp_path / "r", progress=False, log=lambda *_: None).run()
    import pytest
    with pytest.raises(FileExistsError, match="--resume"):
        Trainer(cfg, tmp_path / "r", progress=False, log=lambda *_: None)


def test_variable_rollout_counts_flow_to_the_loss(tmp_path, tiny_config):
    """The shared-prompt update equals a per-response loss computed one sequence at a time."""
    cfg = tiny_config(budget="test_uneven", train={"ppo_epochs": 1, "minibatches": 1, "problems_per_step": 6,
                                                   "loss_agg_mode": "seq-mean-token-mean"})
    trainer = Trainer(cfg, tmp_path / "v", progress=False, log=lambda *_: None)
    problems, _ = trainer.plugins.curriculum.next(6)
    counts, _ = trainer.plugins.budget.allocate(problems, 0)
    batch = trainer._sample(problems, counts, 1, {})
    batch.rewards = torch.arange(batch.size, dtype=torch.float) % 2  # mixed rewards in every group of 2+
    adv, _ = trainer._advantages(batch)
    batch.advantages = adv
    assert torch.bincount(batch.group).tolist() == counts == [1, 2, 3, 1, 2, 3]
    assert adv[batch.group == 0].abs().sum() == 0 and adv[batch.group == 3].abs().sum() == 0  # singletons
    model = trainer.model
    start = {k: v.clone() for k, v in model.state_dict().items()}

    # reference: each response run alone through the HF forward on prompt+response
    model.zero_grad()
    losses = []
    for r in range(batch.size):
        g = batch.group[r]
        prompt = batch.prompt_ids[g][batch.prompt_mask[g].bool()]
        length = int(batch.mask[r].sum())
        ids = torch.cat([prompt, batch.response_ids[r, :length]])[None]
        logits = model(input_ids=ids).logits[0, len(prompt) - 1: len(prompt) - 1 + length]
        logp = torch.log_softmax(logits, -1).gather(-1, batch.response_ids[r, :length, None]).squeeze(-1)
        ratio = torch.exp(logp - logp.detach())
        losses.append((-adv[r] * ratio).mean())
    torch.stack(losses).mean().backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters()}

    captured = {}
    real_step = trainer.optimizer.step
    trainer.optimizer.step = lambda: captured.update({n: p.grad.clone() for n, p in model.named_parameters()})
    optimise(batch, trainer.engine, trainer.plugins, trainer.optimizer, cfg, 1, trainer.needs)
    trainer.optimizer.step = real_step
    for name, grad in expected.items():
        assert torch.allclose(captured[name], grad, atol=1e-5), name
    assert all(torch.equal(v, start[k]) for k, v in model.state_dict().items())


def test_a_step_changes_the_weights_and_logs_every_key(tmp_path, tiny_config):
    # the entropy bonus guarantees a gradient even when no rollout of the tiny model is correct
    cfg = tiny_config(train={"steps": 2, "checkpoint_every": 1},
                      objective=["ppo_clip", {"name": "entropy", "coef": 0.01}])
    trainer = Trainer(cfg, tmp_path / "s", progress=False, log=lambda *_: None)
    before = [p.clone() for p in trainer.model.parameters()]
    trainer.run()
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))
    row = json.loads((tmp_path / "s" / "metrics.jsonl").read_text().splitlines()[-1])
    for key in ("reward/mean", "reward/pass_rate", "entropy/rollout", "loss/clip_frac_low", "loss/clip_frac_high",
                "adv/frac_zero_std", "tokens/total", "time/gen", "time/verify", "time/update"):
        assert key in row, key
    ev = json.loads((tmp_path / "s" / "eval.json").read_text())
    assert set(ev) == {"start", "end"} and "all" in ev["end"]["pass@1"] and "pass@4" in ev["end"]
    assert (tmp_path / "s" / "config.yaml").exists() and list((tmp_path / "s" / "tb").iterdir())


def test_model_path_loads_any_saved_causal_lm(tmp_path, tiny_config, tiny_model):
    """model.path takes the hub-loading code path (from_pretrained) on a local folder."""
    model, tokenizer = tiny_model
    model.save_pretrained(tmp_path / "saved")
    tokenizer.save_pretrained(tmp_path / "saved")
    cfg = tiny_config(model={"path": str(tmp_path / "saved")}, train={"steps": 1, "checkpoint_every": 1})
    trainer = Trainer(cfg, tmp_path / "run", progress=False, log=lambda *_: None)
    assert trainer.model.config.num_hidden_layers == model.config.num_hidden_layers
    for p, q in zip(trainer.model.parameters(), model.parameters()):
        assert torch.equal(p, q)
    trainer.run()
    import pytest
    cfg = tiny_config(model={"path": str(tmp_path)})  # a folder without config.json
    with pytest.raises(FileNotFoundError, match="config.json"):
        Trainer(cfg, tmp_path / "run2", progress=False, log=lambda *_: None)


def test_recompute_old_logp_takes_pi_old_from_the_training_forward(tiny_config, tmp_path, monkeypatch):
    """``train.recompute_old_logp``: π_old is the training model's (what a separate sampler such as
    an inference engine cannot give exactly); the sampler's log-probs stay the behaviour's."""
    import explorl.train.loop as loop
    from explorl.train.update import token_logp_entropy
    seen = {}
    real = loop.optimise

    def spy(batch, engine, *args, **kwargs):
        seen["batch"], seen["engine"] = batch, engine
        return real(batch, engine, *args, **kwargs)

    monkeypatch.setattr(loop, "optimise", spy)
    trainer = loop.Trainer(tiny_config(train={"recompute_old_logp": True, "micro_batch_size": 3}), tmp_path / "run",
                           progress=False, log=lambda *_: None)
    sampled = {}
    real_sample = trainer._sample

    def keep(*args, **kwargs):
        batch = real_sample(*args, **kwargs)
        sampled["old"], sampled["behaviour"] = batch.old_logp.clone(), batch.behaviour_logp.clone()
        # a sampler whose π_old is off (as an inference engine's would be): the trainer must not use it
        batch.old_logp = batch.old_logp - 0.5 * batch.mask
        return batch

    trainer._sample = keep
    start = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    batch = trainer.train_step() and seen["batch"]
    trainer.model.load_state_dict(start)  # π_old is the policy before the update
    with torch.no_grad():
        logits = trainer.train_engine.response_logits(batch)
        expected = token_logp_entropy(logits, batch.response_ids, False)[0] * batch.mask
    torch.testing.assert_close(batch.old_logp, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(batch.old_logp, sampled["old"], rtol=1e-4, atol=1e-4)  # not the shifted one
    assert torch.equal(batch.behaviour_logp, sampled["behaviour"])
    trainer.close()
