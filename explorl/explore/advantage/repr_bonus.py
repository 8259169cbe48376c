"""RepExp: an elliptical (leverage) bonus on the frozen base model's representations.

*Representation-Based Exploration for Language Models* (RepExp); official recipe
``recipe/rep_exp`` in volcengine/verl (``elliptical_reward_manager.py``, ``train_elliptical.sh``).

    h̄_i = mean over response tokens of the frozen initial model's last hidden state
    x_i = P h̄_i − mean_j P h̄_j      (P: sparse random projection to d'; centred within the group)
    b_i = x_iᵀ (λI + Σ_j x_j x_jᵀ)^{-1} x_i                      (leverage, λ = 0.01)
    r_i ← r_i + β b_i  (β = 0.01);   b = 0 for every rollout of a group with no correct one

Documented choices:

- **Where the bonus enters.** The paper adds β·b to the reward before GRPO normalises it.
  ``apply_to="reward"`` (default) does that as a shaper: A ← A + GRPO(r + βb) − GRPO(r), which
  equals GRPO(r + βb) when the estimator is GRPO with the same ``scale_by_std`` (and adds
  the same change to any other estimator). Note that a group whose rewards are all equal then
  gets its whole advantage from the normalised bonus. ``"advantage"`` adds β·b to the
  advantage directly.
- **Features.** The frozen model is the trainer's reference copy of the initial policy
  (``groups.extras["ref_engine"]``, hence ``needs = {"ref_model"}``), run under no_grad. The
  hidden states are those ``response_logits(..., return_hidden=True)`` returns: the final
  (normed) layer at the positions that predict each response token (the last prompt token and
  the response tokens but the last), averaged with the response mask; the paper averages
  the states at the response tokens themselves (``AutoModel``). Cast to float64.
- **Projection.** sklearn-style sparse random projection (density 1/sqrt(d); entries
  ±sqrt(1/(density·d')) with probability density/2 each), seeded by ``seed`` and fixed for
  the run. verl re-draws it on every call; ``redraw=True`` does so deterministically (seed +
  call count, checkpointed). d' = 32 (the MATH/GSM8K scripts; 128 for DAPO+AIME, config 512).
- The inverse is a direct solve of the d'×d' system (Sherman–Morrison gives the same);
  ``persist_covariance=False`` as in the script (no state across steps).
"""
from __future__ import annotations

import dataclasses

import torch

from explorl.explore.advantage.grpo import GRPO
from explorl.explore.acted import Acted
from explorl.explore.base import Advantage, Groups
from explorl.registry import register


@torch.no_grad()
def mean_response_hidden(engine, batch) -> torch.Tensor:
    """Mean last-layer hidden state over each response's tokens, ``(R, d)`` float64."""
    _, hidden = engine.response_logits(batch, return_hidden=True)
    hidden = hidden.double().cpu()
    mask = batch.mask.double()[..., None]
    return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)


def sparse_projection(d: int, d_out: int, generator: torch.Generator, density: float | None = None) -> torch.Tensor:
    """A ``(d, d_out)`` sparse random projection matrix (Achlioptas / Li et al.; sklearn's)."""
    density = density if density is not None else 1.0 / d ** 0.5
    u = torch.rand(d, d_out, generator=generator, dtype=torch.float64)
    signs = torch.where(u < density / 2, -1.0, torch.where(u < density, 1.0, 0.0)).double()
    return signs * (1.0 / (density * d_out)) ** 0.5


def leverage_bonus(x: torch.Tensor, ridge: float) -> torch.Tensor:
    """b_i = x_iᵀ(λI + Σ_j x_j x_jᵀ)^{-1} x_i for the rows of ``x`` centred on their mean."""
    x = (x - x.mean(0, keepdim=True)).double()
    sigma = ridge * torch.eye(x.shape[1], dtype=x.dtype) + x.T @ x
    return (x * torch.linalg.solve(sigma, x.T).T).sum(-1)


@register("advantage", "repr_bonus", paper="RepExp, representation-based exploration (verl recipe/rep_exp)")
class ReprBonus(Advantage):
    kind = "shaper"
    needs = frozenset({"ref_model"})
    state_keys = ("calls",)
    # the bonus is a leverage score (>= 0) and 0 outside groups with a correct rollout
    engaged_when = (Acted("adv/repr_bonus_mean", ">", 0, what="mean |bonus| > 0 on groups with a correct rollout"),)

    def __init__(self, proj_dim: int = 32, ridge: float = 0.01, bonus_coef: float = 0.01, apply_to: str = "reward",
                 scale_by_std: bool = True, seed: int = 0, redraw: bool = False):
        if apply_to not in ("reward", "advantage"):
            raise ValueError(f"advantage repr_bonus: apply_to must be 'reward' or 'advantage', got {apply_to!r}")
        if proj_dim < 1 or ridge <= 0:
            raise ValueError("advantage repr_bonus: proj_dim must be >= 1 and ridge > 0")
        self.proj_dim, self.ridge, self.beta, self.apply_to = proj_dim, ridge, bonus_coef, apply_to
        self.scale_by_std, self.seed, self.redraw = scale_by_std, seed, redraw
        self.calls = 0

    def bonus(self, features: torch.Tensor, group: torch.Tensor, correct_group: torch.Tensor) -> torch.Tensor:
        """Per-response bonus ``(R,)`` from features ``(R, d)``; 0 in groups without a correct one."""
        gen = torch.Generator().manual_seed(self.seed + (1_000_003 * self.calls if self.redraw else 0))
        x = features.double() @ sparse_projection(features.shape[1], self.proj_dim, gen)
        b = torch.zeros(features.shape[0], dtype=torch.float64)
        for g in torch.unique(group).tolist():
            rows = (group == g).nonzero().squeeze(-1)
            if bool(correct_group[g]) and len(rows) > 1:
                b[rows] = leverage_bonus(x[rows], self.ridge)
        return b

    def compute(self, groups: Groups, adv):
        batch, engine = groups.extras["batch"], groups.extras.get("ref_engine")
        if engine is None:
            raise ValueError("advantage repr_bonus: needs the frozen reference model (groups.extras['ref_engine'])")
        mask = groups.mask.float()
        correct_group = ((groups.rewards >= 1.0) & (mask > 0)).any(1)
        rows = self.bonus(mean_response_hidden(engine, batch), batch.group, correct_group)
        self.calls += 1
        b, _ = batch.to_groups(rows.float())
        b = b * mask
        if self.apply_to == "advantage":
            shaped = adv + self.beta * b
        else:
            grpo = GRPO(scale_by_std=self.scale_by_std)
            before, _ = grpo.compute(groups, None)
            after, _ = grpo.compute(dataclasses.replace(groups, rewards=groups.rewards + self.beta * b), None)
            shaped = adv + after - before
        return shaped, {"adv/repr_bonus_mean": float(b.sum() / mask.sum().clamp_min(1.0)),
                        "adv/repr_bonus_max": float(b.max()) if b.numel() else 0.0}
