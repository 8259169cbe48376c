"""Data parallelism over ``torch.distributed``, for runs launched by ``torchrun``.

With ``train.parallel: ddp`` every process (rank) holds the whole model and the same plug-ins,
and a step goes:

- the plug-ins decide (curriculum picks, rollout counts, decoding schedule) on every rank from
  identical state: same seed, same inputs, so the same decisions without a broadcast;
- each rank samples and verifies its share of the step's groups (``shard``: whole groups,
  balanced by rollout count). Every row's sampling noise is drawn once for the whole step
  (``sample_next_token``'s inverse-CDF path), so a row's tokens do not depend on which rank
  sampled it;
- the ranks' rows are gathered (``gather_batch``) into the batch one process would have made,
  in the same order, so estimators, shapers, ``augment`` and ``observe`` see the whole step;
- in the update each rank back-propagates its share of every minibatch; the loss is computed
  once over the whole minibatch from the gathered log-probs (``train.update``), so its
  normalisation is global (a token-mean over all ranks' tokens), and ``all_reduce_grads`` sums
  the ranks' gradients before clipping and the optimizer step, as DDP's all-reduce would.
  (The ``DistributedDataParallel`` wrapper itself is not used: the fast path runs its own
  forward over the weights, which DDP's hooks would not see.)

With ``train.parallel: fsdp`` the same holds, and the training model is sharded with FSDP2
(``explorl.train.fsdp``): gradients are reduce-scattered by FSDP instead of all-reduced here.

Rank 0 writes the run folder (logs, metrics, checkpoints, eval.json); evaluation is sharded by
chunks of problems. A run with ``parallel: ddp`` gives the same metrics and weights on any
number of ranks (within float tolerance); its sampling stream is not the one of
``parallel: none``, which keeps ``torch.multinomial``.
"""
from __future__ import annotations

import os

import torch

from explorl.batch import RolloutBatch
from explorl.policy.device import free_port


def launched_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


