"""The optimisation of one rollout batch: PPO epochs over minibatches of whole groups, each
minibatch one optimizer step (in micro-batches of ``train.micro_batch_size`` rollouts when set)."""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, replace

import torch

from explorl.batch import ON_POLICY, PREFIX, ROW_KINDS
from explorl.errors import RunStopped
from explorl.explore.base import LossContext
from explorl.explore.objective.aggregate import aggregate
from explorl.explore.objective.ppo_clip import masked_mean
from explorl.policy.sampling import token_logp_entropy  # noqa: F401  (read from here by callers and tests)
from explorl.policy.soft import response_logp_entropy
from explorl.train.optim import stepped_parameters


@torch.no_grad()
def reference_logp(ref_engine, batch) -> torch.Tensor:
    logits = ref_engine.response_logits(batch)
    return response_logp_entropy(logits, batch, None, False)[0].cpu()


def reference_kl(batch, ref_logp: torch.Tensor) -> float:
    """``ref/kl``: the mean k3 estimate of KL(π_old ‖ π_ref) over the response tokens the policy
    sampled this step (its own rows), before the update."""
    from explorl.explore.objective.kl import k3
    mask = batch.mask * batch.own_rows.unsqueeze(1)
    return masked_mean(k3(batch.old_logp, ref_logp), mask)


@torch.no_grad()
def recompute_old_logp(engine, batch, chunk: int | None = None) -> torch.Tensor:
    """π_old of every response token from a forward of the training model (``train.recompute_old_logp``),
    in parts of ``chunk`` rows; every rank computes the whole batch (under FSDP each forward is
    a collective, so all ranks run the same parts)."""
    was_training = engine.model.training
    engine.model.eval()
    rows = torch.arange(batch.size)
    out = []
    for part in micro_batches(rows, chunk):
        logits = engine.response_logits(batch, part)
        out.append(response_logp_entropy(logits, batch, part, False)[0].float().cpu())
    engine.model.train(was_training)
    return torch.cat(out) * batch.mask


def minibatch_rows(batch, minibatches: int, generator: torch.Generator) -> list[torch.Tensor]:
    """Split whole groups into ``minibatches`` shuffled parts (so each prompt is encoded once)."""
    order = torch.randperm(len(batch.counts), generator=generator)
    parts = torch.tensor_split(order, minibatches)
    return [torch.isin(batch.group, part).nonzero().squeeze(-1) for part in parts if len(part)]


@dataclass
class LossPart:
    """A per-token loss ``(R, L)`` aggregated (``train.loss_agg_mode``) over the rows ``rows``
    (``(R,)`` bool) alone, ``None``: over every row. The loss is the sum of the parts' aggregates."""

    loss: torch.Tensor
    rows: torch.Tensor | None = None


def combine_terms(objectives, ctx: LossContext, guidance=()) -> tuple[list[LossPart], dict]:
    """The loss of one minibatch, as parts to aggregate apart and add (``aggregate_parts``).

    π_old is first replaced where a guidance method gives a ``ratio_anchor``. On on-policy and
    prefix rows: the policy term times the product of every ``"token_mask"`` weight (detached),
    plus the regularizers, all times the product of the guidance methods' ``rl_weight`` (1
    leaves the regularizers as they are); on the rows of a kind a guidance method ``handles``
    (teacher, replayed, demonstration rows), that method's ``row_loss``. A method with
    ``separate_term`` makes its rows a part of their own (no regularizer on them); every other
    row is in the first part, with the regularizers. A row whose kind no term covers is an
    error, never a silent zero."""
    for method in guidance:
        anchor = method.ratio_anchor(ctx)
        if anchor is not None:
            ctx = replace(ctx, old_logp=anchor)
    kind = ctx.kind if ctx.kind is not None else torch.zeros(ctx.logp.shape[0], dtype=torch.long)
    kind = kind.to(ctx.logp.device)
    on_policy = (kind == ON_POLICY) | (kind == PREFIX)
    covered, apart = on_policy.clone(), torch.zeros_like(on_policy)
    extra, metrics, parts = torch.zeros_like(ctx.logp), {}, []
    for method in guidance:
        if not method.handles:
            continue
        rows = torch.isin(kind, torch.tensor(sorted(method.handles), device=kind.device))
        if rows.any():
            term, m = method.row_loss(ctx)
            metrics.update(m)
            if method.separate_term:
                parts.append(LossPart(term * rows[:, None].to(term.dtype), rows))
                apart |= rows
            else:
                extra = extra + term * rows[:, None].to(term.dtype)
            covered |= rows
    if not covered.all():
        missing = sorted({ROW_KINDS[k] for k in kind[~covered].tolist()})
        raise ValueError(f"the batch holds {', '.join(missing)} rows but no guidance method in the recipe defines "
                         f"their loss")
    rl_weight = 1.0
    for method in guidance:
        rl_weight *= method.rl_weight(ctx.step)
    loss, m = _policy_and_regularizers(objectives, ctx, on_policy[:, None].to(ctx.logp.dtype) * rl_weight,
                                       on_policy, rl_weight)
    metrics.update(m)
    main = LossPart(loss + extra, ~apart if apart.any() else None)
    return [main, *parts], metrics


