"""What a guidance method (and every component's phase before training) is handed: the
``GuideContext`` built from the trainer's engine, verifier, teachers and loss.

Teacher and reference rows it scores (``OFF_POLICY``, ``DEMO``) are not the policy's samples:
their tokens count in ``tokens/teacher`` and the trainer's ``teacher_tokens``, never in the
generated-token budget. Verification is timed as the ``verify`` stage.
"""
from __future__ import annotations

import random

import torch

from explorl.batch import DEMO, OFF_POLICY
from explorl.explore.base import GuideContext
from explorl.train.update import UpdateLoss, optimise


def guide_context(trainer, step: int, m: dict, clock, sample) -> GuideContext:
    """The context of step ``step``: ``sample`` draws the policy's rollouts (counted in the
    step's budget), ``score`` scores given responses, ``verify`` rewards texts; metrics go to ``m``."""
    cfg = trainer.cfg

    def score(problems, counts, texts=None, token_ids=None, behaviour_logp=None, kind=OFF_POLICY):
        batch = trainer.engine.score_responses(problems, counts, texts=texts, token_ids=token_ids,
                                               behaviour_logp=behaviour_logp, kind=kind)
        with clock("verify"):
            batch.rewards = torch.tensor(trainer.verify_texts([problems[g] for g in batch.group.tolist()],
                                                              batch.texts), dtype=torch.float32)
        if kind in (OFF_POLICY, DEMO):
            trainer.teacher_tokens += batch.tokens
            m["tokens/teacher"] = m.get("tokens/teacher", 0) + batch.tokens
        return batch

    def verify(problems, texts):
        with clock("verify"):
            return trainer.verify_texts(problems, texts)

    return GuideContext(step=step, sample=sample, score=score, teachers=trainer.plugins.teachers or {},
                        engine=trainer.engine, verify=verify,
                        rng=random.Random((cfg.seed * 1_000_003 + step) * 7 + 1),
                        extras={"teacher_context": TeacherContext(cfg.train.max_new_tokens, m)},
                        loss=UpdateLoss(trainer.plugins.objectives, cfg.train.loss_agg_mode,
                                        cfg.train.max_new_tokens, trainer.needs, trainer.ref_engine))


def before_training_context(trainer, m: dict, clock, sample) -> GuideContext:
    """The context of the phases before the first step (step 0): that of a step, and also
    ``draw`` (problems from the curriculum), the task mix, the step's problem count, and
    ``update`` (one optimizer step on a batch, as a step's update does it, without a reference)."""
    ctx = guide_context(trainer, 0, m, clock, sample)
    ctx.draw = lambda n: trainer.plugins.curriculum.next(n)[0]
    ctx.tasks = trainer.tasks
    ctx.problems_per_step = trainer.cfg.train.problems_per_step
    ctx.run_length = {"steps": trainer.cfg.train.steps, "max_tokens": trainer.cfg.train.max_tokens}

    def update(batch):
        out = optimise(batch, trainer.train_engine, trainer.plugins, trainer.optimizer, trainer.cfg, 0, trainer.needs,
                       None, guard=trainer.nonfinite, dp=trainer.dp)
        if trainer.sharded:
            trainer.sharded.sync(trainer.model)
        trainer.engine.weights_updated()
        return out

    ctx.update = update
    return ctx


class TeacherContext:
    """What a teacher may use while it answers: the response length, and a counter for the
    tokens a model teacher generates (``tokens/teacher_generated``: not the policy's)."""

    def __init__(self, max_new_tokens: int, metrics: dict):
        self.max_new_tokens, self._metrics = max_new_tokens, metrics

    def count_generated(self, tokens: int) -> None:
        self._metrics["tokens/teacher_generated"] = self._metrics.get("tokens/teacher_generated", 0) + tokens
