"""``amft``: AMFT, Aligning LLM Reasoners by Meta-Learning the Optimal Imitation-Exploration
Balance (He et al., arXiv:2508.06944).

**Caveat.** A notice recorded in the project's method notes says the paper is under investigation
for suspected academic misconduct and that its authors asked for withdrawal; that status was not
re-verified here. The authors' code (TSYJ-He/AMFT; the paper cites hlxtsyj/AMFT) is a skeleton:
``src/trainer/amft_trainer.py`` calls a placeholder rollout function (~L113) and marks the
meta-gradient call a placeholder (~L130). Only the controller
(``src/controller/adaptive_weight_controller.py``) and the defaults
(``configs/training/amft_params.yaml``) are real; this module implements the equations with them.

**Loss.** L = (1 − μ)·L_RL + μ·L_SFT, as the authors' ``src/trainer/amft_trainer.py`` (~L115–145:
``total_loss = (1 - mu) * rl_loss + mu * sft_loss``) with ``src/trainer/ppo_loss.py``: each term is
its own token mean (here: each aggregated over its own rows with the run's ``loss_agg_mode``,
``token-mean`` in the recipe). Each step, up to ``per_problem`` teacher solutions per problem enter as
demonstration rows (``DEMO``, outside every group, as ``sft`` adds them).

- L_RL is the recipe's objectives on the on-policy and prefix rows, aggregated over those rows
  with the run's ``loss_agg_mode``: the PPO surrogate plus the entropy bonus (−0.01·mean H: the
  code's ``rl_loss = masked_policy_loss − entropy_coeff·masked_entropy``, so the bonus covers
  the policy's rows only and is scaled by 1 − μ with them). ``rl_weight`` returns 1 − μ, which
  scales the policy term and the regularizers on those rows.
- L_SFT is −log π_θ of the demonstration tokens, aggregated over the demonstration rows alone
  (``separate_term``: the code's ``F.cross_entropy`` mean over the SFT batch's tokens);
  ``row_loss`` gives μ·(−log π_θ).

So the imitation gradient has weight μ whatever the number of rollouts per demonstration (with
both terms pooled over one token count, 8 rollouts per demonstration would shrink it ~8×).

**The controller** (``AdaptiveWeightController.update_mu``), run in ``augment`` (after the
advantages, before the update, so θ is still the rollout policy):

    μ ← clip( μ + η_meta·g_meta + η_ent·(H* − H), μ_min, μ_max )
    g_meta = −lr · ⟨∇L_val, ∇L_SFT − ∇L_RL⟩          (every ``meta_update_freq`` steps, else 0)

- As in the code, the update runs every step with g_meta = 0 except on meta steps (steps 1, 21,
  41, …: the code's ``step % meta_update_freq == 0`` counting from 0), and the step's loss uses
  the updated μ. ``entropy_update: meta_steps`` applies the entropy term on meta steps only.
- H = the mean token entropy of this step's rollouts (on-policy and prefix rows; the code's
  ``policy_entropy`` of the PPO loss). H* (``target_entropy``; None: measured) is, as the code's
  ``_calculate_target_entropy`` after its SFT warm-up, the policy's mean token entropy on
  demonstration data before RL: here on the first step's demonstration rows (response tokens),
  where the policy is still the testbed's warm start, itself a supervised warm-up.
- The three gradients are taken with the policy model on the trainable parameters, at θ, of
  the two terms exactly as the update optimises them (``ctx.loss``, ``UpdateLoss``: the recipe's
  objectives and aggregation): L_RL = the policy term and the regularizers (entropy bonus
  included) over the on-policy/prefix rows, without the 1 − μ; L_SFT = the demonstration rows'
  NLL, without the μ; L_val = token-mean NLL of the teacher solutions of a held-out validation set
  (the code's cross-entropy on a validation loader). Each is computed once over all its rows from
  a pass without a graph, then back-propagated in parts of 64 rows (the micro-batched update's
  two passes), so statistics over the rows are those of the update. The validation set is
  ``val_problems`` (8) problems drawn from the curriculum once before the first step
  (``before_training``) with one teacher solution each, kept as checkpointed state; it is
  re-scored on every meta step (its tokens count as ``tokens/teacher``). Without one (a run not
  started through ``Trainer.run``) g_meta is 0; a non-finite loss of the three skips the meta
  term of that step (``guide/amft_meta_nonfinite``).
- lr is the policy learning rate of the look-ahead θ' = θ − lr·∇L(μ); it cannot be read from the
  run, so it is the parameter ``policy_lr`` (5e-5, the testbed's ``train.lr``): set it to yours.

**Sign.** For θ'(μ) = θ − lr·((1 − μ)∇L_RL + μ∇L_SFT), dL_val(θ')/dμ = −lr·⟨∇L_val, ∇L_SFT −
∇L_RL⟩ = g_meta to first order, so the published update μ + η·g_meta moves μ *up* the validation
loss. ``meta_direction: published`` (default) follows the equation as recorded for the paper
and the code (``mu += meta_lr * meta_gradient``); ``descent`` uses μ − η·g_meta, which lowers the
look-ahead validation loss.

**Scale.** With the defaults η_meta = 1e-4 and lr = 5e-5 the meta term moves μ by 5e-9·⟨·,·⟩ per
meta step, and η_ent·(H* − H) by ~1e-4 per step: μ stays near μ₀ = 0.8 (the yaml's
``initial_mu``; the class default is 0.5), i.e. the run is mostly imitation.

State: μ, H*, the validation set. Metrics: ``guide/amft_mu``, ``guide/amft_entropy``,
``guide/amft_target_entropy``, on meta steps ``guide/amft_g_meta``, ``guide/amft_dot_val_sft``,
``guide/amft_dot_val_rl``.
"""
from __future__ import annotations

