"""What a guidance method saw and gave during a training run, so that a test can recompute its
loss, its metrics and the batch's advantages by hand from the same inputs."""
from __future__ import annotations

from collections import defaultdict

import torch


def record_row_loss(method) -> list[dict]:
    """Wrap ``method.row_loss``: each call appends the loss context's tensors (detached), the
    per-token loss it returned and its metrics."""
    calls, row_loss = [], method.row_loss

    def spy(ctx):
        loss, metrics = row_loss(ctx)
        calls.append({"step": ctx.step, "logp": ctx.logp.detach().clone(), "old_logp": ctx.old_logp.clone(),
                      "behaviour_logp": ctx.behaviour_logp.clone(), "advantages": ctx.advantages.clone(),
                      "mask": ctx.mask.clone(), "kind": ctx.kind.clone(), "loss": loss.detach().clone(),
                      "metrics": dict(metrics)})
        return loss, metrics
    method.row_loss = spy
    return calls


def record_batches(method) -> list:
    """Wrap ``method.observe``: the whole batch each step trained on (``stats.extras["batch"]``)."""
    batches, observe = [], method.observe

    def spy(stats):
        batches.append(stats.extras["batch"])
        return observe(stats)
    method.observe = spy
    return batches


def kind_mask(call: dict, kind: int) -> torch.Tensor:
    """The response tokens of the rows of ``kind`` in a recorded call."""
    return call["mask"] * (call["kind"] == kind)[:, None].to(call["mask"].dtype)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> float:
    return float((x * mask).sum() / mask.sum())


def per_step_mean(calls: list[dict], value) -> dict[int, float]:
    """The mean of ``value(call)`` over each step's calls: what the trainer logs for a loss metric
    (the mean over the minibatches that had the method's rows)."""
    sums, counts = defaultdict(float), defaultdict(int)
    for call in calls:
        sums[call["step"]] += value(call)
        counts[call["step"]] += 1
    return {s: sums[s] / counts[s] for s in sums}


def mean_centred(batch) -> torch.Tensor:
    """r − mean of the row's group (every row in a group counted): GRPO without the std."""
    grid, mask = batch.to_groups(batch.rewards.float())
    mean = (grid * mask).sum(1) / mask.sum(1)
    return batch.rewards.float() - mean[batch.group]
