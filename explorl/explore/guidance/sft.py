"""``sft``: a supervised term on teacher demonstrations, beside or before RL.

Each step, for each problem of the batch, up to ``per_problem`` teacher solutions are added as
demonstration rows (``DEMO``: outside every group, so they change no advantage), and the loss is
L = L_RL + coef(s) · L_SFT, L_SFT the NLL −log π_θ(e_t) of their tokens aggregated over the
demonstration rows alone (``separate_term``; their own token mean under ``token-mean``), as
LUFFY's SFT+RL baseline writes it (``luffy/verl/verl/mix_src/mix_actor.py`` ~L112–142,
``use_sft_multitask_loss``: ``sft_loss * sft_loss_coef + pg_loss``, the SFT loss a masked mean
over the demonstration tokens): the imitation weight is coef whatever the number of rollouts per
demonstration. ``schedule`` shapes the coefficient over steps s: ``constant``, ``linear``
(coef → 0 at ``decay_steps``) or ``cosine`` (coef·(1+cos(πs/S))/2).

``phase: joint`` gives the SFT+RL baseline (both losses every step). ``phase: before`` gives
SFT-then-RL: before the first RL step, ``teacher_tokens`` tokens of teacher solutions (on
problems drawn by the curriculum) are trained on in steps of ``problems_per_step`` problems,
then RL runs with no demonstrations. Teacher tokens never count toward the policy's budget;
they are logged as ``tokens/teacher``.
"""
from __future__ import annotations

import math

import torch

from explorl.batch import DEMO
from explorl.explore.acted import Acted
from explorl.explore.base import Guidance
from explorl.explore.guidance.demos import add_teacher_rows, teacher_solutions
from explorl.registry import register


def demonstrations(batch, ctx, teacher_names, per_problem: int):
    """The batch with up to ``per_problem`` teacher solutions per problem added as DEMO rows, and
    how many were added."""
    batch, rows = add_teacher_rows(batch, ctx, teacher_names, per_problem, kind=DEMO)
    return batch, 0 if rows is None else rows.size


def nll(ctx) -> torch.Tensor:
    """Per-token −log π_θ of the tokens given."""
    return -ctx.logp


@register("guidance", "sft", paper="supervised term on teacher demonstrations (SFT+RL / SFT-then-RL baselines)")
class SFT(Guidance):
    handles = frozenset({DEMO})
    separate_term = True

    def __init__(self, teachers: list | None = None, per_problem: int = 1, coef: float = 0.1,
                 schedule: str = "constant", decay_steps: int = 100, phase: str = "joint",
                 teacher_tokens: int | None = None):
        if schedule not in ("constant", "linear", "cosine"):
            raise ValueError(f"guidance sft: schedule must be constant, linear or cosine, got {schedule!r}")
        if phase not in ("joint", "before"):
            raise ValueError(f"guidance sft: phase must be joint or before, got {phase!r}")
        if phase == "before" and not teacher_tokens:
            raise ValueError("guidance sft: phase before needs teacher_tokens (how many teacher tokens to train on)")
        if per_problem < 1 or coef < 0 or decay_steps < 1:
            raise ValueError("guidance sft: need per_problem >= 1, coef >= 0, decay_steps >= 1")
        self.teacher_names, self.per_problem, self.coef = teachers, per_problem, coef
        self.schedule, self.decay_steps, self.phase, self.teacher_tokens = schedule, decay_steps, phase, teacher_tokens

    def engagement(self):
        """SFT+RL acts through its demonstration rows; SFT-then-RL through its phase before RL."""
        if self.phase == "before":
            return (Acted("guide/sft_steps", ">", 0, reduce="sum", what="the SFT phase ran"),)
        return (Acted("guide/demo_rows", ">", 0, what="demo rows > 0"),)

    def coefficient(self, step: int) -> float:
        s = min(step, self.decay_steps) / self.decay_steps
        if self.schedule == "linear":
            return self.coef * (1 - s)
        if self.schedule == "cosine":
            return self.coef * (1 + math.cos(math.pi * s)) / 2
        return self.coef

    def guide(self, batch, ctx):
        if self.phase == "before":
            return batch, {}
        batch, added = demonstrations(batch, ctx, self.teacher_names, self.per_problem)
        return batch, {"guide/demo_rows": float(added), "guide/sft_coef": self.coefficient(ctx.step)}

    def row_loss(self, ctx):
        coef = self.coef if self.phase == "before" else self.coefficient(ctx.step)
        return coef * nll(ctx), {}

    def before_training(self, ctx) -> dict:
        """SFT-then-RL: train on ``teacher_tokens`` teacher tokens before the first RL step."""
        if self.phase != "before":
            return {}
        used, steps = 0, 0
        while used < self.teacher_tokens:
            problems = ctx.draw(ctx.problems_per_step)
            found = [(p, teacher_solutions(ctx, p, self.teacher_names, self.per_problem)) for p in problems]
            found = [(p, [t for _, t in sols]) for p, sols in found if sols]
            if not found:
                steps += 1
                if steps > 1000:
                    raise ValueError("guidance sft: the teachers gave no solution for 1000 batches of problems")
                continue
            demo = ctx.score([p for p, _ in found], [len(t) for _, t in found], texts=[t for _, ts in found for t in ts],
                             kind=DEMO)
            demo.advantages = torch.zeros(demo.size)
            ctx.update(demo)
            used += demo.tokens
            steps += 1
        return {"guide/sft_steps": float(steps), "guide/sft_teacher_tokens": float(used)}
