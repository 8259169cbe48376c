"""Tree advantages: every node of a tree rollout is credited from the leaves under it.

TreeRL (Hou et al., arXiv:2506.11902, §3.2, process supervision from on-policy trees) values a
node s by the correctness of the leaves L(s) in its subtree and gives each of its tokens

    V(s) = (1/|L(s)|) Σ_{l ∈ L(s)} r(l)
    A(s) = [ (V(s) − V(root)) + (V(s) − V(parent(s))) ] / sqrt(|L(s)|)

a global advantage (the node against the problem's mean) plus a local one (what this segment
added to its parent), divided by sqrt(|L(s)|) because the node's tokens recur in |L(s)|
responses of the group. Code followed, THUDM/TreeRL ``openrlhf/trainer/ppo_utils/``:
``tree_node.py`` ``leaf_normalize``/``leaf_backpropagate`` (lines 377-419: leaf rewards centred
on the others' mean and summed up the tree), ``compute_weighted_update`` with ``"sqrt"``
(553-570); ``parallel_mcts.py`` ``path_from_root_to_node`` (1603-1617: value = child − parent
mean) and ``gather_paths`` with ``use_state_value_reward`` (1664-1668: that plus the node's own
centred value).

Choices: the paper's formula as written (the code's leave-one-out centring and its token-level
renormalisation of all steps are left out); no division by a standard deviation (neither
centres on one). A response's tokens each get their node's A (``token_advantages``); its
sequence-level advantage, which stats and shapers see, is the mean over its tokens. A row that
is not part of a tree (``tree_node`` -1: a flat sample, a teacher's row) is a one-node chain
under the root, so on a flat group A = 2 (r − mean r).
"""
from __future__ import annotations

import math

import torch

from explorl.batch import DEMO
from explorl.explore.base import Advantage, Groups
from explorl.registry import register


def node_advantages(rewards: list[float], paths: list[list]) -> dict:
    """``{node: A(node)}`` for the nodes on ``paths`` (each a response's nodes from the root's
    child down, with reward ``rewards[i]``)."""
    leaves: dict = {}
    parent: dict = {}
    for i, path in enumerate(paths):
        for depth, node in enumerate(path):
            leaves.setdefault(node, []).append(i)
            parent[node] = path[depth - 1] if depth else None
    v_root = sum(rewards) / len(rewards)
    value = {n: sum(rewards[i] for i in rows) / len(rows) for n, rows in leaves.items()}
    return {n: ((value[n] - v_root) + (value[n] - (v_root if parent[n] is None else value[parent[n]])))
            / math.sqrt(len(leaves[n])) for n in leaves}


def row_paths(tree_node: torch.Tensor | None, mask: torch.Tensor, rows: list[int]) -> list[list]:
    """Each row's nodes in order (``("row", r)`` alone for a row outside every tree) and the node
    of each of its tokens."""
    paths = []
    for r in rows:
        ids = [] if tree_node is None else tree_node[r][mask[r] > 0].tolist()
        if not ids or min(ids) < 0:
            paths.append([("row", r)])
            continue
        path = [ids[0]]
        for node in ids[1:]:
            if node != path[-1]:
                path.append(node)
        paths.append(path)
    return paths


@register("advantage", "tree_grpo", paper="TreeRL, Hou et al., arXiv:2506.11902 (node advantages on trees)")
class TreeGRPO(Advantage):
    min_group_size = 2

    def compute(self, groups: Groups, adv):
        batch = groups.extras.get("batch")
        if batch is None:
            raise ValueError("tree_grpo needs the batch (groups.extras['batch']) to read the tree of each group")
        R, Lc = batch.mask.shape
        token_adv = torch.zeros(R, Lc)
        counted = (batch.row_kind != DEMO).tolist()
        nodes, depth = [], []
        for g in range(len(batch.counts)):
            rows = [r for r in (batch.group == g).nonzero().squeeze(-1).tolist() if counted[r]]
            if not rows:
                continue
            paths = row_paths(batch.tree_node, batch.mask, rows)
            values = node_advantages([float(batch.rewards[r]) for r in rows], paths)
            for r, path in zip(rows, paths):
                if isinstance(path[0], tuple):
                    token_adv[r] = values[path[0]]
                else:
                    ids = batch.tree_node[r]
                    for node in path:
                        token_adv[r][ids == node] = values[node]
            nodes.append(len(values))
            depth.append(sum(len(p) for p in paths) / len(paths))
        token_adv = token_adv * batch.mask
        seq = token_adv.sum(-1) / batch.mask.sum(-1).clamp_min(1)
        groups.extras["token_advantages"] = token_adv
        grid, _ = batch.to_groups(seq)
        return grid * groups.mask, {"adv/tree_nodes": sum(nodes) / max(1, len(nodes)),
                                    "adv/tree_depth": sum(depth) / max(1, len(depth))}
