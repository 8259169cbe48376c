"""DAPO dynamic sampling: keep only groups whose rewards vary, refilling with new problems.

Yu et al., "DAPO: An Open-Source LLM Reinforcement Learning System at Scale",
arXiv:2503.14476 (code: ``recipe/dapo/dapo_ray_trainer.py``). A group whose rewards are all
equal (all correct or all wrong) has zero GRPO advantage and only dilutes the batch.

``mode="filter"`` (DAPO): drop zero-variance groups; while fewer than ``target`` groups
(default: the step's number of problems) survive and fewer than ``max_num_gen_batches``
generation batches were made, draw a new batch of problems from the curriculum (``draw``),
sample and filter it, and accumulate. The kept groups are truncated to ``target``, as DAPO
truncates to the train batch size.

``mode="replace"`` (SkyRL's ``dynamic_sampling.type=replace``, also POLARIS): the batch keeps
its size; zero-variance groups are replaced by copies of informative groups drawn uniformly
(with the budget's own rng). New batches are generated only while informative groups are
fewer than ``min_replace_ratio`` × target (and the generation limit allows). A duplicated
group is trained on twice and reported twice to ``observe``.

Choices: each refill batch has as many problems as the step, each with ``n`` rollouts, and
every generated token is charged (the trainer counts tokens at sampling time). DAPO raises
an error when the limit is hit with too few groups; here the step trains on what it has,
and if no group at all varied it falls back to the last generated batch (zero-advantage
under GRPO, so no policy-gradient signal) rather than stopping the run;
``budget/ds_fallback`` marks that case.
"""
from __future__ import annotations

import random

from explorl.batch import join
from explorl.explore.acted import Acted
from explorl.explore.base import Budget
from explorl.registry import register


def informative_groups(batch, eps: float = 1e-8) -> list[int]:
    """Indices of the groups whose rewards are not all equal (std > 0)."""
    rewards, mask = batch.to_groups(batch.rewards.float())
    counts = mask.sum(1).clamp_min(1)
    mean = (rewards * mask).sum(1) / counts
    var = (((rewards - mean[:, None]) ** 2) * mask).sum(1) / counts
    return (var > eps).nonzero().squeeze(-1).tolist()


@register("budget", "dynamic_sampling", paper="DAPO dynamic sampling, Yu et al., arXiv:2503.14476")
class DynamicSampling(Budget):
    engaged_when = (Acted("budget/ds_dropped", ">", 0, reduce="sum", what="groups dropped"),
                    Acted("budget/ds_gen_batches", ">", 1, reduce="max", what="and refilled"))
    state_keys = ("rng",)

    def __init__(self, n: int | None = None, max_num_gen_batches: int = 10, mode: str = "filter",
                 target: int | None = None, min_replace_ratio: float = 0.3, seed: int = 0):
        if mode not in ("filter", "replace"):
            raise ValueError(f"budget dynamic_sampling: mode must be filter or replace, got {mode!r}")
        if max_num_gen_batches < 1:
            raise ValueError(f"budget dynamic_sampling: max_num_gen_batches must be >= 1, got {max_num_gen_batches}")
        if n is not None and n < 2:
            raise ValueError(f"budget dynamic_sampling: n must be >= 2 (one rollout has no variance), got {n}")
        self.n, self.max_num_gen_batches, self.mode = n, max_num_gen_batches, mode
        self.target, self.min_replace_ratio = target, min_replace_ratio
        self.rng = random.Random(seed)

    def allocate(self, problems, total):
        n = self.n if self.n is not None else max(2, total // max(1, len(problems)))
        return [n] * len(problems), {"budget/rollouts": float(n * len(problems))}

    def collect(self, sample, problems, counts, draw=None):
        target = self.target or len(problems)
        need = target if self.mode == "filter" else max(1, int(self.min_replace_ratio * target + 0.999999))
        kept, total_groups, last = [], 0, None
        gen_batches, probs, ns = 0, list(problems), list(counts)
        while True:
            last = sample(probs, ns)
            gen_batches += 1
            total_groups += len(probs)
            good = informative_groups(last)
            if good:
                kept.append(last.select_groups(good))
            have = sum(len(b.problems) for b in kept)
            if have >= need or gen_batches >= self.max_num_gen_batches or draw is None:
                break
            probs = draw(len(problems))
            ns = self.allocate(probs, sum(counts))[0]
        metrics = {"budget/ds_gen_batches": float(gen_batches), "budget/ds_dropped": float(total_groups - have),
                   "budget/ds_informative_frac": have / max(1, total_groups), "budget/ds_fallback": 0.0}
        self.last_metrics = metrics
        if not kept:
            metrics["budget/ds_fallback"] = 1.0
            return last
        batch = join(kept)
        if self.mode == "filter":
            return batch.select_groups(list(range(min(target, len(batch.problems)))))
        order = list(range(min(target, len(batch.problems))))
        order += [self.rng.randrange(len(batch.problems)) for _ in range(target - len(order))]
        return join([batch.select_groups([g]) for g in order]) if order != list(range(len(batch.problems))) else batch

    def observe(self, stats):
        return dict(getattr(self, "last_metrics", {}))