def aggregate_parts(parts: list[LossPart], mask: torch.Tensor, mode: str, max_length: int | None) -> torch.Tensor:
    """Σ over ``parts`` of the aggregate of each part's loss over its own rows (a part with no
    row adds nothing)."""
    total = None
    for part in parts:
        if part.rows is None:
            value = aggregate(part.loss, mask, mode, max_length)
        else:
            idx = part.rows.nonzero().squeeze(-1)
            if not len(idx):
                continue
            value = aggregate(part.loss[idx], mask[idx], mode, max_length)
        total = value if total is None else total + value
    return total


def _policy_and_regularizers(objectives, ctx: LossContext, policy_rows: torch.Tensor, rl_rows: torch.Tensor,
                             rl_weight: float) -> tuple[torch.Tensor, dict]:
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
    if rl_weight != 1.0:  # the regularizers on RL rows are part of L_RL
        regular = regular * torch.where(rl_rows, rl_weight, 1.0)[:, None].to(regular.dtype)
    if policy is None:
        return regular, metrics
    return regular + (policy if weight is None else policy * weight) * policy_rows, metrics


def loss_context(batch, rows, logp, entropy, logits, step: int, needs, ref_logp=None, extras=None) -> LossContext:
    """The loss context of ``batch``'s ``rows`` given the current policy's values on them."""
    dev = logp.device
    if batch.advantages is None and batch.token_advantages is None:  # e.g. a validation batch
        adv = torch.zeros_like(batch.mask)
    else:
        adv = batch.per_token_advantages()
    extras = {**(extras or {}), "soft": None if batch.soft is None else batch.soft.rows(rows)}
    return LossContext(logp=logp, old_logp=batch.old_logp[rows].to(dev),
                       behaviour_logp=batch.behaviour_logp[rows].to(dev), advantages=adv[rows].to(dev),
                       mask=batch.grad_mask[rows].to(dev), step=step, entropy=entropy,
                       ref_logp=None if ref_logp is None else ref_logp[rows].to(dev),
                       logits=logits if "logits" in needs else None, rows=rows, extras=extras,
                       kind=batch.row_kind[rows])


