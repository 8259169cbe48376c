"""``go_explore``: Go-Explore-style "return, then explore" for RLVR, with FR3E's anchors.

Sources: Go-Explore (Ecoffet et al., arXiv:1901.10995 / Nature 2021; code uber-research/go-explore
``robustified/goexplore_py/{goexplore.py, randselectors.py}``): an archive of cells, count-based
selection, return to a cell, explore from it, add the new cells. FR3E, First Return,
Entropy-Eliciting Explore (arXiv:2507.07017; code Zheng0428/FR3E
``verl/trainer/ppo/ray_trainer.py::separate_responses_str_by_prob`` ~L1028 and ``fit`` ~L1307–1420,
``verl/trainer/ppo/core_algos.py::compute_srpo_outcome_advantage`` ~L160, ``run_srpo_v6_adv.sh``):
the "first return" is a full rollout, its anchors are its K least probable tokens, and G rollouts
continue from each anchor's prefix. No RLVR method keeps a persistent archive across steps; this
plug-in is Go-Explore's archive with FR3E's cells.

**Cell** = (problem, prefix): the prefix is the start of one of the policy's own responses, cut
just before an anchor token (the anchor itself is re-sampled, as in FR3E, whose prefixes are the
response up to each anchor: ``valid_response_ids[start_idx:end_idx]`` summed up).

**Which responses make cells** (the "partial success" rule). A group of the policy's rollouts of
one problem counts when it is partially solved: at least one rollout correct (reward ≥ 1) and at
least one wrong (``require_partial``, the default, a choice of this plug-in). From such a group,
the first ``correct_per_problem`` (1) correct and the first ``wrong_per_problem`` (1) wrong
rollouts are base responses (FR3E's ``srpo_correct_sample_max_num=1``,
``srpo_wrong_sample_max_num=1``). A prefix of a correct response is a point on a path that
succeeds; a prefix of a wrong one, on a problem the policy sometimes solves, is a point where
exploring may turn a failure into a success. FR3E itself takes base responses from every group
(its filter of all-correct/all-wrong first rollouts, ``first_roll_use_dynamic_sampling``, raises
``NotImplementedError``) and drops the explored groups whose rollouts all agree
(``use_dynamic_sampling``); ``require_partial: false`` takes every group (the explored groups are
kept: a group that agrees has zero advantage under the group estimator and no policy gradient).

**Anchors** (``anchor``). From a base response of L tokens, the ``anchors`` (K = 4, FR3E's
``srpo_max_block_num``) positions a ∈ [1, L−1] with the lowest π_old(token) (``low_prob``, the
code's choice: ``torch.topk(trajectory_prob, largest=False)`` on the old log-probs) or the highest
entropy (``entropy``, the paper's and README's description); fewer when the response is shorter.
Position 0 is left out (its prefix is empty: the problem itself). Each anchor a gives the cell
with prefix = the response's first a tokens; the cell at the next anchor of the same response has
it as parent (FR3E's chain S_0 → S_1 → …, S_0 the problem).

**Archive.** Cells keyed by (problem id, prefix), each with its visit count, birth step, parent,
and value V (below). At most ``max_cells`` (1024): past that the most visited cells go first,
the oldest among equals. The archive is checkpointed.

**Select** (Go-Explore's count-based selection, ``randselectors.py``: weight Σ_a w_a·(n_a + 1)^−p_a,
here the one attribute "times chosen" with p = ``visit_power`` = 0.5, the CLI default power):
each step ``cells_per_step`` (8) distinct cells are drawn without replacement with probability ∝
(1 + visits)^−0.5, from the step's random generator. Cells made this step have 0 visits, so a
step mostly explores its own fresh anchors, as FR3E does, and returns to older cells as their
counts fall behind.

The prefix is the decoded text of those tokens and is tokenised again with the prompt (as FR3E
does); with a subword tokenizer its tokens may differ from the sampled ones.

**Return** = condition on the prefix: the problem is ``dataclasses.replace(problem, prefix=...,
id=...)``, so the engine appends the prefix to the prompt (its tokens carry no gradient) and the
verifier judges prefix + continuation. The returned problem gets its own id
(``<id>|go_explore:<hash of the prefix>``) so that per-problem state of curricula and budgets
(Knapsack, learnability, …) is not mixed with the prefix-conditioned group's success.

**Explore**: ``rollouts_per_cell`` (8; FR3E uses 16) on-policy rollouts per selected cell
(``ctx.sample``: their tokens count toward the budget), added to the batch as new groups of kind
``PREFIX``: the policy term covers them and the advantage estimator compares the continuations of
one cell with each other (FR3E's Â within the anchor group). With ``deepen`` (default) the
explored groups make cells too (prefix = the cell's prefix + the continuation's first a tokens,
parent = the explored cell; total prefix at most ``max_new_tokens`` − 1 tokens): Go-Explore adds
the cells an exploration reaches.

**Value and FR3E's advantage scaling** (``fr3e_scaling``, off by default). V(S) is the share of a
state's rollouts whose reward exceeds the group mean (FR3E's share of positive mean-centred
advantages, ``(scores > 0).mean()`` per state). With ``fr3e_scaling`` the advantages of an
explored group are divided by exp(Δ), Δ = V(cell) − V(parent), after the estimator (``augment``):
a cell that raises the success rate over its parent has its advantages damped, one that lowers it
amplified. V(parent) is the parent cell's latest V (this step's if it was explored now); for a
parent never explored, its nearest explored ancestor's; for the first anchor, the problem's own
group V at the time the cell was made. FR3E explores the whole chain S_0…S_K of a response at once
and also scales S_0 by exp(1 − V(S_0)); with an archive the chain is not explored together, so the
root's factor is not applied (the on-policy groups keep their advantages), and the code's optional
``sharpen`` (a |Δ|^1.5 normalisation over the chain) is not implemented.

Stacking: explored groups are new problems carrying a prefix; list ``go_explore`` after guidance
methods that add teacher rows to every group, so that they see the batch before it.

Metrics: ``guide/gx_cells`` (archive size), ``guide/gx_new_cells``, ``guide/gx_explored``,
``guide/gx_prefix_rows``, ``guide/gx_prefix_pass_rate``, ``guide/gx_prefix_tokens`` (mean prefix
length), ``guide/gx_selected_visits`` (mean visits of the selected cells before the visit);
``guide/gx_fr3e_scale`` (mean factor) with ``fr3e_scaling``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math

import torch

from explorl.batch import ON_POLICY, PREFIX, RolloutBatch
from explorl.explore.acted import Acted
from explorl.explore.base import Guidance
from explorl.registry import register


def anchor_positions(old_logp: torch.Tensor, entropy: torch.Tensor, length: int, k: int, mode: str,
                     first: int = 1, last: int | None = None) -> list[int]:
    """The ``k`` anchor positions of one response of ``length`` tokens, in increasing order: the
    lowest ``old_logp`` (``low_prob``) or the highest ``entropy`` (``entropy``) among positions
    ``first`` … ``min(length, last + 1) − 1``."""
    stop = length if last is None else min(length, last + 1)
    if stop <= first or k < 1:
        return []
    span = slice(first, stop)
    score = -old_logp[span] if mode == "low_prob" else entropy[span]
    top = torch.topk(score.float(), k=min(k, stop - first)).indices + first
    return sorted(top.tolist())


def state_value(rewards: list[float]) -> float:
    """V(S): the share of rollouts whose reward exceeds the group mean (FR3E's share of positive
    mean-centred advantages)."""
    if not rewards:
        return 0.0
    mean = sum(rewards) / len(rewards)
    return sum(r > mean + 1e-9 for r in rewards) / len(rewards)


def visit_weight(visits: int, power: float = 0.5) -> float:
    """Go-Explore's count-based selection weight (1 + n)^−p."""
    return (1.0 + visits) ** (-power)


