"""A non-finite loss or gradient skips the optimizer step (counted and logged); too many in a
row stop the run, also when a resume falls inside the run of them; NaN metrics are kept, never
dropped; no checkpoint holds non-finite weights."""
import math

import pytest
import torch

from explorl.explore.base import Objective
from explorl.registry import register
from explorl.train import checkpoint
from explorl.train.loop import Trainer
from explorl.train.update import NonFiniteTraining, _accumulate
from run_records import run_metrics


@register("objective", "test_nan_at", paper="test only: a NaN loss at the given steps")
class NanAt(Objective):
    def __init__(self, steps: list = ()):
        self.steps = set(steps)

    def term(self, ctx):
        bad = float("nan") if ctx.step in self.steps else 0.0
        return torch.full_like(ctx.logp, bad), {"loss/test_nan": bad}


class _InfiniteGradient(torch.autograd.Function):
    """The identity forward; an infinite gradient backward."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return torch.full_like(grad, float("inf"))


@register("objective", "test_inf_grad_at", paper="test only: a finite loss with an infinite gradient at the given steps")
class InfiniteGradientAt(Objective):
    def __init__(self, steps: list = ()):
        self.steps = set(steps)

    def term(self, ctx):
        if ctx.step not in self.steps:
            return torch.zeros_like(ctx.logp), {}
        return 0.0 * _InfiniteGradient.apply(ctx.logp), {}  # the loss adds 0; its gradient is infinite


def test_nan_steps_are_skipped_logged_and_kept_in_metrics(tmp_path, tiny_config):
    cfg = tiny_config(objective=["ppo_clip", {"name": "entropy", "coef": 0.01}, {"name": "test_nan_at", "steps": [2]}],
                      train={"steps": 3, "checkpoint_every": 1, "max_nonfinite_steps": 5})
    logged = []
    trainer = Trainer(cfg, tmp_path / "run", progress=False, log=logged.append)
    trainer.run(steps=1)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer = Trainer(cfg, tmp_path / "run", resume=True, progress=False, log=logged.append)
    trainer.train_step()  # step 2: every minibatch has a NaN loss
    assert all(torch.equal(v, trainer.model.state_dict()[k]) for k, v in before.items()), "a NaN step changed weights"
    trainer.close()
    trainer = Trainer(cfg, tmp_path / "run", resume=True, progress=False, log=logged.append)
    trainer.run()
    rows = run_metrics(tmp_path / "run")
    assert [r["loss/nonfinite_steps"] for r in rows] == [0, 4, 0]  # 2 epochs x 2 minibatches skipped
    assert rows[1]["loss/test_nan"] != rows[1]["loss/test_nan"] and rows[1]["loss/total"] != rows[1]["loss/total"]
    assert any("skipped an optimizer step: the loss is not finite" in line for line in logged)


def test_too_many_nonfinite_steps_in_a_row_stop_the_run(tmp_path, tiny_config):
    cfg = tiny_config(objective=["ppo_clip", {"name": "test_nan_at", "steps": [2, 3]}],
                      train={"steps": 4, "checkpoint_every": 1, "max_nonfinite_steps": 6})
    with pytest.raises(NonFiniteTraining, match=r"6 optimizer steps in a row had a non-finite loss"):
        Trainer(cfg, tmp_path / "run", progress=False, log=lambda *_: None).run()
    latest = checkpoint.latest(tmp_path / "run", warn=None)
    assert latest.name == "step_000002"  # step 2 skipped every update but still checkpointed finite weights


def test_a_finite_loss_with_a_nonfinite_gradient_norm_is_skipped(tmp_path, tiny_config):
    cfg = tiny_config(objective=["ppo_clip", {"name": "test_inf_grad_at", "steps": [2]}],
                      train={"steps": 3, "checkpoint_every": 1, "max_nonfinite_steps": 5})
    logged = []
    trainer = Trainer(cfg, tmp_path / "run", progress=False, log=logged.append)
    trainer.run(steps=1)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer = Trainer(cfg, tmp_path / "run", resume=True, progress=False, log=logged.append)
    trainer.train_step()  # step 2: every minibatch has a finite loss and an infinite gradient
    assert all(torch.equal(v, trainer.model.state_dict()[k]) for k, v in before.items()), \
        "a step with an infinite gradient changed weights"
    trainer.close()
    trainer = Trainer(cfg, tmp_path / "run", resume=True, progress=False, log=logged.append)
    trainer.run()
    rows = run_metrics(tmp_path / "run")
    assert [r["loss/nonfinite_steps"] for r in rows] == [0, 4, 0]  # 2 epochs x 2 minibatches skipped
    assert math.isfinite(rows[1]["loss/total"]) and not math.isfinite(rows[1]["loss/grad_norm"])
    assert any("skipped an optimizer step: the gradient norm is not finite" in line for line in logged)
    assert not any("the loss is not finite" in line for line in logged)


def test_a_resume_inside_a_run_of_nonfinite_steps_keeps_counting(tmp_path, tiny_config):
    """Steps 2 and 3 skip 4 updates each; the limit of 6 in a row falls in step 3. Killed after
    step 2 (its checkpoint holds 4 in a row) and resumed, the run stops where the unbroken one does."""
    cfg = tiny_config(objective=["ppo_clip", {"name": "test_nan_at", "steps": [2, 3]}],
                      train={"steps": 4, "checkpoint_every": 1, "max_nonfinite_steps": 6})
    with pytest.raises(NonFiniteTraining) as unbroken:
        Trainer(cfg, tmp_path / "unbroken", progress=False, log=lambda *_: None).run()
    assert "6 optimizer steps in a row had a non-finite loss (last at step 3)" in str(unbroken.value)

    Trainer(cfg, tmp_path / "resumed", progress=False, log=lambda *_: None).run(steps=2)
    assert checkpoint.read_state(checkpoint.latest(tmp_path / "resumed", warn=None))["nonfinite_in_a_row"] == 4
    with pytest.raises(NonFiniteTraining) as resumed:
        Trainer(cfg, tmp_path / "resumed", resume=True, progress=False, log=lambda *_: None).run()
    assert str(resumed.value) == str(unbroken.value)
    assert checkpoint.latest(tmp_path / "resumed", warn=None).name == "step_000002"


def test_no_checkpoint_is_written_with_nonfinite_weights(tmp_path, tiny_config):
    trainer = Trainer(tiny_config(), tmp_path / "run", progress=False, log=lambda *_: None)
    with torch.no_grad():
        next(trainer.model.parameters())[0, 0] = float("inf")
    with pytest.raises(NonFiniteTraining, match="weights are not finite"):
        trainer.save()
    assert not (tmp_path / "run" / "ckpt").exists() or not list((tmp_path / "run" / "ckpt").iterdir())
    trainer.close()


def test_metric_accumulation_keeps_nan():
    from collections import defaultdict
    totals, counts = defaultdict(float), defaultdict(int)
    _accumulate(totals, counts, {"loss/x": 1.0})
    _accumulate(totals, counts, {"loss/x": float("nan")})
    assert counts["loss/x"] == 2 and totals["loss/x"] != totals["loss/x"]
