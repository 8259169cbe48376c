"""What every tree-shaped rollout shares: a ``TreeEngine`` (``explorl.policy.tree``) over the
request's engine, one tree per problem grown by the method's ``grow``, leaves verified as they
finish, and the finished leaves returned as an ordinary batch (``tree_node`` per token,
``generated_tokens`` counting a shared prefix once)."""
from __future__ import annotations

import torch

from explorl.batch import RolloutRequest
from explorl.explore.acted import Acted
from explorl.explore.base import Rollout
from explorl.policy.tree import Segments, TreeEngine, marker_ids

#: Node ids of one sampling call start at (seed mod 2**20) << 40, so the trees of the several
#: sampling calls of a step (refills, guidance) never share an id.
_CALL_BITS = 40


class TreeRollout(Rollout):
    """Subclasses give ``segments(tokenizer)`` and ``grow(engine, trees, counts, verify)``, which
    returns each tree's finished leaves (``counts[i]`` of them, each with its ``reward``)."""

    # a tree acted when its leaves share prefixes: fewer tokens generated than the leaves hold
    engaged_when = (Acted("rollout/shared_token_frac", ">", 0.0, reduce="mean",
                          what="leaves share prefixes (generated tokens < tokens the leaves hold)"),)

    def segments(self, tokenizer) -> Segments:
        raise NotImplementedError

    def grow(self, engine: TreeEngine, trees, counts, verify) -> list[list]:
        raise NotImplementedError

    def answer(self, leaves, rng):
        """The response a search answers with: its leaf of highest reward (the first of equals)."""
        return max(leaves, key=lambda leaf: leaf.reward)

    def search(self, request: RolloutRequest):
        """``(tree_engine, trees, leaves)``: the grown trees, not yet released."""
        r = request
        if r.thinking is not None or r.intervention is not None:
            raise ValueError(f"rollout {self.registered_name} decodes discrete tokens from the model as it is: it "
                             f"takes neither soft tokens nor an activation intervention (decoding "
                             f"{'with soft tokens' if r.thinking is not None else 'east'}); use rollout: flat")
        engine = TreeEngine(r.engine, r.temperatures, r.top_p, self.segments(r.engine.tokenizer), seed=r.seed,
                            max_new_tokens=r.max_new_tokens, max_rows=r.max_rows)
        trees = engine.roots(r.problems, id_offset=(r.seed % (1 << 20)) << _CALL_BITS)

        def verify(nodes) -> list[float]:
            """Score the responses ``nodes`` end; each node's ``reward`` is set."""
            if not nodes:
                return []
            rewards = r.score([n.tree.problem for n in nodes], engine.texts(nodes))
            for node, reward in zip(nodes, rewards):
                node.reward = float(reward)
            return [float(x) for x in rewards]

        leaves = self.grow(engine, trees, list(r.counts), verify)
        for tree, ls, want in zip(trees, leaves, r.counts):
            if len(ls) != want or any(leaf.reward is None or not leaf.finished for leaf in ls):
                raise RuntimeError(f"{self.registered_name}: a tree of {tree.problem.id!r} ended with {len(ls)} "
                                   f"verified finished leaves for {want} rollouts")
        return engine, trees, leaves

    def sample(self, request: RolloutRequest):
        engine, trees, leaves = self.search(request)
        batch = engine.leaves_batch(trees, leaves)
        batch.rewards = torch.tensor([leaf.reward for ls in leaves for leaf in ls], dtype=torch.float32)
        engine.release(trees)
        metrics = engine.stats.metrics()
        metrics["rollout/response_tokens"] = batch.tokens
        metrics["rollout/nodes"] = sum(len(t.nodes) - 1 for t in trees)
        metrics["rollout/shared_token_frac"] = 1.0 - engine.stats.generated / max(1, batch.tokens)
        return batch, metrics


def step_segments(tokenizer, max_tokens: int | None, marker: str | None, entropy_above: float | None = None):
    """Segments that end after ``max_tokens`` tokens, after a token containing ``marker``, or
    before a token of entropy above ``entropy_above``; at least one rule must be on."""
    if max_tokens is None and not marker and entropy_above is None:
        raise ValueError("a tree needs a segment rule: a number of tokens, a step marker or an entropy threshold")
    return Segments(max_tokens=max_tokens, after_ids=marker_ids(tokenizer, marker), entropy_above=entropy_above)
