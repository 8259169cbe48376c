"""DTS / DTS*: Diffusion Tree Sampling and Search (Jain et al., arXiv:2506.20701; project page
diffusion-tree-sampling.github.io), in the paper's language-completion form: the tree is over
blocks of tokens and a response's blocks are its denoising steps.

Target π*(x) ∝ p_θ(x) exp(λ r(x)). A node stores a soft value v̂ and a visit count; the soft value
of a prefix is V(x_t) = (1/λ) log E_{p_θ(x_{0:t−1} | x_t)} exp(λ r(x_0)), which obeys the soft
Bellman equation V(x_t) = (1/λ) log E_{p_θ(x_{t−1} | x_t)} exp(λ V(x_{t−1})). One iteration
(project page, "Diffusion Tree Sampling & Search"):

- selection: from the root, pick a child ∝ exp(λ v̂(child)) (DTS) or the child of highest v̂
  (DTS*, "no other code changes required");
- expansion: a node with fewer than ``max_children`` children draws a new child from p_θ;
- rollout: continue to the end of the response, adding every intermediate block as a node;
- backup: the verifier's reward r at the new leaf, then along its path
      v̂(x) = (1/λ) log ( (1/|C(x)|) Σ_{c ∈ C(x)} exp(λ v̂(c)) )
  over the children C(x) of each node, and each node's visit count + 1.

Choices (the paper's algorithm box was not available to check, SEED_METHODS.md §5):
- the backup's estimator: the plain mean over children (``backup: children``), the Monte-Carlo
  estimate of E_{p_θ} exp(λV) since every child is a draw from p_θ; ``backup: visits`` weights
  each child by its visit count instead (the visits follow the tilted selection, not p_θ).
- the unvisited child: with ``new_child_value: null`` a node that has fewer than ``max_children``
  children always draws a new one (the project page's rule); with a number, a not-yet-drawn
  child competes in the selection with that value as its prior.
- DTS*'s argmax breaks ties at random (with binary rewards most values tie at first).
- a node whose subtree is exhausted (finished responses, every node at ``max_children``) is not
  selected; when the whole tree is, the root draws one more child.
- blocks end after ``block_tokens`` tokens or a token containing ``step_marker``; λ is ``lam``.
- one iteration yields one finished response, so n iterations give the group's n leaves; the
  answer of a search (``answer``) is DTS*'s best reward and, for DTS, a sample drawn by
  descending the tree with the Boltzmann policy.
"""
from __future__ import annotations

import math
import random

from explorl.explore.rollout.trees import TreeRollout, step_segments
from explorl.registry import register


def soft_value(values, lam: float, weights=None) -> float:
    """(1/λ) log (Σ w exp(λ v) / Σ w), computed stably (w = 1 by default)."""
    weights = weights or [1.0] * len(values)
    top = max(values)
    total = sum(w * math.exp(lam * (v - top)) for v, w in zip(values, weights))
    return top + math.log(total / sum(weights)) / lam


def boltzmann(values, lam: float, rng: random.Random) -> int:
    top = max(values)
    weights = [math.exp(lam * (v - top)) for v in values]
    return rng.choices(range(len(values)), weights=weights)[0]


@register("rollout", "dts", paper="Diffusion Tree Sampling, Jain et al., arXiv:2506.20701")
class DTS(TreeRollout):
    greedy = False

    def __init__(self, lam: float = 1.0, block_tokens: int | None = 4, step_marker: str | None = None,
                 max_children: int = 2, new_child_value: float | None = None, backup: str = "children"):
        if lam <= 0:
            raise ValueError(f"lam (λ) must be > 0, got {lam}")
        if max_children < 1:
            raise ValueError(f"max_children must be >= 1, got {max_children}")
        if backup not in ("children", "visits"):
            raise ValueError(f"backup must be children (mean over children) or visits (visit-weighted), got {backup!r}")
        self.lam, self.block_tokens, self.step_marker = lam, block_tokens, step_marker
        self.max_children, self.new_child_value, self.backup = max_children, new_child_value, backup

    def segments(self, tokenizer):
        return step_segments(tokenizer, self.block_tokens, self.step_marker)

    def choose(self, values, rng: random.Random) -> int:
        if self.greedy:
            top = max(values)
            return rng.choice([i for i, v in enumerate(values) if v == top])
        return boltzmann(values, self.lam, rng)

    def exhausted(self, node) -> bool:
        return node.finished or (len(node.children) >= self.max_children
                                 and all(self.exhausted(c) for c in node.children))

    def select(self, tree, rng: random.Random):
        """The node the next rollout starts from."""
        if self.exhausted(tree.root):
            return tree.root
        node = tree.root
        while True:
            can_draw = len(node.children) < self.max_children
            options = [c for c in node.children if not self.exhausted(c)]
            if can_draw and (self.new_child_value is None or not options):
                return node
            values = [c.value for c in options] + ([self.new_child_value] if can_draw else [])
            pick = self.choose(values, rng)
            if pick == len(options):
                return node
            node = options[pick]

    def back_up(self, leaf) -> None:
        leaf.value, leaf.visits = leaf.reward, leaf.visits + 1
        node = leaf.parent
        while node is not None:
            node.visits += 1
            children = [c for c in node.children if c.value is not None]
            weights = [float(c.visits) for c in children] if self.backup == "visits" else None
            node.value = soft_value([c.value for c in children], self.lam, weights)
            node = node.parent

    def grow(self, engine, trees, counts, verify):
        rng = random.Random(engine.seed)
        leaves = [[] for _ in trees]
        while True:
            todo = [t for t in range(len(trees)) if len(leaves[t]) < counts[t]]
            if not todo:
                return leaves
            starts = [self.select(trees[t], rng) for t in todo]
            chains = engine.grow([(node, 1) for node in starts], through=True)
            new = [chain[0].leaves()[0] for chain in chains]
            verify(new)
            for t, start, leaf in zip(todo, starts, new):
                self.back_up(leaf)
                leaves[t].append(leaf)
                if start.parent is not None and len(start.children) >= self.max_children:
                    engine.close(start)  # drawn out; the store keeps its prefix while a descendant is open

    def answer(self, leaves, rng: random.Random):
        """DTS: a response drawn by descending the tree with the Boltzmann policy."""
        node = leaves[0].tree.root
        while node.children:
            children = [c for c in node.children if c.value is not None]
            node = children[boltzmann([c.value for c in children], self.lam, rng)]
        return node


@register("rollout", "dts_star", paper="Diffusion Tree Search (DTS*), Jain et al., arXiv:2506.20701")
class DTSStar(DTS):
    greedy = True

    def answer(self, leaves, rng: random.Random):
        """DTS*: the best response found."""
        return TreeRollout.answer(self, leaves, rng)
