"""The optimisation of one rollout batch: PPO epochs over minibatches of whole groups."""
from __future__ import annotations

from collections import defaultdict

import torch

from explorl.errors import RunStopped
from explorl.explore.base import LossContext
from explorl.explore.objective.aggregate import aggregate
from explorl.explore.objective.ppo_clip import masked_mean


def token_logp_entropy(logits: torch.Tensor, ids: torch.Tensor, want_entropy: bool):
    logp_all = torch.log_softmax(logits.float(), dim=-1)
    logp = logp_all.gather(-1, ids[..., None]).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1) if want_entropy else None
    return logp, entropy


@torch.no_grad()
def reference_logp(ref_engine, batch) -> torch.Tensor:
    logits = ref_engine.response_logits(batch)
    return token_logp_entropy(logits, batch.response_ids.to(logits.device), False)[0].cpu()


def minibatch_rows(batch, minibatches: int, generator: torch.Generator) -> list[torch.Tensor]:
    """Split whole groups into ``minibatches`` shuffled parts (so each prompt is encoded once)."""
    order = torch.randperm(len(batch.counts), generator=generator)
    parts = torch.tensor_split(order, minibatches)
    return [torch.isin(batch.group, part).nonzero().squeeze(-1) for part in parts if len(part)]


def combine_terms(objectives, ctx: LossContext) -> tuple[torch.Tensor, dict]:
    """The per-token loss ``(R, L)`` of one minibatch: the policy term times the product of
    every ``"token_mask"`` weight (detached), plus the sum of the regularizers."""
    policy, regular, weight, metrics = None, torch.zeros_like(ctx.logp), None, {}
    for objective in objectives:
        term, m = objective.term(ctx)
        metrics.update(m)
        if objective.kind == "policy":
            policy = term if policy is None else policy + term
        elif objective.kind == "token_mask":
            term = term.detach().to(ctx.logp.dtype)
            weight = term if weight is None else weight * term
        else:
            regular = regular + term
    if policy is None:
        return regular, metrics
    return regular + (policy if weight is None else policy * weight), metrics


class NonFiniteTraining(RunStopped):
    """Too many optimizer steps in a row had a non-finite loss or gradient norm."""


class NonFiniteGuard:
    """Skips an optimizer step whose loss or gradient norm is not finite, counts it, and stops
    the run once ``limit`` are skipped in a row (the count survives a resume)."""

    def __init__(self, limit: int, log=print):
        self.limit, self.log = limit, log
        self.in_a_row = 0

    def skip(self, what: str, step: int) -> None:
        self.in_a_row += 1
        self.log(f"step {step}: skipped an optimizer step: the {what} is not finite "
                 f"({self.in_a_row} in a row, the run stops at train.max_nonfinite_steps={self.limit})")
        if self.in_a_row >= self.limit:
            raise NonFiniteTraining(
                f"{self.in_a_row} optimizer steps in a row had a non-finite {what} (last at step {step}); the "
                f"run stops here and its last checkpoint holds finite weights. Lower train.lr or "
                f"train.max_grad_norm, or check the loss terms and the rewards.")

    def ok(self) -> None:
        self.in_a_row = 0


def optimise(batch, engine, plugins, optimizer, cfg, step: int, needs: set, ref_logp=None,
             guard: NonFiniteGuard | None = None) -> dict:
    """Run ``ppo_epochs`` passes over ``batch``; returns the mean of every metric. A minibatch
    whose loss or gradient norm is not finite is not applied (``loss/nonfinite_steps``)."""
    train = cfg.train
    guard = guard or NonFiniteGuard(train.max_nonfinite_steps)
    model = engine.model
    model.train()
    generator = torch.Generator().manual_seed(cfg.seed * 7919 + step)
    totals, counts = defaultdict(float), defaultdict(int)
    adv_tokens = batch.advantages[:, None].expand_as(batch.mask)
    skipped = 0
    for epoch in range(train.ppo_epochs):
        for rows in minibatch_rows(batch, train.minibatches, generator):
            logits = engine.response_logits(batch, rows)
            ids = batch.response_ids[rows].to(logits.device)
            logp, entropy = token_logp_entropy(logits, ids, "entropy" in needs)
            dev = logp.device
            ctx = LossContext(logp=logp, old_logp=batch.old_logp[rows].to(dev),
                              behaviour_logp=batch.behaviour_logp[rows].to(dev),
                              advantages=adv_tokens[rows].to(dev), mask=batch.mask[rows].to(dev), step=step,
                              entropy=entropy, ref_logp=None if ref_logp is None else ref_logp[rows].to(dev),
                              logits=logits if "logits" in needs else None, rows=rows,
                              extras={"epoch": epoch, "generator": generator})
            per_token, metrics = combine_terms(plugins.objectives, ctx)
            _accumulate(totals, counts, metrics)
            loss = aggregate(per_token, ctx.mask, train.loss_agg_mode, train.max_new_tokens)
            optimizer.zero_grad(set_to_none=True)
            if not torch.isfinite(loss):
                skipped += 1
                guard.skip("loss", step)
                _accumulate(totals, counts, {"loss/total": loss.item()})
                continue
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), train.max_grad_norm)
            if not torch.isfinite(grad_norm):
                optimizer.zero_grad(set_to_none=True)
                skipped += 1
                guard.skip("gradient norm", step)
            else:
                optimizer.step()
                guard.ok()
            extra = {"loss/total": loss.item(), "loss/grad_norm": float(grad_norm)}
            if entropy is not None:
                extra["entropy/train"] = masked_mean(entropy.detach(), ctx.mask)
            _accumulate(totals, counts, extra)
    model.eval()
    out = {k: totals[k] / counts[k] for k in totals}
    out["loss/nonfinite_steps"] = skipped
    return out


def _accumulate(totals, counts, metrics):
    """Sum every metric, NaN and infinities included: a diverged run must look diverged."""
    for key, value in metrics.items():
        totals[key] += value
        counts[key] += 1