@dataclass
class UpdateLoss:
    """The update's loss as a plug-in can evaluate it outside ``optimise`` (AMFT's meta-gradient
    takes the gradients of its two terms): the recipe's objectives, the aggregation, what the
    objectives need, and the reference policy's engine when they need its log-probs."""

    objectives: list
    loss_agg_mode: str
    max_length: int | None
    needs: set
    reference: object = None

    def aggregate(self, per_token: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return aggregate(per_token, mask, self.loss_agg_mode, self.max_length)

    def rl(self, ctx: LossContext) -> torch.Tensor:
        """L_RL of ``ctx`` (on-policy and prefix rows): the policy term and the regularizers, aggregated."""
        parts, _ = combine_terms(self.objectives, ctx)
        return aggregate_parts(parts, ctx.mask, self.loss_agg_mode, self.max_length)

    def gradient(self, engine, batch, rows: torch.Tensor, value, params, step: int = 0,
                 chunk: int | None = 64) -> tuple[float, list[torch.Tensor]]:
        """``value(ctx)`` over ``batch``'s ``rows`` and its gradient with respect to ``params``
        (zeros for those it does not reach; no gradient when it is not finite). The value is
        computed once over all the rows, from the policy's log-probs of a pass without a graph
        in parts of ``chunk`` rows; a second pass back-propagates (as ``train.micro_batch_size``)."""
        ref = reference_logp(self.reference, batch) if "ref_logp" in self.needs and self.reference else None
        extras = {"loss_agg_mode": self.loss_agg_mode, "max_length": self.max_length,
                  "generator": torch.Generator().manual_seed(step)}

        def loss_of(logp, entropy, logits):
            ctx = loss_context(batch, rows, logp, entropy, logits, step, self.needs, ref, extras)
            return value(ctx), ctx.mask

        saved = [p.grad for p in params]
        for p in params:
            p.grad = None
        with torch.enable_grad():
            loss, _, _ = _micro_batched_backward(batch, engine, micro_batches(rows, chunk), self.needs,
                                                 loss_of)
        grads = [torch.zeros_like(p) if p.grad is None else p.grad.detach().clone() for p in params]
        for p, g in zip(params, saved):
            p.grad = g
        return float(loss.detach()), grads


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


def micro_batches(rows: torch.Tensor, size: int | None) -> list[torch.Tensor]:
    """``rows`` in consecutive parts of at most ``size`` (``train.micro_batch_size``). A part may
    split a group: ``engine.response_logits`` encodes the prompts of whatever rows it is given."""
    return [rows] if not size or size >= len(rows) else list(torch.split(rows, size))


def optimise(batch, engine, plugins, optimizer, cfg, step: int, needs: set, ref_logp=None,
             guard: NonFiniteGuard | None = None, dp=None) -> dict:
    """Run ``ppo_epochs`` passes over ``batch``; returns the mean of every metric. A minibatch
    whose loss or gradient norm is not finite is not applied (``loss/nonfinite_steps``).

    With ``train.micro_batch_size`` smaller than a minibatch, each minibatch takes two passes
    (``_micro_batched_backward``) and its update equals the one-pass update: every objective
    still sees the whole minibatch once, so statistics over its tokens (Clip-Cov/KL-Cov
    covariances, the entropy quantile, Lp-Reg's low-probability set, the aggregation's token or
    sequence count) and the state of stateful terms are those of the minibatch, not of a part.

    Under data parallelism (``dp`` enabled, ``explorl.train.parallel``) every minibatch takes
    the same two passes, each rank over its share of the rows: pass 1's log-probs are gathered
    from all ranks, so the loss (and its normalisation) is the whole minibatch's on every rank,
    and the ranks' pass-2 gradients are summed before clipping: the update of one process.
    """
    train = cfg.train
    guard = guard or NonFiniteGuard(train.max_nonfinite_steps)
    model = engine.model
    model.train()
    generator = torch.Generator().manual_seed(cfg.seed * 7919 + step)
    totals, counts = defaultdict(float), defaultdict(int)
    params = stepped_parameters(optimizer)
    skipped = 0
    for epoch in range(train.ppo_epochs):
        for rows in minibatch_rows(batch, train.minibatches, generator):
            def loss_of(logp, entropy, logits, rows=rows, epoch=epoch):
                ctx = loss_context(batch, rows, logp, entropy, logits, step, needs, ref_logp,
                                   {"epoch": epoch, "generator": generator, "loss_agg_mode": train.loss_agg_mode,
                                    "max_length": train.max_new_tokens})
                parts, metrics = combine_terms(plugins.objectives, ctx, plugins.guidance)
                _accumulate(totals, counts, metrics)
                return aggregate_parts(parts, ctx.mask, train.loss_agg_mode, train.max_new_tokens), ctx.mask

            optimizer.zero_grad(set_to_none=True)
            if dp is not None and dp.enabled:
                own, offset = dp.split_rows(rows)
                loss, mask, entropy = _micro_batched_backward(batch, engine, micro_batches(own, train.micro_batch_size),
                                                              needs, loss_of, dp=dp, offset=offset, rows=rows,
                                                              micro_batch_size=train.micro_batch_size)
                if torch.isfinite(loss) and not dp.sharded:  # FSDP reduce-scatters in the backward itself
                    dp.all_reduce_grads(params)
            elif len(parts := micro_batches(rows, train.micro_batch_size)) > 1:
                loss, mask, entropy = _micro_batched_backward(batch, engine, parts, needs, loss_of)
            else:
                logits = engine.response_logits(batch, rows)
                logp, entropy = response_logp_entropy(logits, batch, rows, "entropy" in needs)
                loss, mask = loss_of(logp, entropy, logits)
                if torch.isfinite(loss):
                    loss.backward()
            if not torch.isfinite(loss):
                optimizer.zero_grad(set_to_none=True)
                skipped += 1
                guard.skip("loss", step)
                _accumulate(totals, counts, {"loss/total": loss.item()})
                continue
            grad_norm = torch.nn.utils.clip_grad_norm_(params, train.max_grad_norm)
            if hasattr(grad_norm, "full_tensor"):  # FSDP: the norm of sharded gradients is a DTensor
                grad_norm = grad_norm.full_tensor()
            if not torch.isfinite(grad_norm):
                optimizer.zero_grad(set_to_none=True)
                skipped += 1
                guard.skip("gradient norm", step)
            else:
                optimizer.step()
                guard.ok()
            extra = {"loss/total": loss.item(), "loss/grad_norm": float(grad_norm)}
            if entropy is not None:
                extra["entropy/train"] = masked_mean(entropy.detach(), mask)
            _accumulate(totals, counts, extra)
    model.eval()
    out = {k: totals[k] / counts[k] for k in totals}
    out["loss/nonfinite_steps"] = skipped
    return out


def _micro_batched_backward(batch, engine, parts, needs, loss_of, dp=None, offset: int = 0, rows=None,
                            micro_batch_size=None):
    """The gradient of one minibatch's loss, accumulated over its micro-batches ``parts``.

    Pass 1 runs every part without a graph and keeps only its per-token log-probs (entropies,
    and logits where an objective asks for them); the loss is computed once over the whole
    minibatch from those, as leaves, and back-propagated to them. Pass 2 runs each part again
    with a graph and back-propagates Σ ∂loss/∂logp_t · logp_t (and the same for the entropy
    and logits): by the chain rule the model receives exactly the one-pass gradient. The
    price is one extra forward without a graph per minibatch. Each part's random state
    (LoRA dropout) is replayed in pass 2, so both passes compute the same values.
    With ``dp``, ``parts`` are this rank's share of the minibatch ``rows`` (starting at
    ``offset``): pass 1's values are gathered from every rank before the loss, and pass 2
    back-propagates this rank's share only. Under FSDP (``dp.sharded``) every forward and
    backward is a collective: a rank with fewer parts than another runs extra parts of one row
    whose values are dropped and whose gradient is zero, so all ranks run as many.
    Returns ``(loss, mask, entropy)`` as the one-pass path has them.
    """
    want_entropy, want_logits = "entropy" in needs, "logits" in needs
    device = engine.device
    real = len(parts)
    shares = torch.tensor_split(rows, dp.world) if dp is not None else None  # as dp.split_rows cuts them
    if dp is not None and dp.sharded:
        most = max(len(micro_batches(p, micro_batch_size)) if len(p) else 0 for p in shares)
        parts = list(parts) + [rows[:1]] * (most - real)  # lockstep padding (see above)
    states, logps, entropies, all_logits = [], [], [], []
    with torch.no_grad():
        for i, part in enumerate(parts):
            states.append(_rng_state(device))
            if i >= real:
                engine.response_logits(batch, part)  # the collectives only
                continue
            logits = engine.response_logits(batch, part)
            logp, entropy = response_logp_entropy(logits, batch, part, want_entropy)
            logps.append(logp)
            entropies.append(entropy)
            all_logits.append(logits if want_logits else None)
    def joined(values):
        local = torch.cat(values) if values else None
        return local if dp is None else dp.gather_rows(local, [len(p) for p in shares])

    leaves = {"logp": joined(logps).requires_grad_(True),
              "entropy": joined(entropies).requires_grad_(True) if want_entropy else None,
              "logits": joined(all_logits).requires_grad_(True) if want_logits else None}
    loss, mask = loss_of(leaves["logp"], leaves["entropy"], leaves["logits"])
    if not torch.isfinite(loss):
        return loss, mask, leaves["entropy"]
    loss.backward()
    grads = {k: v.grad for k, v in leaves.items() if v is not None and v.grad is not None}
    for part in parts[real:] if grads else ():  # lockstep padding: a backward with zero gradient
        logits = engine.response_logits(batch, part)
        (logits.float().sum() * 0.0).backward()
    parts = parts[:real]
    start = offset
    for part, state in zip(parts, states) if grads else ():
        span = slice(start, start + len(part))
        start += len(part)
        _set_rng_state(state, device)
        logits = engine.response_logits(batch, part)
        logp, entropy = response_logp_entropy(logits, batch, part, "entropy" in grads)
        values = {"logp": logp, "entropy": entropy, "logits": logits.float()}
        sum((values[k] * g[span].float()).sum() for k, g in grads.items()).backward()
    return loss, mask, leaves["entropy"]


def _rng_state(device: torch.device):
    return torch.get_rng_state(), (torch.cuda.get_rng_state(device) if device.type == "cuda" else None)


def _set_rng_state(state, device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def _accumulate(totals, counts, metrics):
    """Sum every metric, NaN and infinities included: a diverged run must look diverged."""
    for key, value in metrics.items():
        totals[key] += value
        counts[key] += 1
