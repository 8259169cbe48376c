"""Joining rollouts of the same problem that were generated in several sampling calls.

``RolloutBatch.concat`` joins batches of disjoint problem lists. Budgets that sample one
problem more than once (BroRL's chunks, XRPO's allocation rounds) then regroup: every piece
names, for each of its groups, the output problem it belongs to, and ``merge`` returns one
batch with one whole group per output problem, in output order (rollouts in piece order).
"""
from __future__ import annotations

import torch

from explorl.batch import RolloutBatch


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
