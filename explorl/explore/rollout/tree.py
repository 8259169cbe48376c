"""Segment trees for RL groups: a problem's rollouts branch from shared prefixes at segment ends.

TreePO (Li et al., arXiv:2508.17445) decodes a group as a tree of fixed-length segments, each
node forking into several continuations, so common prefixes are decoded once; TreeRL (Hou et al.,
arXiv:2506.11902; code THUDM/TreeRL, ``openrlhf/trainer/ppo_utils/entropy_guided_tree_search.py``)
branches instead from the highest-uncertainty tokens of its chains. Both then give each node an
advantage from the leaves under it (``advantage: tree_grpo``).

What this file builds: the group of ``n`` leaves as one tree grown level by level. Every open
node's segment ends after ``segment_tokens`` tokens, after a token containing ``step_marker``, or
before a token whose entropy exceeds ``branch_entropy`` (TreeRL's branch points, decided while
decoding); at its end a node forks into ``branch`` children while the planned number of leaves
stays within ``n``, else it continues as one child. A chain ends at the stop token or the length
limit, so the tree has exactly ``n`` leaves when the forks use the budget up; if responses end
before they can (short answers), the missing leaves are drawn as more children of the open inner
nodes, the root first, to the end of the response.

Choices: a simpler shape than either paper (no TreePO early stopping or fallback, no TreeRL
multi-round EPTree: one pass, branch points where decoding meets them); leaves are on-policy
samples — every token drawn from the policy at the decoding schedule, whose log-probs are the
behaviour log-probs — though their group is correlated by the shared prefixes.
"""
from __future__ import annotations

from explorl.explore.rollout.trees import TreeRollout, step_segments
from explorl.registry import register


@register("rollout", "tree", paper="TreePO, arXiv:2508.17445; TreeRL, arXiv:2506.11902 (segment trees)")
class SegmentTree(TreeRollout):
    def __init__(self, branch: int = 2, segment_tokens: int | None = 4, step_marker: str | None = None,
                 branch_entropy: float | None = None):
        if branch < 2:
            raise ValueError(f"branch must be >= 2 (children per fork), got {branch}")
        if branch_entropy is not None and branch_entropy < 0:
            raise ValueError(f"branch_entropy must be >= 0, got {branch_entropy}")
        self.branch, self.segment_tokens = branch, segment_tokens
        self.step_marker, self.branch_entropy = step_marker, branch_entropy

    def segments(self, tokenizer):
        return step_segments(tokenizer, self.segment_tokens, self.step_marker, self.branch_entropy)

    def grow(self, engine, trees, counts, verify):
        planned = [1] * len(trees)  # leaves the tree ends with if every open node continues as one chain
        frontier = [[tree.root] for tree in trees]
        while any(frontier):
            requests, owner = [], []
            for t, nodes in enumerate(frontier):
                for node in nodes:
                    k = max(1, min(self.branch, counts[t] - planned[t] + 1))
                    planned[t] += k - 1
                    requests.append((node, k))
                    owner.append(t)
            frontier = [[] for _ in trees]
            for t, children in zip(owner, engine.grow(requests)):
                frontier[t].extend(c for c in children if not c.finished)
        missing = [counts[t] - len(_finished(tree)) for t, tree in enumerate(trees)]
        if any(m > 0 for m in missing):  # chains ended before the forks used the budget up
            requests = []
            for tree, m in zip(trees, missing):
                inner = [n for n in tree.nodes if n.open and not n.finished and n.kv is not None]
                requests.extend((inner[i % len(inner)], 1) for i in range(max(m, 0)))
            engine.grow(requests, through=True)
        leaves = [_finished(tree) for tree in trees]
        verify([leaf for ls in leaves for leaf in ls])
        return leaves


def _finished(tree) -> list:
    return [leaf for leaf in tree.root.leaves() if leaf.finished]
