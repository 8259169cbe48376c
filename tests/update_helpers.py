"""One real update (``explorl.train.update.optimise``) on a hand-made batch whose token
probabilities are set by hand: the policy is a table of logits, one per response token, so the
loss and its gradient can be written from a formula."""
import math
from types import SimpleNamespace

import torch
from conftest import make_tiny_config

from explorl.batch import RolloutBatch
from explorl.tasks.problem import Problem
from explorl.train.update import optimise


class TableEngine:
    """``response_logits`` of row r: row r of a parameter table ``(R, L, V)``."""

    def __init__(self, logits: torch.Tensor):
        self.model = torch.nn.Module()
        self.model.table = torch.nn.Parameter(logits.clone().float())
        self.device = torch.device("cpu")

    def response_logits(self, batch, rows=None):
        return self.model.table if rows is None else self.model.table[rows]


def two_token_logits(p0: float) -> list[float]:
    """Logits of a two-token vocabulary with P(token 0) = p0."""
    return [math.log(p0), math.log(1 - p0)]


def table_batch(kinds, masks, ids, advantages, rewards=None, groups=None) -> RolloutBatch:
    """One problem per distinct ``groups`` value (default: every row in problem 0)."""
    n = len(kinds)
    groups = groups or [0] * n
    problems = [Problem(id=f"p{g}", prompt="1+1=", answer="2", source="addition") for g in sorted(set(groups))]
    counts = [groups.count(g) for g in range(len(problems))]
    mask = torch.tensor(masks, dtype=torch.float32)
    return RolloutBatch(problems=problems, counts=counts, group=torch.tensor(groups),
                        prompt_ids=torch.ones(len(problems), 2, dtype=torch.long),
                        prompt_mask=torch.ones(len(problems), 2), response_ids=torch.tensor(ids),
                        mask=mask, behaviour_logp=torch.zeros_like(mask), old_logp=torch.zeros_like(mask),
                        entropy=torch.zeros_like(mask), texts=["x"] * n,
                        rewards=torch.tensor(rewards if rewards is not None else [0.0] * n),
                        advantages=torch.tensor(advantages), kind=torch.tensor(kinds))


def policy_logp(engine, batch) -> torch.Tensor:
    """log π of every response token under the table (masked)."""
    with torch.no_grad():
        logp = torch.log_softmax(engine.model.table, -1).gather(-1, batch.response_ids[..., None]).squeeze(-1)
    return logp * batch.mask


def one_update(engine, batch, objectives, guidance=(), **train):
    """The loss of one minibatch (one epoch) as the update computes it, and the gradient it steps
    with on the logits table."""
    cfg = make_tiny_config(train={"ppo_epochs": 1, "minibatches": 1, "max_grad_norm": 1e9, **train})
    plugins = SimpleNamespace(objectives=list(objectives), guidance=list(guidance))
    needs = set().union(*(getattr(c, "needs", frozenset()) for c in [*objectives, *guidance]))
    optimizer = torch.optim.SGD([engine.model.table], lr=0.0)
    captured = []
    optimizer.step = lambda: captured.append(engine.model.table.grad.clone())
    metrics = optimise(batch, engine, plugins, optimizer, cfg, 1, needs, None)
    return metrics["loss/total"], captured[0]
