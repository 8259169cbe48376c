"""Independent samples: what GRPO draws (every row decoded from the prompt on its own)."""
from __future__ import annotations

import torch

from explorl.batch import RolloutRequest
from explorl.explore.base import Rollout
from explorl.registry import register


@register("rollout", "flat", paper="baseline: independent samples per problem (GRPO, arXiv:2402.03300)")
class Flat(Rollout):
    data_parallel = True
    any_engine = True
    soft_tokens = True
    interventions = True

    def sample(self, request: RolloutRequest):
        r = request
        extra = {k: v for k, v in (("thinking", r.thinking), ("intervention", r.intervention)) if v is not None}
        batch = r.engine.rollout(r.problems, r.counts, r.temperatures, r.top_p, seed=r.seed,
                                 max_new_tokens=r.max_new_tokens, max_rows=r.max_rows, **extra)
        batch.rewards = torch.tensor(r.score([r.problems[g] for g in batch.group.tolist()], batch.texts))
        return batch, {}
