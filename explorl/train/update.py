"""The optimisation of one rollout batch: PPO epochs over minibatches of whole groups."""
from __future__ import annotations

from collections import defaultdict

import torch

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


def optimise(batch, engine, plugins, optimizer, cfg, step: int, needs: set, ref_logp=None) -> dict:
    """Run ``ppo_epochs`` passes over ``batch``; returns the mean of every metric."""
    train = cfg.train
    model = engine.model
    model.train()
    generator = torch.Generator().manual_seed(cfg.seed * 7919 + step)
    totals, counts = defaultdict(float), defaultdict(int)
    adv_tokens = batch.advantages[:, None].expand_as(batch.mask)
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
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), train.max_grad_norm)
            optimizer.step()
            _accumulate(totals, counts, {"loss/total": loss.item(), "loss/grad_norm": float(grad_norm),
                                         "entropy/train": float("nan") if entropy is None
                                         else masked_mean(entropy.detach(), ctx.mask)})
    model.eval()
    return {k: totals[k] / counts[k] for k in totals}


def _accumulate(totals, counts, metrics):
    for key, value in metrics.items():
        if value == value:  # skip NaN
            totals[key] += value
            counts[key] += 1