def returned_problem(problem, prefix: str):
    """``problem`` conditioned on ``prefix``, with an id of its own."""
    digest = hashlib.sha1(prefix.encode()).hexdigest()[:10]
    return dataclasses.replace(problem, prefix=prefix, id=f"{problem.id}|go_explore:{digest}")


@register("guidance", "go_explore",
          paper="Go-Explore archive (arXiv:1901.10995; uber-research/go-explore) with FR3E anchors, arXiv:2507.07017; "
                "code Zheng0428/FR3E ray_trainer.py::separate_responses_str_by_prob, "
                "core_algos.py::compute_srpo_outcome_advantage")
class GoExplore(Guidance):
    engaged_when = (Acted("guide/gx_prefix_rows", ">", 0, what="prefix rows per step > 0"),)
    state_keys = ("archive",)

    def __init__(self, anchor: str = "low_prob", anchors: int = 4, correct_per_problem: int = 1,
                 wrong_per_problem: int = 1, require_partial: bool = True, cells_per_step: int = 8,
                 rollouts_per_cell: int = 8, max_cells: int = 1024, visit_power: float = 0.5, deepen: bool = True,
                 fr3e_scaling: bool = False):
        if anchor not in ("low_prob", "entropy"):
            raise ValueError(f"guidance go_explore: anchor must be low_prob or entropy, got {anchor!r}")
        if anchors < 1 or cells_per_step < 0 or rollouts_per_cell < 1 or max_cells < 1:
            raise ValueError("guidance go_explore: need anchors >= 1, cells_per_step >= 0, rollouts_per_cell >= 1, "
                             "max_cells >= 1")
        if correct_per_problem < 0 or wrong_per_problem < 0 or visit_power < 0:
            raise ValueError("guidance go_explore: need correct_per_problem, wrong_per_problem, visit_power >= 0")
        self.anchor, self.anchors = anchor, anchors
        self.correct_per_problem, self.wrong_per_problem = correct_per_problem, wrong_per_problem
        self.require_partial = require_partial
        self.cells_per_step, self.rollouts_per_cell = cells_per_step, rollouts_per_cell
        self.max_cells, self.visit_power, self.deepen, self.fr3e_scaling = max_cells, visit_power, deepen, fr3e_scaling
        self.archive: dict[tuple[str, str], dict] = {}
        self._scale: dict[str, float] = {}

    # ---- the archive ---------------------------------------------------------------------
    def add_cells(self, batch, group_cells: dict[int, tuple | None], step: int, tokenizer,
                  max_prefix_tokens: int) -> int:
        """Cells from the partially solved groups of ``batch`` named in ``group_cells``
        (group index → the cell the group explored, ``None`` for a problem's own group)."""
        added = 0
        own, rewards = batch.own_rows, batch.rewards.float()
        for g, parent_key in group_cells.items():
            rows = ((batch.group == g) & own).nonzero().squeeze(-1).tolist()
            rs = [float(rewards[r]) for r in rows]
            correct = [r for r, x in zip(rows, rs) if x >= 1.0]
            wrong = [r for r, x in zip(rows, rs) if x < 1.0]
            if self.require_partial and not (correct and wrong):
                continue
            problem = batch.problems[g]
            base = self.archive[parent_key]["problem"] if parent_key is not None else problem
            start = problem.prefix if parent_key is not None else ""
            used = len(tokenizer(start, add_special_tokens=False).input_ids) if start else 0
            value = state_value(rs)
            for r in correct[:self.correct_per_problem] + wrong[:self.wrong_per_problem]:
                length = int(batch.mask[r].sum())
                positions = anchor_positions(batch.old_logp[r], batch.entropy[r], length, self.anchors, self.anchor,
                                             last=max_prefix_tokens - used)
                parent = parent_key
                for a in positions:
                    text = tokenizer.decode(batch.response_ids[r, :a].tolist(), skip_special_tokens=True)
                    if not text:
                        continue
                    key = (base.id, start + text)
                    if key not in self.archive:
                        self.archive[key] = {"problem": base, "prefix": start + text, "visits": 0, "born": step,
                                             "parent": parent, "parent_value": value, "value": None}
                        added += 1
                    parent = key
        self._evict()
        return added

    def _evict(self) -> None:
        excess = len(self.archive) - self.max_cells
        if excess > 0:
            order = sorted(self.archive, key=lambda k: (-self.archive[k]["visits"], self.archive[k]["born"]))
            for key in order[:excess]:
                del self.archive[key]

    def select(self, rng, n: int) -> list[tuple]:
        """``n`` distinct cells, drawn without replacement with probability ∝ (1 + visits)^−p."""
        keys = list(self.archive)
        chosen = []
        while keys and len(chosen) < n:
            weights = [visit_weight(self.archive[k]["visits"], self.visit_power) for k in keys]
            pick = rng.choices(range(len(keys)), weights=weights)[0]
            chosen.append(keys.pop(pick))
        return chosen

    def parent_value(self, key) -> float:
        """V of the cell's nearest explored ancestor; the problem's group V at the cell's birth when none."""
        cell = self.archive[key]
        fallback, parent = cell["parent_value"], cell["parent"]
        while parent is not None and parent in self.archive:
            up = self.archive[parent]
            if up["value"] is not None:
                return up["value"]
            fallback, parent = up["parent_value"], up["parent"]
        return fallback

    def record_values(self, explored_rewards: dict) -> dict:
        """Set V of each explored cell (``{key: rewards}``) and return its Δ = V − V(parent)."""
        for key, rewards in explored_rewards.items():
            self.archive[key]["value"] = state_value(rewards)
        return {key: self.archive[key]["value"] - self.parent_value(key) for key in explored_rewards}

    # ---- the step ------------------------------------------------------------------------
    def guide(self, batch, ctx):
        tokenizer = ctx.engine.tokenizer
        tctx = ctx.extras.get("teacher_context")
        max_new = getattr(tctx, "max_new_tokens", None) or batch.response_ids.shape[1]
        own_groups = {g: None for g in range(len(batch.problems))
                      if bool(((batch.group == g) & (batch.row_kind == ON_POLICY)).any())}
        added = self.add_cells(batch, own_groups, ctx.step, tokenizer, max_new - 1)
        self._scale = {}
        metrics = {"guide/gx_new_cells": float(added)}
        chosen = self.select(ctx.rng, self.cells_per_step) if self.cells_per_step else []
        if chosen:
            metrics["guide/gx_selected_visits"] = sum(self.archive[k]["visits"] for k in chosen) / len(chosen)
            for key in chosen:
                self.archive[key]["visits"] += 1
            problems = [returned_problem(self.archive[k]["problem"], self.archive[k]["prefix"]) for k in chosen]
            explored = ctx.sample(problems, [self.rollouts_per_cell] * len(problems))
            explored.kind = torch.full((explored.size,), PREFIX, dtype=torch.long)
            rewards = explored.rewards.float()
            per_cell = {k: [float(rewards[r]) for r in (explored.group == g).nonzero().squeeze(-1).tolist()]
                        for g, k in enumerate(chosen)}
            deltas = self.record_values(per_cell)
            if self.fr3e_scaling:
                self._scale = {p.id: math.exp(-deltas[k]) for p, k in zip(problems, chosen)}
            if self.deepen:
                more = self.add_cells(explored, dict(enumerate(chosen)), ctx.step, tokenizer, max_new - 1)
                metrics["guide/gx_new_cells"] += float(more)
            batch = RolloutBatch.concat([batch, explored], ctx.engine.pad)
            metrics.update({
                "guide/gx_explored": float(len(chosen)), "guide/gx_prefix_rows": float(explored.size),
                "guide/gx_prefix_pass_rate": float((rewards >= 1.0).float().mean()),
                "guide/gx_prefix_tokens": sum(len(tokenizer(p.prefix, add_special_tokens=False).input_ids)
                                              for p in problems) / len(problems)})
        metrics["guide/gx_cells"] = float(len(self.archive))
        return batch, metrics

    def augment(self, batch, sampler):
        if not self._scale:
            return batch, {}
        factor = torch.tensor([self._scale.get(batch.problems[g].id, 1.0) for g in batch.group.tolist()])
        scaled = (batch.row_kind == PREFIX) & (factor != 1.0)
        batch.advantages = torch.where(scaled, batch.advantages * factor.to(batch.advantages.dtype), batch.advantages)
        self._scale = {}
        return batch, {"guide/gx_fr3e_scale": float(factor[batch.row_kind == PREFIX].mean())}
