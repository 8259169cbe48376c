"""``rl_plus``: RL-PLUS, hybrid-policy optimisation with multiple importance sampling and an
exploration-based advantage (arXiv:2508.00222).

Authors' code: YihongDong/RL-PLUS ``rl_plus/verl/verl/recipe/rlplus_core_alg.py::
compute_token_on_off_policy_loss`` with ``off_policy_strategy="RL-PLUS"``;
``exp_scripts/train_RL-PLUS.sh`` (the defaults). The code derives from LUFFY's (same
``prefix_mask`` / ``n_prefix`` machinery), and so does this method: the group layout is
``luffy``'s (``n_off`` teacher rows **added** to each group, in the group statistics, their tokens
counted as ``tokens/teacher`` and not in the policy's budget; see ``explorl.explore.guidance.luffy``
for why they are added rather than replacing a generated rollout).

**Loss on teacher tokens** e_t (rows of kind ``OFF_POLICY``)::

    ω      = ½ (π_old(e_t) + 1)                    the code's stand-in for the unknown external policy
    r_MIS  = π_θ(e_t) / (½ π_old(e_t) + ½ ω)        balance-heuristic multiple importance sampling
                                                    over {π_old, ω}; = 2π_θ / (π_old + ω)
    Â_exp  = Â · (1 − sg[π_θ(e_t)])^γ,  γ = 0.5     exploration-based advantage (``gamma``;
                                                    hard-coded 0.5 in the code)
    ℓ_t    = −r_MIS · Â_exp

π_old is the policy that scored the teacher rows this step (``old_logp``), π_θ carries the
gradient through r_MIS only (the exploration factor is detached, as in the code). A token the
policy already predicts with confidence (π → 1) gets a factor (1 − π)^γ → 0: almost no update;
a low-probability one keeps nearly all of Â. ``off_max_clip`` / ``off_min_clip`` clip r_MIS (code:
off by default). The paper's γ and its exact ω were not re-checked against the code (the code's
values are the defaults here).

**On-policy tokens** are a recipe matter, as LUFFY's code defaults (``configs/recipes/rl_plus.yaml``):
no PPO clip (``loss_remove_clip=True``), no std in the group advantage (``grpo_use_std=False``),
Σ_tokens / L_max (``loss_remove_token_mean=True`` → ``seq-mean-token-sum-norm``), entropy 0.001.
"""
from __future__ import annotations

import torch

from explorl.batch import OFF_POLICY
from explorl.explore.acted import Acted
from explorl.explore.base import Guidance
from explorl.explore.guidance.demos import add_teacher_rows
from explorl.explore.guidance.luffy import clip_weight, guide_metrics, off_policy_mask
from explorl.explore.objective.ppo_clip import masked_mean
from explorl.registry import register


def mis_ratio(logp: torch.Tensor, old_logp: torch.Tensor) -> torch.Tensor:
    """r_MIS = π_θ / (½π_old + ½ω), ω = ½(π_old + 1) (carries the gradient of ``logp``)."""
    old = old_logp.exp()
    omega = 0.5 * (old + 1.0)
    return logp.exp() / (0.5 * old + 0.5 * omega)


def exploration_advantage(adv: torch.Tensor, logp: torch.Tensor, gamma: float) -> torch.Tensor:
    """Â · (1 − sg π_θ)^γ."""
    return adv * (1.0 - logp.detach().exp()).clamp_min(0.0) ** gamma


@register("guidance", "rl_plus", paper="RL-PLUS: Countering Capability Boundary Collapse of LLMs in Reinforcement "
                                       "Learning with Hybrid-policy Optimization, arXiv:2508.00222; code "
                                       "YihongDong/RL-PLUS rl_plus/verl/verl/recipe/rlplus_core_alg.py")
class RLPlus(Guidance):
    engaged_when = (Acted("guide/rl_plus_teacher_rows", ">", 0, what="teacher rows per step > 0"),)
    handles = frozenset({OFF_POLICY})

    def __init__(self, teachers: list | None = None, n_off: int = 1, gamma: float = 0.5,
                 off_max_clip: float | None = None, off_min_clip: float | None = None):
        if n_off < 1:
            raise ValueError(f"guidance rl_plus: n_off must be >= 1, got {n_off}")
        if gamma < 0:
            raise ValueError(f"guidance rl_plus: gamma must be >= 0, got {gamma}")
        self.teacher_names, self.n_off, self.gamma = teachers, n_off, gamma
        self.off_max_clip, self.off_min_clip = off_max_clip, off_min_clip

    def guide(self, batch, ctx):
        batch, added = add_teacher_rows(batch, ctx, self.teacher_names, self.n_off)
        return batch, guide_metrics("rl_plus", batch, added)

    def row_loss(self, ctx):
        ratio = clip_weight(mis_ratio(ctx.logp, ctx.old_logp), self.off_min_clip, self.off_max_clip)
        adv = exploration_advantage(ctx.advantages, ctx.logp, self.gamma)
        off = off_policy_mask(ctx)
        return -ratio * adv, {"loss/rl_plus_mis_ratio": masked_mean(ratio.detach(), off),
                              "loss/rl_plus_off_prob": masked_mean(ctx.logp.detach().exp(), off)}