class DataParallel:
    """This process's place in the run: ``rank`` of ``world`` (1 and 0 without torchrun)."""

    def __init__(self, mode: str, device: torch.device):
        self.enabled, self.device = mode in ("ddp", "fsdp"), device
        self.sharded = mode == "fsdp"  # FSDP: every training forward is a collective (ranks in lockstep)
        world = launched_world_size()
        if world > 1 and not self.enabled:
            raise ValueError(f"launched with {world} processes (torchrun) but train.parallel is {mode!r}: set "
                             f"train.parallel=ddp (or fsdp), or launch one process")
        self.world, self.rank = 1, 0
        self._own_group = False
        if self.enabled and (world > 1 or self.sharded):
            import torch.distributed as dist
            if not dist.is_initialized():
                backend = "nccl" if device.type == "cuda" else "gloo"
                if device.type == "cuda":
                    torch.cuda.set_device(device)
                if "WORLD_SIZE" in os.environ:  # launched by torchrun (one process too): its rendezvous
                    dist.init_process_group(backend=backend)
                else:  # FSDP needs a process group even for one process: a private one
                    dist.init_process_group(backend=backend, init_method=f"tcp://127.0.0.1:{free_port()}",
                                            rank=0, world_size=1)
                self._own_group = True
            self.world, self.rank = dist.get_world_size(), dist.get_rank()

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    # ---- who does what -------------------------------------------------------------------
    def shard(self, counts: list[int]) -> list[int]:
        """The groups this rank samples: whole groups, largest first to the least-loaded rank
        (ties to the lower rank), so ranks get similar rollout counts; in group order."""
        load = [0] * self.world
        owner = [0] * len(counts)
        for g in sorted(range(len(counts)), key=lambda g: (-counts[g], g)):
            r = min(range(self.world), key=lambda r: (load[r], r))
            owner[g] = r
            load[r] += counts[g]
        return [g for g in range(len(counts)) if owner[g] == self.rank]

    def split_rows(self, rows: torch.Tensor) -> tuple[torch.Tensor, int]:
        """This rank's contiguous share of ``rows`` and where it starts in ``rows``."""
        parts = torch.tensor_split(rows, self.world)
        start = sum(len(p) for p in parts[:self.rank])
        return parts[self.rank], start

    def chunks(self, n: int) -> list[int]:
        """Of ``n`` chunks of work (e.g. evaluation batches), those this rank runs."""
        return list(range(self.rank, n, self.world))

    # ---- collectives ---------------------------------------------------------------------
    def all_gather_objects(self, value) -> list:
        if not self.distributed:
            return [value]
        import torch.distributed as dist
        out = [None] * self.world
        dist.all_gather_object(out, value)
        return out

    def from_main(self, compute):
        """``compute()`` run on rank 0 only, its value given to every rank (a decision all must
        share: what a file on disk says, whether to save)."""
        if not self.distributed:
            return compute()
        import torch.distributed as dist
        box = [compute() if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather_rows(self, local: torch.Tensor | None, sizes: list[int]) -> torch.Tensor:
        """Concatenate every rank's ``local`` ``(n_r, ...)`` in rank order (``sizes[r]`` rows
        each; a rank with no rows passes ``None``)."""
        if not self.distributed:
            return local
        import torch.distributed as dist
        if min(sizes) == 0:  # a rank without rows learns the others' trailing shape and dtype
            metas = self.all_gather_objects(None if local is None else (tuple(local.shape[1:]), local.dtype))
            shape, dtype = next(m for m in metas if m is not None)
        else:
            shape, dtype = tuple(local.shape[1:]), local.dtype
        device = local.device if local is not None else self.device
        padded = torch.zeros((max(sizes), *shape), dtype=dtype, device=device)
        if local is not None:
            padded[:len(local)] = local
        out = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(out, padded.contiguous())
        return torch.cat([o[:n] for o, n in zip(out, sizes)])

    def all_reduce_grads(self, params) -> None:
        """Sum the gradients of ``params`` over ranks (one flat buffer: one collective per update)."""
        if not self.distributed:
            return
        import torch.distributed as dist
        params = [p for p in params if p.requires_grad]
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flat = torch.cat([p.grad.reshape(-1) for p in params])
        dist.all_reduce(flat)
        start = 0
        for p in params:
            n = p.grad.numel()
            p.grad.copy_(flat[start:start + n].view_as(p.grad))
            start += n

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist
            dist.barrier()

    def close(self) -> None:
        if self._own_group:
            import torch.distributed as dist
            if dist.is_initialized():
                dist.destroy_process_group()
            self._own_group = False

    # ---- a step's rollouts ---------------------------------------------------------------
    def rollout(self, engine, problems, counts, temperatures, top_p, seed, score,
                max_rows: int | None = None, intervention=None) -> tuple[RolloutBatch, list]:
        """Sample ``counts[i]`` responses for each problem, this rank its share, and return the
        whole batch (every rank's rows, in the order one process makes them) with rewards, and
        every rank's verifier faults. ``score(problems, texts) -> (rewards, faults)``;
        ``intervention`` as ``RolloutEngine.rollout`` takes it."""
        max_new = len(temperatures)
        noise = torch.rand(sum(counts), max_new, generator=torch.Generator().manual_seed(seed))
        mine = self.shard(counts)
        starts = [0]
        for c in counts:
            starts.append(starts[-1] + c)
        local = None
        if mine:
            rows = torch.cat([torch.arange(starts[g], starts[g + 1]) for g in mine])
            local = engine.rollout([problems[g] for g in mine], [counts[g] for g in mine], temperatures, top_p,
                                   noise=noise[rows], max_rows=max_rows, intervention=intervention)
            rewards, faults = score([problems[mine[g]] for g in local.group.tolist()], local.texts)
            local.rewards = torch.tensor(rewards, dtype=torch.float32)
        else:
            faults = []
        parts = self.all_gather_objects((mine, None if local is None else _portable(local), faults))
        return gather_batch(parts, problems, counts, engine), [f for _, _, fs in parts for f in fs]


def _portable(batch: RolloutBatch) -> dict:
    """What a rank sends of its rows (problems and prompts every rank has already)."""
    return {k: getattr(batch, k) for k in ("group", "response_ids", "mask", "behaviour_logp", "old_logp", "entropy",
                                           "texts", "rewards")}


def gather_batch(parts, problems, counts, engine) -> RolloutBatch:
    """The batch of all ``problems`` from the ranks' ``(groups, rows, faults)`` parts."""
    pad = engine.pad
    pieces = {}  # group -> (part, row indices)
    for groups, rows, _ in parts:
        if rows is None:
            continue
        for local_g, g in enumerate(groups):
            pieces[g] = (rows, (rows["group"] == local_g).nonzero().squeeze(-1))
    width = max(p[0]["response_ids"].shape[1] for p in pieces.values())

    def take(name, fill):
        out = []
        for g in range(len(problems)):
            rows, idx = pieces[g]
            t = rows[name][idx]
            out.append(torch.nn.functional.pad(t, (0, width - t.shape[1]), value=fill))
        return torch.cat(out)

    prompt_ids, prompt_mask = engine.encode_prompts(problems)
    return RolloutBatch(
        problems=list(problems), counts=list(counts),
        group=torch.repeat_interleave(torch.arange(len(problems)), torch.tensor(counts)),
        prompt_ids=prompt_ids.cpu(), prompt_mask=prompt_mask.cpu(), response_ids=take("response_ids", pad),
        mask=take("mask", 0.0), behaviour_logp=take("behaviour_logp", 0.0), old_logp=take("old_logp", 0.0),
        entropy=take("entropy", 0.0),
        texts=[pieces[g][0]["texts"][i] for g in range(len(problems)) for i in pieces[g][1].tolist()],
        rewards=torch.cat([pieces[g][0]["rewards"][pieces[g][1]] for g in range(len(problems))]))
