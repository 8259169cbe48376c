"""Adaptive entropy control: an entropy bonus whose coefficient tracks a target entropy.

Skywork Open Reasoner 1 Technical Report, arXiv:2505.22312 (``actor.adaptive_entropy`` in
SkyworkAI/Skywork-OR1; the run scripts' values are the defaults here):

    ℓ_t = −α · H_t,   α = c · 1[e ≤ H_target]
    after each step: c ← clamp(c + Δ, c_min, c_max) if e ≤ H_target, else clamp(c − Δ, ...)

with e the mean token entropy of the step's rollouts (``StepStats.entropy``), H_target =
``target_entropy`` = 0.2, Δ = ``delta`` = 1e-4, [c_min, c_max] = [0, 0.005], c_0 =
``init_coef`` = 0.

Documented choices:

- The coefficient and the indicator use the entropy observed at the previous step
  (``observe`` runs after the update), a one-step lag; before the first observation the
  indicator is on.
- ``only_below_target`` (default True) applies the bonus only while e ≤ H_target, the
  report's α = c·1[e ≤ tgt]; it is read from the report, not re-checked in the code (the
  repository files read hold only the scripts). False uses α = c always.
- ``target_relative`` (with ``target_entropy: null``): H_target = ``target_relative`` × the
  mean rollout entropy of the run's first ``relative_steps`` steps, fixed from then on; the
  coefficient stays 0 until it is known. The report's 0.2 nats is an absolute level for 7B
  distilled models on long answers; on a model whose entropy lives on another scale (the
  testbed's starts between 0.4 and 0.8 nats, depending on the batch) it never binds, or always
  does. A target relative to the run's own start keeps what the control is for — defending an
  entropy floor once the policy has narrowed — wherever the run starts.
"""
from __future__ import annotations

from explorl.explore.acted import Acted
from explorl.explore.base import Objective
from explorl.explore.objective.ppo_clip import masked_mean
from explorl.registry import register


@register("objective", "adaptive_entropy", paper="Skywork-OR1 adaptive entropy control (arXiv:2505.22312)")
class AdaptiveEntropy(Objective):
    engaged_when = (Acted("loss/adaptive_entropy_coef", ">=", 0.1, reduce="share", step_above=0,
                          what="the coefficient in force is > 0 on at least 10% of steps"),)
    needs = frozenset({"entropy"})
    state_keys = ("coef", "last_entropy", "target", "start_entropies")

    def __init__(self, target_entropy: float | None = 0.2, delta: float = 1e-4, min_coef: float = 0.0,
                 max_coef: float = 0.005, init_coef: float = 0.0, only_below_target: bool = True,
                 target_relative: float | None = None, relative_steps: int = 5):
        if (target_entropy is None) == (target_relative is None):
            raise ValueError("objective adaptive_entropy: set either target_entropy (nats) or target_relative (a "
                             "share of the first steps' entropy) with target_entropy: null, not both or neither")
        if target_relative is not None and not target_relative > 0:
            raise ValueError(f"objective adaptive_entropy: target_relative must be > 0, got {target_relative}")
        if relative_steps < 1:
            raise ValueError(f"objective adaptive_entropy: relative_steps must be >= 1, got {relative_steps}")
        self.ratio, self.relative_steps, self.start_entropies = target_relative, relative_steps, []
        if min_coef > max_coef:
            raise ValueError(f"objective adaptive_entropy: min_coef ({min_coef}) > max_coef ({max_coef})")
        if delta < 0:
            raise ValueError(f"objective adaptive_entropy: delta must be >= 0, got {delta}")
        self.target, self.delta, self.min_coef, self.max_coef = target_entropy, delta, min_coef, max_coef
        self.only_below = only_below_target
        self.coef = min(max(init_coef, min_coef), max_coef)
        self.last_entropy = None

    @property
    def active_coef(self) -> float:
        if self.target is None:  # a relative target not yet measured
            return 0.0
        below = self.last_entropy is None or self.last_entropy <= self.target
        return self.coef if (below or not self.only_below) else 0.0

    def term(self, ctx):
        alpha = self.active_coef
        return -alpha * ctx.entropy, {"loss/adaptive_entropy_coef": alpha,
                                      "loss/adaptive_entropy_bonus": alpha * masked_mean(ctx.entropy.detach(), ctx.mask)}

    def observe(self, stats):
        e = float(stats.entropy)
        if self.target is None:
            self.start_entropies.append(e)
            self.last_entropy = e
            if len(self.start_entropies) < self.relative_steps:
                return {"entropy/adaptive_coef": self.coef}
            self.target = self.ratio * sum(self.start_entropies) / len(self.start_entropies)
            return {"entropy/adaptive_coef": self.coef, "entropy/adaptive_target": self.target}
        step = self.delta if e <= self.target else -self.delta
        self.coef = min(max(self.coef + step, self.min_coef), self.max_coef)
        self.last_entropy = e
        return {"entropy/adaptive_coef": self.coef, "entropy/adaptive_target": self.target}
