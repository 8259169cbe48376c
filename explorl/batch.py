"""The values that flow through one step: what a rollout method is asked to sample
(``RolloutRequest``), the batch of rollouts it returns (built by the rollout engine in
``policy/``, used by the trainer in ``train/`` and by plug-ins), its per-group view, and the
joining of batches sampled in several calls (``join``, ``merge``)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from explorl.tasks.problem import Problem


@dataclass
class Groups:
    """What an advantage function sees: P problems × up to G rollouts each (padded).

    ``rewards``, ``mask``, ``lengths`` and ``logp_mean`` (mean behaviour log-prob of each
    response at temperature 1) are ``(P, G)``. ``extras`` lets the trainer hand over
    anything a component declared in ``needs`` (e.g. ``hidden_states``).
    """

    rewards: torch.Tensor
    mask: torch.Tensor
    lengths: torch.Tensor
    logp_mean: torch.Tensor
    problems: list["Problem"]
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def counts(self) -> torch.Tensor:
        return self.mask.sum(1)



#: What a row of a batch is (``RolloutBatch.kind``). ``ON_POLICY``: sampled from the policy.
#: ``OFF_POLICY``: a teacher's or a reference solution placed in a group (its tokens were not
#: sampled from the policy; ``behaviour_logp`` is the teacher's log-prob, 0 when unknown).
#: ``REPLAYED``: the policy's own past response, with the behaviour log-probs recorded then.
#: ``PREFIX``: the policy's continuation of a stored prefix (the prefix sits in the prompt, so its
#: tokens carry no gradient). ``DEMO``: a demonstration outside every group (no advantage), for
#: supervised terms only. Which loss a row gets is the objective's and the guidance method's
#: business (``explorl.train.update.combine_terms``); the trainer never branches on a name.
ON_POLICY, OFF_POLICY, REPLAYED, PREFIX, DEMO = range(5)
ROW_KINDS = ("on_policy", "off_policy", "replayed", "prefix", "demo")


@dataclass
class RolloutRequest:
    """What a rollout method samples from: ``counts[i]`` responses to ``problems[i]`` with
    ``engine`` under the per-position ``temperatures`` and ``top_p``, draws fixed by ``seed``,
    at most ``max_rows`` decoded at once; ``score(problems, texts) -> rewards`` verifies."""

    engine: Any
    problems: list
    counts: list
    temperatures: Any
    top_p: float
    seed: int
    score: Any
    max_new_tokens: int | None = None
    max_rows: int | None = None
    thinking: Any = None   # a soft-token rule from the decoding (``Decoding.thinking``); None: discrete tokens
    intervention: Any = None  # an activation intervention from the decoding (``Decoding.intervention``)


@dataclass
class RolloutBatch:
    """P problems, R = Σ counts responses. Response tensors are ``(R, Lc)``, right-padded.

    ``prompt_ids`` ``(P, Lp)`` are left-padded; ``group[r]`` is the problem of response r.
    ``mask`` marks response tokens (the EOS included). ``behaviour_logp`` is the log-prob
    under the distribution the token came from, ``old_logp`` under π_old at temperature 1.
    ``kind`` ``(R,)`` says what each row is (``ROW_KINDS``; ``None``: all on-policy) and
    ``loss_mask`` ``(R, Lc)`` which tokens carry gradient (``None``: every response token).
    ``soft`` (``explorl.policy.soft.SoftInputs``; ``None``: none) records the positions fed a soft
    token while sampling, so the training forward feeds them again.

    Rows of a tree rollout (``explorl.policy.tree``) share prefixes: ``tree_node`` ``(R, Lc)``
    names the tree node of every token (-1 on padding and on rows sampled flat), and
    ``generated_tokens`` is what sampling generated, a shared prefix once (``None``: the
    response tokens, ``tokens``); the trainer counts it toward the budget right after sampling.
    ``token_advantages`` ``(R, Lc)``, when an advantage estimator sets it, varies along a
    response (per tree node); otherwise every token of a row gets ``advantages``.
    """

    problems: list[Problem]
    counts: list[int]
    group: torch.Tensor
    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    response_ids: torch.Tensor
    mask: torch.Tensor
    behaviour_logp: torch.Tensor
    old_logp: torch.Tensor
    entropy: torch.Tensor
    texts: list[str]
    rewards: torch.Tensor | None = None
    advantages: torch.Tensor | None = None   # (R,) sequence-level
    extras: dict[str, Any] = field(default_factory=dict)
    kind: torch.Tensor | None = None         # (R,) long, ROW_KINDS
    loss_mask: torch.Tensor | None = None    # (R, Lc)
    soft: Any = None                         # SoftInputs of the rows
    tree_node: torch.Tensor | None = None    # (R, Lc) long, -1 where no tree node
    generated_tokens: int | None = None
    token_advantages: torch.Tensor | None = None  # (R, Lc)

    @property
    def row_kind(self) -> torch.Tensor:
        return self.kind if self.kind is not None else torch.zeros(self.size, dtype=torch.long)

    @property
    def own_rows(self) -> torch.Tensor:
        """``(R,)`` bool: the rows the policy sampled in this step (on-policy, and continuations of
        a stored prefix), not teacher, replayed or demonstration rows."""
        kind = self.row_kind
        return (kind == ON_POLICY) | (kind == PREFIX)

    @property
    def grad_mask(self) -> torch.Tensor:
        return self.loss_mask if self.loss_mask is not None else self.mask

    def kind_counts(self) -> dict[str, int]:
        counts = torch.bincount(self.row_kind, minlength=len(ROW_KINDS)).tolist()
        return {name: n for name, n in zip(ROW_KINDS, counts)}

    @property
    def size(self) -> int:
        return self.response_ids.shape[0]

    @property
    def lengths(self) -> torch.Tensor:
        return self.mask.sum(-1)

    @property
    def tokens(self) -> int:
        return int(self.mask.sum().item())

    @property
    def sampled_tokens(self) -> int:
        """Tokens generated to sample this batch: a shared prefix of a tree once."""
        return self.tokens if self.generated_tokens is None else self.generated_tokens

    def per_token_advantages(self) -> torch.Tensor:
        """``(R, Lc)``: ``token_advantages``, else each row's ``advantages`` on all its tokens."""
        if self.token_advantages is not None:
            return self.token_advantages
        return self.advantages[:, None].expand_as(self.mask)

    def slot(self) -> torch.Tensor:
        """Position of each response within its group, ``(R,)``."""
        starts = torch.tensor([0] + self.counts[:-1]).cumsum(0)
        return torch.arange(self.size) - starts[self.group]

    def to_groups(self, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scatter per-response ``values`` ``(R,)`` into a padded ``(P, G)`` grid and its mask."""
        P, G = len(self.counts), max(self.counts)
        grid = values.new_zeros(P, G)
        mask = torch.zeros(P, G)
        grid[self.group, self.slot()] = values
        mask[self.group, self.slot()] = 1.0
        return grid, mask

    def from_groups(self, grid: torch.Tensor) -> torch.Tensor:
        return grid[self.group, self.slot()]

    def groups(self) -> Groups:
        """The per-group view advantage functions see; demonstrations (``DEMO``) are left out."""
        rewards, mask = self.to_groups(self.rewards.float())
        demo, _ = self.to_groups((self.row_kind == DEMO).float())
        mask = mask * (1 - demo)
        lengths, _ = self.to_groups(self.lengths.float())
        mean_logp = (self.old_logp * self.mask).sum(-1) / self.lengths.clamp_min(1)
        logp_mean, _ = self.to_groups(mean_logp)
        return Groups(rewards=rewards, mask=mask, lengths=lengths, logp_mean=logp_mean,
                      problems=self.problems, extras=dict(self.extras))

    def select_groups(self, keep: list[int]) -> "RolloutBatch":
        """The sub-batch of the problems at indices ``keep`` (in that order), all their rollouts."""
        rows = torch.cat([(self.group == g).nonzero().squeeze(-1) for g in keep]) if keep else torch.zeros(0, dtype=torch.long)
        remap = torch.full((len(self.problems),), -1, dtype=torch.long)
        remap[torch.tensor(keep, dtype=torch.long)] = torch.arange(len(keep))
        return self._with_rows(rows, [self.problems[g] for g in keep], [self.counts[g] for g in keep],
                               remap[self.group[rows]], torch.tensor(keep, dtype=torch.long))

    def _with_rows(self, rows, problems, counts, group, prompt_rows) -> "RolloutBatch":
        pick = lambda x: None if x is None else x[rows]  # noqa: E731
        return RolloutBatch(problems=problems, counts=counts, group=group,
                            prompt_ids=self.prompt_ids[prompt_rows], prompt_mask=self.prompt_mask[prompt_rows],
                            response_ids=self.response_ids[rows], mask=self.mask[rows],
                            behaviour_logp=self.behaviour_logp[rows], old_logp=self.old_logp[rows],
                            entropy=self.entropy[rows], texts=[self.texts[r] for r in rows.tolist()],
                            rewards=pick(self.rewards), advantages=pick(self.advantages), extras=dict(self.extras),
                            kind=pick(self.kind), loss_mask=pick(self.loss_mask), tree_node=pick(self.tree_node),
                            token_advantages=pick(self.token_advantages),
                            soft=None if self.soft is None else self.soft.rows(rows))

    def drop_rows(self, rows: list[int]) -> "RolloutBatch":
        """The batch without ``rows``; every group keeps at least one row."""
        drop = torch.zeros(self.size, dtype=torch.bool)
        drop[torch.tensor(rows, dtype=torch.long)] = True
        keep = (~drop).nonzero().squeeze(-1)
        counts = torch.bincount(self.group[keep], minlength=len(self.problems)).tolist()
        if min(counts) < 1:
            raise ValueError("drop_rows: a group would lose all of its rows")
        return self._with_rows(keep, list(self.problems), counts, self.group[keep],
                               torch.arange(len(self.problems)))

    def add_rows(self, extra: "RolloutBatch", origin: list[int]) -> "RolloutBatch":
        """The batch with ``extra``'s rows appended to the groups ``origin[g]`` of its groups g
        (``extra`` must encode the same prompts: make it with the same engine)."""
        return merge([(self, list(range(len(self.problems)))), (extra, list(origin))], self.problems)

    @staticmethod
    def concat(batches: list["RolloutBatch"], pad_id: int) -> "RolloutBatch":
        """Join batches of disjoint problem lists (groups stay whole; padding is re-applied)."""
        def pad_right(ts, value):
            width = max(t.shape[1] for t in ts)
            return torch.cat([torch.nn.functional.pad(t, (0, width - t.shape[1]), value=value) for t in ts])

        def pad_left(ts, value):
            width = max(t.shape[1] for t in ts)
            return torch.cat([torch.nn.functional.pad(t, (width - t.shape[1], 0), value=value) for t in ts])

        offsets = torch.tensor([0] + [len(b.problems) for b in batches[:-1]]).cumsum(0)
        opt = lambda name: None if any(getattr(b, name) is None for b in batches) else torch.cat([getattr(b, name) for b in batches])  # noqa: E731
        any_kind = any(b.kind is not None for b in batches)
        any_loss_mask = any(b.loss_mask is not None for b in batches)
        any_tree = any(b.tree_node is not None for b in batches)
        any_token_adv = any(b.token_advantages is not None for b in batches) and all(
            b.token_advantages is not None or b.advantages is not None for b in batches)
        flat_nodes = lambda b: b.tree_node if b.tree_node is not None else torch.full_like(  # noqa: E731
            b.response_ids, -1)
        return RolloutBatch(
            problems=[p for b in batches for p in b.problems], counts=[c for b in batches for c in b.counts],
            group=torch.cat([b.group + o for b, o in zip(batches, offsets)]),
            prompt_ids=pad_left([b.prompt_ids for b in batches], pad_id),
            prompt_mask=pad_left([b.prompt_mask for b in batches], 0),
            response_ids=pad_right([b.response_ids for b in batches], pad_id),
            mask=pad_right([b.mask for b in batches], 0.0),
            behaviour_logp=pad_right([b.behaviour_logp for b in batches], 0.0),
            old_logp=pad_right([b.old_logp for b in batches], 0.0),
            entropy=pad_right([b.entropy for b in batches], 0.0),
            texts=[t for b in batches for t in b.texts], rewards=opt("rewards"), advantages=opt("advantages"),
            extras=dict(batches[0].extras),
            kind=torch.cat([b.row_kind for b in batches]) if any_kind else None,
            loss_mask=pad_right([b.grad_mask for b in batches], 0.0) if any_loss_mask else None,
            tree_node=pad_right([flat_nodes(b) for b in batches], -1) if any_tree else None,
            generated_tokens=sum(b.sampled_tokens for b in batches)
            if any(b.generated_tokens is not None for b in batches) else None,
            token_advantages=pad_right([b.per_token_advantages() * b.mask for b in batches], 0.0)
            if any_token_adv else None,
            soft=_join_soft(batches))


def _join_soft(batches: list[RolloutBatch]):
    present = [b.soft for b in batches if b.soft is not None]
    if not present:
        return None
    # the batch only carries soft inputs: their own class (explorl.policy.soft.SoftInputs) joins them
    return type(present[0]).concat([b.soft for b in batches], [b.size for b in batches],
                                   [b.response_ids.shape[1] for b in batches])


# ---- joining rollouts of the same problem generated in several sampling calls ---------------
# ``RolloutBatch.concat`` joins batches of disjoint problem lists. Budgets that sample one problem
# more than once (BroRL's chunks, XRPO's allocation rounds) then regroup: every piece names, for
# each of its groups, the output problem it belongs to, and ``merge`` returns one batch with one
# whole group per output problem, in output order (rollouts in piece order).
def infer_pad_id(batches: list[RolloutBatch]) -> int:
    """The pad token of the engine that produced ``batches`` (read off their padding)."""
    for b in batches:
        pads = b.prompt_ids[b.prompt_mask == 0]
        if pads.numel():
            return int(pads[0])
        pads = b.response_ids[b.mask == 0]
        if pads.numel():
            return int(pads[0])
    return 0


def join(batches: list[RolloutBatch]) -> RolloutBatch:
    """``RolloutBatch.concat`` of batches of disjoint problems, with their own pad id."""
    return batches[0] if len(batches) == 1 else RolloutBatch.concat(batches, infer_pad_id(batches))


def merge(pieces: list[tuple[RolloutBatch, list[int]]], problems: list) -> RolloutBatch:
    """``pieces`` = ``[(batch, origin)]`` with ``origin[g]`` the index in ``problems`` of group g
    (``-1`` drops that group). Every output problem must receive at least one rollout, and
    all pieces of one output problem must share its prompt."""
    big = join([b for b, _ in pieces])
    origin = torch.tensor([o for _, org in pieces for o in org], dtype=torch.long)
    if len(origin) != len(big.problems):
        raise ValueError("merge: one origin per group of every piece is needed")
    rows, counts, prompt_rows = [], [], []
    for i in range(len(problems)):
        groups = (origin == i).nonzero().squeeze(-1).tolist()
        if not groups:
            raise ValueError(f"merge: output problem {i} received no rollouts")
        r = torch.cat([(big.group == g).nonzero().squeeze(-1) for g in groups])
        rows.append(r)
        counts.append(len(r))
        prompt_rows.append(groups[0])
    group = torch.repeat_interleave(torch.arange(len(problems)), torch.tensor(counts))
    return big._with_rows(torch.cat(rows), list(problems), counts, group,
                          torch.tensor(prompt_rows, dtype=torch.long))
