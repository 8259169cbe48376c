"""Shared by the tests of the guidance methods that put teacher rows in groups (luffy, rl_plus,
ampo): a guide context over a real engine and verifier, and batches with chosen rewards."""
import random

import torch

from explorl.batch import OFF_POLICY
from explorl.explore.base import GuideContext, LossContext
from explorl.policy.engine import RolloutEngine
from explorl.tasks import TaskMix


class Fixed:
    """A teacher that always offers the same solutions."""

    def __init__(self, *texts):
        self.texts = list(texts)

    def solutions(self, problem, n, ctx=None):
        return self.texts[:n]


def setup(tiny_model, tasks=None):
    model, tokenizer = tiny_model
    mix = TaskMix.from_config(tasks or {"addition": {"digits": [1, 1]}, "countdown": {"numbers": [3, 4]}})
    return RolloutEngine(model, tokenizer), mix


def guide_context(engine, mix, teachers, seed=0, score_hook=None):
    """A ``GuideContext`` like the trainer's: ``score`` runs the policy and the verifier (and
    ``score_hook(batch)`` may change the scored rows); ``scored`` counts the rows scored."""
    for teacher in teachers.values():
        if hasattr(teacher, "bind"):
            teacher.bind(mix, engine, lambda ps, ts: [mix.verify(p, t) for p, t in zip(ps, ts)])
    scored = []

    def score(problems, counts, texts=None, token_ids=None, behaviour_logp=None, kind=OFF_POLICY):
        batch = engine.score_responses(problems, counts, texts=texts, token_ids=token_ids,
                                       behaviour_logp=behaviour_logp, kind=kind)
        batch.rewards = torch.tensor([mix.verify(problems[g], t) for g, t in zip(batch.group.tolist(), batch.texts)],
                                     dtype=torch.float32)
        if score_hook is not None:
            score_hook(batch)
        scored.append(batch.size)
        return batch

    ctx = GuideContext(step=1, sample=None, score=score, teachers=teachers, engine=engine,
                       verify=lambda ps, ts: [mix.verify(p, t) for p, t in zip(ps, ts)], rng=random.Random(seed))
    ctx.scored = scored
    return ctx


def rollouts(engine, problems, rewards_per_group, seed=0):
    """On-policy rollouts, ``len(rewards_per_group[g])`` for problem g, with those rewards."""
    batch = engine.rollout(problems, [len(r) for r in rewards_per_group], [1.0] * 4, seed=seed)
    batch.rewards = torch.tensor([x for r in rewards_per_group for x in r], dtype=torch.float32)
    return batch


def loss_context(probs, adv, kind=OFF_POLICY, old_probs=None, behaviour_probs=None, **extras):
    """A one-row loss context whose tokens have the probabilities ``probs`` under π_θ (``logp``
    is a leaf with gradient)."""
    logp = torch.tensor([probs], dtype=torch.float64).log().requires_grad_(True)
    old = torch.tensor([old_probs or probs], dtype=torch.float64).log()
    behaviour = torch.tensor([behaviour_probs], dtype=torch.float64).log() if behaviour_probs else torch.zeros_like(old)
    return LossContext(logp=logp, old_logp=old, behaviour_logp=behaviour,
                       advantages=torch.full_like(old, float(adv)), mask=torch.ones_like(old),
                       kind=torch.tensor([kind]), extras=dict(extras))
