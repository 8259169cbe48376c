"""``luffy``: LUFFY, Learning to Reason under Off-Policy Guidance (arXiv:2504.14945).

Authors' code: ElliottYan/LUFFY ``luffy/verl/verl/mix_src/mix_core_alg.py::
compute_token_on_off_policy_loss`` (the loss), ``mix_vllm_rollout.py`` (the group layout),
``exp_scripts/train.sh`` (the defaults).

**Group.** Each group gets ``n_off`` (default 1) teacher solutions as ``OFF_POLICY`` rows, taken
from the named ``teachers`` in order (``None``: every teacher of the run). The group statistics
are over the mixed group: the estimator sees the policy's rollouts and the teacher rows together.
Teacher rows keep the verifier's reward, as in the code (a correct teacher gets 1).

**Budget: added, not replaced.** The code samples ``n`` = 8 per prompt with ``n_prefix`` = 1 of
them forced to the full teacher trace (prefix ratio 1.0), so a group is 7 generated rollouts + 1
teacher. Here the guide runs after the budget has sampled, and replacing a rollout the policy
already generated would spend its tokens for nothing. So the teacher rows are **added** to the
group: G on-policy rollouts + ``n_off`` teacher rows, and the policy's token budget
(``tokens/step``) counts only what it generated; the teacher's tokens go to ``tokens/teacher``. To
reproduce the paper's 7 + 1 layout, set ``train.rollouts_per_problem`` to G − ``n_off`` (7).

**Loss on teacher tokens** (``row_loss``, the rows of kind ``OFF_POLICY``)::

    ℓ_t = −Â · f(π_θ(e_t)),   f(x) = x / (x + γ),   γ = 0.1 (``gamma``; the code's
                                                    off_policy_reshape="p_div_p_0.1")

with π_φ ≡ 1 (the code's ``target_probs=None``). Its gradient w.r.t. log π_θ is
−Â·γπ/(π+γ)²: low-probability teacher tokens keep a large share of the update relative to plain
imitation (whose gradient is −Â·1 per token), confident ones little. With ``target_probs: true``
the weight is π_θ / π_φ with π_φ = exp(``behaviour_logp``) (the code's ``target_probs`` path, no
shaping); teachers that give texts only leave ``behaviour_logp`` at 0, so there π_φ = 1 and the
weight is the unshaped π_θ. ``off_max_clip`` / ``off_min_clip`` clip the weight (code: off by
default).

**On-policy tokens and the rest are recipe settings** (``configs/recipes/luffy.yaml``):

- the code default (``loss_remove_clip=True``) drops the PPO clip: ``ppo_clip`` with
  ``clip_ratio_low: 1.0, clip_ratio_high: 1.0e9, clip_ratio_c: null`` (ℓ = −Â·π_θ/π_old);
- ``grpo_use_std=False``: ``grpo`` with ``scale_by_std: false`` (Â = r − mean over the mixed
  group); the paper divides by the std of the mixed group: ``scale_by_std: true``;
- ``loss_remove_token_mean=True`` (Σ_tokens ℓ / L_max): ``train.loss_agg_mode:
  seq-mean-token-sum-norm`` (Σ ℓ / (N_seq · L_max); the code divides by L_max per micro-batch,
  so the two differ by a constant factor, i.e. the learning rate); the paper's token mean:
  ``token-mean``;
- entropy bonus 0.001, no KL.

Code and paper differ on the std and the clip; explorl's defaults follow the code.
"""
from __future__ import annotations

import torch

from explorl.batch import OFF_POLICY
from explorl.explore.acted import Acted
from explorl.explore.base import Guidance
from explorl.explore.guidance.demos import add_teacher_rows, luffy_shaping
from explorl.explore.objective.ppo_clip import masked_mean
from explorl.registry import register


def off_policy_mask(ctx) -> torch.Tensor:
    """``(R, L)`` mask of the response tokens of the ``OFF_POLICY`` rows of a loss context."""
    kind = ctx.kind if ctx.kind is not None else torch.zeros(ctx.logp.shape[0], dtype=torch.long)
    return ctx.mask * (kind.to(ctx.mask.device) == OFF_POLICY)[:, None].to(ctx.mask.dtype)


def clip_weight(weight: torch.Tensor, low: float | None, high: float | None) -> torch.Tensor:
    if high is not None:
        weight = weight.clamp(max=high)
    if low is not None:
        weight = weight.clamp(min=low)
    return weight


def guide_metrics(prefix: str, batch, added) -> dict[str, float]:
    if added is None:
        return {f"guide/{prefix}_teacher_rows": 0.0, f"guide/{prefix}_groups_guided": 0.0}
    return {f"guide/{prefix}_teacher_rows": float(added.size),
            f"guide/{prefix}_groups_guided": float(len(added.problems)),
            f"guide/{prefix}_teacher_reward": float(added.rewards.float().mean())}


@register("guidance", "luffy", paper="LUFFY: Learning to Reason under Off-Policy Guidance, arXiv:2504.14945; code "
                                     "ElliottYan/LUFFY luffy/verl/verl/mix_src/mix_core_alg.py"
                                     "::compute_token_on_off_policy_loss")
class Luffy(Guidance):
    engaged_when = (Acted("guide/luffy_teacher_rows", ">", 0, what="teacher rows per step > 0"),)
    handles = frozenset({OFF_POLICY})

    def __init__(self, teachers: list | None = None, n_off: int = 1, gamma: float = 0.1, target_probs: bool = False,
                 off_max_clip: float | None = None, off_min_clip: float | None = None):
        if n_off < 1:
            raise ValueError(f"guidance luffy: n_off must be >= 1, got {n_off}")
        if not gamma > 0:
            raise ValueError(f"guidance luffy: gamma must be > 0, got {gamma}")
        self.teacher_names, self.n_off, self.gamma, self.target_probs = teachers, n_off, gamma, target_probs
        self.off_max_clip, self.off_min_clip = off_max_clip, off_min_clip

    def guide(self, batch, ctx):
        batch, added = add_teacher_rows(batch, ctx, self.teacher_names, self.n_off)
        return batch, guide_metrics("luffy", batch, added)

    def weight(self, ctx) -> torch.Tensor:
        """The per-token weight of the teacher tokens (carries the gradient)."""
        prob = ctx.logp.exp()
        if self.target_probs:
            weight = prob / (ctx.behaviour_logp.exp() + 1e-6)
        else:
            weight = luffy_shaping(prob, self.gamma)
        return clip_weight(weight, self.off_min_clip, self.off_max_clip)

    def row_loss(self, ctx):
        weight = self.weight(ctx)
        off = off_policy_mask(ctx)
        return -ctx.advantages * weight, {"loss/luffy_off_prob": masked_mean(ctx.logp.detach().exp(), off),
                                          "loss/luffy_off_weight": masked_mean(weight.detach(), off)}
