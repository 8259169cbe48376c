"""Shared by the guidance methods: teacher solutions for problems, and the token weights the
papers use on tokens the policy did not sample."""
from __future__ import annotations

import torch

from explorl.batch import OFF_POLICY


def teacher_solutions(ctx, problem, teacher_names, n: int) -> list[tuple[str, str]]:
    """Up to ``n`` distinct ``(teacher name, solution)`` pairs for ``problem``, taking the teachers in
    the order named (``None``: every teacher of the run, in the order of the ``teachers:`` section)."""
    names = list(teacher_names) if teacher_names else list(ctx.teachers)
    tctx = ctx.extras.get("teacher_context")
    out, seen = [], set()
    for name in names:
        for text in ctx.teachers[name].solutions(problem, n, tctx):
            if text not in seen:
                seen.add(text)
                out.append((name, text))
                if len(out) >= n:
                    return out
    return out


def add_teacher_rows(batch, ctx, teacher_names, n: int, kind: int = OFF_POLICY):
    """The batch with up to ``n`` teacher solutions per problem added to its group as rows of
    ``kind`` (scored by the current policy and verified), and the added rows (``None`` when no
    teacher had a solution)."""
    problems, texts, origin = [], [], []
    for g, problem in enumerate(batch.problems):
        found = teacher_solutions(ctx, problem, teacher_names, n)
        if found:
            problems.append(problem)
            origin.append(g)
            texts.append([text for _, text in found])
    if not problems:
        return batch, None
    rows = ctx.score(problems, [len(t) for t in texts], texts=[t for ts in texts for t in ts], kind=kind)
    return batch.add_rows(rows, origin), rows


def luffy_shaping(prob: torch.Tensor, gamma: float) -> torch.Tensor:
    """LUFFY's policy shaping f(π) = π / (π + γ) (arXiv:2504.14945): its gradient π·γ/(π+γ)² is
    largest for low-probability tokens, which plain imitation (∇ log π = ∇π/π · π) would leave
    small relative to the confident ones."""
    return prob / (prob + gamma)