import math

import torch

from explorl.batch import DEMO
from explorl.explore.acted import Acted, AnyOf
from explorl.explore.base import Guidance
from explorl.explore.guidance.demos import teacher_solutions
from explorl.explore.guidance.sft import demonstrations, nll
from explorl.explore.objective.aggregate import aggregate
from explorl.registry import register


def update_mu(mu: float, g_meta: float, h_target: float | None, h_policy: float, meta_lr: float,
              entropy_lr: float, mu_min: float, mu_max: float, direction: float = 1.0) -> float:
    """clip(μ + direction·η_meta·g_meta + η_ent·(H* − H), μ_min, μ_max); no entropy term without H*."""
    step = direction * meta_lr * g_meta + (entropy_lr * (h_target - h_policy) if h_target is not None else 0.0)
    return float(min(max(mu + step, mu_min), mu_max))


def gradients(params, loss_fn) -> list[torch.Tensor]:
    """∇ of ``loss_fn()`` with respect to ``params`` (zeros for parameters it does not use)."""
    grads = torch.autograd.grad(loss_fn(), params, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g.detach() for p, g in zip(params, grads)]


def dot(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return float(sum((x.double() * y.double()).sum() for x, y in zip(a, b)))


def meta_gradient_of(g_val, g_sft, g_rl, lr: float) -> tuple[float, float, float]:
    """g_meta = −lr·⟨∇L_val, ∇L_SFT − ∇L_RL⟩ from the three gradients; also the two inner products."""
    d_sft, d_rl = dot(g_val, g_sft), dot(g_val, g_rl)
    return -lr * (d_sft - d_rl), d_sft, d_rl


def meta_gradient(params, val_loss, sft_loss, rl_loss, lr: float) -> tuple[float, float, float]:
    """``meta_gradient_of`` the gradients of three loss closures."""
    return meta_gradient_of(gradients(params, val_loss), gradients(params, sft_loss), gradients(params, rl_loss), lr)


def token_mean_nll(ctx) -> torch.Tensor:
    return aggregate(nll(ctx), ctx.mask, "token-mean")


@register("guidance", "amft", paper="AMFT, arXiv:2508.06944 (withdrawal notice not re-verified); code TSYJ-He/AMFT "
                                     "src/controller/adaptive_weight_controller.py (trainer is a skeleton)")
class AMFT(Guidance):
    engaged_when = (AnyOf((Acted("guide/amft_mu_shift", ">=", 0.01, reduce="max", what="mu moves >= 0.01 from mu0"),
                           Acted("guide/amft_demo_rows", ">", 0, reduce="sum", what="demo rows > 0"))),)
    handles = frozenset({DEMO})
    separate_term = True
    state_keys = ("mu", "target", "val_set")

    def __init__(self, teachers: list | None = None, per_problem: int = 1, mu: float = 0.8, meta_lr: float = 1e-4,
                 entropy_lr: float = 5e-4, mu_min: float = 0.05, mu_max: float = 0.95, meta_update_freq: int = 20,
                 target_entropy: float | None = None, policy_lr: float = 5e-5, val_problems: int = 8,
                 entropy_update: str = "every_step", meta_direction: str = "published"):
        if entropy_update not in ("every_step", "meta_steps"):
            raise ValueError(f"guidance amft: entropy_update must be every_step or meta_steps, got {entropy_update!r}")
        if meta_direction not in ("published", "descent"):
            raise ValueError(f"guidance amft: meta_direction must be published or descent, got {meta_direction!r}")
        if not 0 <= mu_min <= mu <= mu_max <= 1:
            raise ValueError("guidance amft: need 0 <= mu_min <= mu <= mu_max <= 1")
        if per_problem < 1 or meta_update_freq < 1 or val_problems < 0:
            raise ValueError("guidance amft: need per_problem >= 1, meta_update_freq >= 1, val_problems >= 0")
        self.teacher_names, self.per_problem = teachers, per_problem
        self.mu, self.mu_min, self.mu_max = float(mu), mu_min, mu_max
        self.mu0 = float(mu)  # where μ starts (a parameter, not state): how far it moved shows AMFT acted
        self.meta_lr, self.entropy_lr = meta_lr, entropy_lr
        self.meta_update_freq, self.policy_lr, self.val_problems = meta_update_freq, policy_lr, val_problems
        self.entropy_update, self.direction = entropy_update, 1.0 if meta_direction == "published" else -1.0
        self.target: float | None = target_entropy
        self.val_set: list = []
        self._engine, self._loss, self._step, self._val_batch = None, None, 0, None

    def is_meta_step(self, step: int) -> bool:
        return (step - 1) % self.meta_update_freq == 0

    def before_training(self, ctx) -> dict:
        """Draw the validation set: ``val_problems`` problems with a teacher solution each."""
        self.val_set = []
        for _ in range(20):
            if len(self.val_set) >= self.val_problems:
                break
            for problem in ctx.draw(self.val_problems - len(self.val_set)):
                found = teacher_solutions(ctx, problem, self.teacher_names, 1)
                if found:
                    self.val_set.append((problem, found[0][1]))
        return {"validation problems": float(len(self.val_set))} if self.val_problems else {}

    def guide(self, batch, ctx):
        self._engine, self._loss, self._step, self._val_batch = ctx.engine, ctx.loss, ctx.step, None
        batch, added = demonstrations(batch, ctx, self.teacher_names, self.per_problem)
        if self.is_meta_step(ctx.step) and self.val_set:
            problems = [p for p, _ in self.val_set]
            self._val_batch = ctx.score(problems, [1] * len(problems), texts=[t for _, t in self.val_set], kind=DEMO)
        return batch, {"guide/amft_demo_rows": float(added)}

    def rl_weight(self, step: int) -> float:
        return 1.0 - self.mu

    def row_loss(self, ctx):
        return self.mu * nll(ctx), {}

    def augment(self, batch, sampler):
        kinds = batch.row_kind
        own = batch.own_rows.nonzero().squeeze(-1)
        demo = (kinds == DEMO).nonzero().squeeze(-1)
        if self.target is None and len(demo):
            self.target = _mean(batch.entropy[demo], batch.mask[demo])
        h = _mean(batch.entropy[own], batch.mask[own]) if len(own) else None
        metrics, g_meta = {}, 0.0
        meta = self.is_meta_step(self._step)
        if meta and self._val_batch is not None and len(demo) and len(own) and self._engine is not None:
            g_meta, d_sft, d_rl = self.meta_gradient(batch, own, demo, self._val_batch)
            if math.isfinite(g_meta):
                metrics.update({"guide/amft_g_meta": g_meta, "guide/amft_dot_val_sft": d_sft,
                                "guide/amft_dot_val_rl": d_rl})
            else:
                g_meta = 0.0
                metrics["guide/amft_meta_nonfinite"] = 1.0
        entropy_term = self.entropy_update == "every_step" or meta
        if h is not None:
            self.mu = update_mu(self.mu, g_meta, self.target if entropy_term else None, h, self.meta_lr,
                                self.entropy_lr, self.mu_min, self.mu_max, self.direction)
            metrics["guide/amft_entropy"] = h
        self._val_batch = None
        metrics["guide/amft_mu"] = self.mu
        metrics["guide/amft_mu_shift"] = abs(self.mu - self.mu0)
        if self.target is not None:
            metrics["guide/amft_target_entropy"] = self.target
        return batch, metrics

    def meta_gradient(self, batch, own, demo, val_batch) -> tuple[float, float, float]:
        """g_meta and the inner products, from the gradients of L_val, L_SFT and L_RL as the update
        computes the last two (``UpdateLoss``); NaN when a loss is not finite."""
        if self._loss is None:
            raise RuntimeError("guidance amft: the meta-gradient needs the update's loss (GuideContext.loss)")
        engine, loss = self._engine, self._loss
        params = [p for p in engine.model.parameters() if p.requires_grad]
        values, grads = [], []
        for rows_batch, rows, value in ((val_batch, torch.arange(val_batch.size), token_mean_nll),
                                        (batch, demo, lambda ctx: loss.aggregate(nll(ctx), ctx.mask)),
                                        (batch, own, loss.rl)):
            v, g = loss.gradient(engine, rows_batch, rows, value, params, self._step)
            values.append(v)
            grads.append(g)
        if not all(math.isfinite(v) for v in values):
            return float("nan"), float("nan"), float("nan")
        return meta_gradient_of(*grads, self.policy_lr)


def _mean(values: torch.Tensor, mask: torch.Tensor) -> float:
    return float((values * mask).sum() / mask.sum().clamp_min(1.0))
