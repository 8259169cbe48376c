"""Tree advantages (``advantage: tree_grpo``): TreeRL's node advantages on a hand-computed tree,
every token gets its node's, a flat group is a one-node chain per row, and a shaper's change
reaches every token through the trainer."""
import math
from types import SimpleNamespace

import pytest
import torch

from explorl.batch import RolloutBatch
from explorl.explore.advantage.tree_grpo import TreeGRPO, node_advantages
from explorl.explore.base import Advantage
from explorl.tasks import Problem

# group 0, a tree: root -> A -> {A1, A2}, root -> B -> {B1, B2}; leaf rewards 1, 0, 0, 0
# group 1: three flat rows, rewards 1, 0, 0
A, B, A1, A2, B1, B2 = 1, 2, 3, 4, 5, 6
NODES = [[A, A, A1], [A, A, A2, A2], [B, B, B1], [B, B, B2], [-1, -1], [-1], [-1, -1, -1]]
REWARDS = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0]
S2 = math.sqrt(2)
# V(root) = 1/4, V(A) = 1/2, V(B) = 0, V(A1) = 1, V(A2) = V(B1) = V(B2) = 0
# A(s) = ((V(s) - V(root)) + (V(s) - V(parent))) / sqrt(leaves under s)
EXPECTED = {A: (0.25 + 0.25) / S2, B: (-0.25 - 0.25) / S2, A1: 0.75 + 0.5, A2: -0.25 - 0.5, B1: -0.25, B2: -0.25}


def hand_batch():
    R, Lc = len(NODES), 4
    node = torch.full((R, Lc), -1, dtype=torch.long)
    mask = torch.zeros(R, Lc)
    for r, ids in enumerate(NODES):
        node[r, :len(ids)] = torch.tensor(ids)
        mask[r, :len(ids)] = 1
    problems = [Problem(id=str(i), prompt="p", answer="", source="x") for i in range(2)]
    zeros = torch.zeros(R, Lc)
    return RolloutBatch(problems=problems, counts=[4, 3], group=torch.tensor([0, 0, 0, 0, 1, 1, 1]),
                        prompt_ids=torch.zeros(2, 1, dtype=torch.long), prompt_mask=torch.ones(2, 1),
                        response_ids=torch.zeros(R, Lc, dtype=torch.long), mask=mask, behaviour_logp=zeros,
                        old_logp=zeros, entropy=zeros, texts=[""] * R, rewards=torch.tensor(REWARDS), tree_node=node)


def test_node_advantages_by_hand():
    values = node_advantages(REWARDS[:4], [[A, A1], [A, A2], [B, B1], [B, B2]])
    assert values == pytest.approx(EXPECTED)


def test_every_token_gets_its_nodes_advantage():
    batch = hand_batch()
    groups = batch.groups()
    groups.extras["batch"] = batch
    adv, metrics = TreeGRPO().compute(groups, None)
    tokens = groups.extras["token_advantages"]
    for r, ids in enumerate(NODES[:4]):
        assert tokens[r, :len(ids)].tolist() == pytest.approx([EXPECTED[n] for n in ids])
    # a flat group: each row a one-node chain under the root, A = 2 (r - mean r)
    for r, reward in zip(range(4, 7), REWARDS[4:]):
        assert tokens[r, :len(NODES[r])].tolist() == pytest.approx([2 * (reward - 1 / 3)] * len(NODES[r]))
    assert (tokens * (1 - batch.mask)).abs().sum() == 0
    # the sequence-level advantage is the mean over the row's tokens
    seq = batch.from_groups(adv)
    assert seq[1] == pytest.approx((2 * EXPECTED[A] + 2 * EXPECTED[A2]) / 4)
    assert metrics["adv/tree_nodes"] == pytest.approx((6 + 3) / 2)


class PlusOne(Advantage):
    kind = "shaper"
    registered_name = "plus_one"

    def compute(self, groups, adv):
        return (adv + 1) * groups.mask, {}


def test_a_shapers_change_reaches_every_token():
    from explorl.train.loop import Trainer
    batch = hand_batch()
    fake = SimpleNamespace(plugins=SimpleNamespace(advantages=[TreeGRPO(), PlusOne()]), engine=None, ref_engine=None)
    seq, _ = Trainer._advantages(fake, batch)
    batch.advantages = seq
    per_token = batch.per_token_advantages()
    for r, ids in enumerate(NODES[:4]):
        assert per_token[r, :len(ids)].tolist() == pytest.approx([EXPECTED[n] + 1 for n in ids])
    assert (per_token * (1 - batch.mask)).abs().sum() == 0


def test_the_loss_sees_each_tokens_advantage(tiny_config, tmp_path, monkeypatch):
    import explorl.train.update as update
    from explorl.train.loop import Trainer
    trainer = Trainer(tiny_config(recipe="tree_grpo", rollout={"name": "tree", "branch": 2, "segment_tokens": 2},
                                  train={"steps": 1}), tmp_path / "run", progress=False, log=lambda *_: None)
    # a stand-in verifier that rewards some of the tiny model's responses, so advantages are not all 0
    monkeypatch.setattr(trainer.verifier, "score", lambda probs, texts: ([float(len(t) % 2) for t in texts], []))
    seen, combine = [], update.combine_terms

    def spy(objectives, ctx, guidance=()):
        seen.append((ctx.rows, ctx.advantages.detach().clone()))
        return combine(objectives, ctx, guidance)

    monkeypatch.setattr(update, "combine_terms", spy)
    batches = []
    import explorl.train.loop as loop
    monkeypatch.setattr(loop, "optimise",
                        lambda batch, *a, **k: batches.append(batch) or update.optimise(batch, *a, **k))
    metrics = trainer.train_step()
    trainer.close()
    batch = batches[0]
    assert batch.token_advantages is not None and metrics["loss/grad_norm"] > 0
    varies = ((batch.token_advantages - batch.token_advantages[:, :1]).abs() * batch.mask).sum(-1) > 1e-6
    assert varies.any()  # some response's advantage changes along it: its nodes differ
    for rows, advantages in seen:
        assert torch.allclose(advantages, batch.token_advantages[rows])
