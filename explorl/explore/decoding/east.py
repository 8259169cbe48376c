"""EAST: Entropic Activation Steering — a vector pointing towards the prompts whose answers the
policy is least sure of, added to the residual stream while it samples.

Rahn, D'Oro, Bellemare, "Controlling Large Language Model Agents with Entropic Activation
Steering", arXiv:2406.00244 (v1 June 2024, v2 October 2024; ICML 2024 Mechanistic
Interpretability workshop). No code was released.

**What was verified** (the abstract of v1 and v2, and summaries of the method section): in-context
agents are overconfident, the entropy of the action distribution implied by sampling collapses,
and token temperature does not restore it. EAST "computes a steering vector as an
entropy-weighted combination of representations": for logged prompts p_i, h_i is the activation
at one layer at the **last prompt token**, H_i the entropy of the distribution over the *parsed
actions* sampled for p_i (estimated by sampling), u ∝ Σ_i w(H_i)·h_i; at inference
h ← h + β·u at that layer (a middle one) with a scalar multiplier β. The setting is a ReAct agent
in Gaussian bandits with Mixtral-8x7B and DBRX.

**Not verified** (the method section could not be read): the weight w, the normalisation,
mean-centring, the layer, which positions are steered, the values of β. Each is a parameter;
the choices here:

    u = Σ_i H_i (h_i − c) / Σ_i H_i,     c = (1/N) Σ_i h_i if ``centre`` else 0          (1)
    h ← h + β · (r / ‖u‖) · u            (``scale="residual"``), r = (1/N) Σ_i ‖h_i‖     (2)
    h ← h + β · u                        (``scale="none"``: the paper's unscaled form)

- w(H) = H, in nats, of the empirical distribution of the G parsed answers of prompt i
  (H_i = −Σ_a p̂_a log p̂_a, p̂_a = n_a / G; "no answer" is one more action); groups of fewer
  than two rollouts have no entropy and are left out. The weights are normalised to sum 1.
- ``centre`` (default): u is the shift from the mean activation towards the high-entropy prompts'.
  Uncentred, an average of activations is mostly their common mean, and adding it rescales the
  residual stream rather than pointing anywhere in particular.
- β relative to the residual-stream norm (2): β = 1 adds a vector as long as an average
  activation at that layer (at the last prompt token of the prompts u was computed from).
- ``layer``: the 0-based decoder layer whose output is read and steered (``None``: the middle,
  ``num_layers // 2``). ``positions``: ``"all"`` (every prompt and generated position) or
  ``"generated"`` (the last prompt token, which predicts the first response token, and each
  decoded one).

**RLVR mapping.** An action is the parsed final answer (``TaskSource.extract_answer``), so each
group of G rollouts gives H_i for free. u is computed before the first step from a calibration
set (``calibration_problems`` problems drawn from the task mix apart from the curriculum's
stream, ``calibration_rollouts`` unsteered rollouts each, counted in the token budget), then
every ``refresh_every`` steps from the policy's own rollouts since the last refresh, with their
activations under the current weights: u goes stale as θ moves. Those groups were sampled
steered, so their entropies are the steered sampler's; the weights use how they rank the
prompts. Every rank of a data-parallel run computes u from the same gathered batch and weights.

The steered sampler is not π_θ: the engine records its log-probs as ``behaviour_logp`` and takes
π_old (``old_logp``, and the rollout entropy) from an unsteered forward; the update's and the
evaluation's forwards never see the intervention (``explorl.policy.intervention``). ``ppo_clip``
with ``tis_cap`` weights each token by min(π_old / π_behaviour, cap), as for EAD.

**On the testbed** (printed by the slow test of ``tests/test_east.py``: the warm start of
``configs/testbed.yaml``, u from 64 calibration problems at layer 2 of 4, the 160 held-out
problems × 8 rollouts at temperature 1 with the same noise): the mean answer entropy is 1.135
unsteered and 1.235 steered with β = 0.3 (mean reward 0.444 → 0.410); along −u it is 1.198 and
along random directions of the same norm 1.182–1.194, so the entropy-weighted direction does
more than a push of that size. Temperature 1.1 gives 1.213 (reward 0.420): here steering trades
reward for answer entropy at about temperature's rate. β = 0.3 is the default and the recipe's;
a larger β costs reward fast (the paper's pitfall: formatting breaks, reward 0).

Metrics: ``decode/beta``; ``decode/u_norm`` (‖u‖), ``decode/steer_norm`` (the added vector's
norm), ``decode/residual_norm`` (r), ``decode/u_step`` (the step u was computed at, 0 for the
calibration set) once u exists; ``decode/logp_gap``, the mean over response tokens of
log π_behaviour − log π_old (at temperature 1 and top-p 1, the steered-vs-unsteered gap), on a
step sampled steered; ``decode/answer_entropy``, the mean H_i of the step's groups;
``decode/refreshed``, 1 on a step that recomputed u.
"""
from __future__ import annotations

import math
from collections import Counter

import torch

from explorl.explore.acted import Acted, AnyOf
from explorl.explore.base import Decoding
from explorl.policy.intervention import POSITIONS, AddVector
from explorl.registry import register

SCALES = ("residual", "none")


def answer_entropy(answers: list) -> float:
    """Entropy (nats) of the empirical distribution of ``answers`` (``None`` is one answer)."""
    n = len(answers)
    return sum(-c / n * math.log(c / n) for c in Counter(answers).values()) + 0.0


def group_answer_entropies(batch, tasks) -> tuple[list, list[float]]:
    """``(problems, H)`` for each group of ``batch`` with at least two of the policy's own rows."""
    answers = [[] for _ in batch.problems]
    for g, text, own in zip(batch.group.tolist(), batch.texts, batch.own_rows.tolist()):
        if own:
            p = batch.problems[g]
            answers[g].append(tasks.extract_answer(p, p.completed(text)))
    kept = [g for g, a in enumerate(answers) if len(a) >= 2]
    return [batch.problems[g] for g in kept], [answer_entropy(answers[g]) for g in kept]


NEGLIGIBLE = 1e-6  # ‖u‖ below this share of the rows' mean norm is rounding, not a direction


def steering_vector(h: torch.Tensor, entropies, centre: bool = True) -> torch.Tensor | None:
    """Equation (1): the entropy-weighted mean of the rows of ``h`` ``(N, d)``, centred on their
    plain mean when asked; ``None`` when every entropy is 0 (no prompt to steer towards) or, centred,
    when the entropies are all equal: u is then 0 but for rounding, whose direction depends on
    the order of the sums (it differed between one process and two), and scaling it to the
    residual norm (2) would steer along noise."""
    w = torch.as_tensor(entropies, dtype=torch.float64)
    if w.numel() != h.shape[0]:
        raise ValueError(f"steering_vector: {w.numel()} entropies for {h.shape[0]} activations")
    if not w.sum() > 0:
        return None
    h = h.double()
    shifted = h - h.mean(0) if centre else h
    u = (w[:, None] * shifted).sum(0) / w.sum()
    if not u.norm() > NEGLIGIBLE * shifted.norm(dim=-1).mean():
        return None
    return u.float()


@register("decoding", "east", paper="EAST, Rahn et al., arXiv:2406.00244 (no code; weights, scale, positions ours)")
class EAST(Decoding):
    state_keys = ("vector", "residual_norm", "steer_layer", "vector_step", "window")

    engaged_when = (Acted("decode/steer_norm", ">", 0.0, reduce="mean", what="a steering vector of non-zero norm added"),
                    AnyOf((Acted("decode/logp_gap", ">", 0.0, reduce="max"), Acted("decode/logp_gap", "<", 0.0, reduce="min"))))

    def __init__(self, beta: float = 0.3, layer: int | None = None, centre: bool = True, scale: str = "residual",
                 positions: str = "all", refresh_every: int = 10, calibration_problems: int = 32,
                 calibration_rollouts: int = 8, temperature: float = 1.0, top_p: float = 1.0):
        if not math.isfinite(beta):
            raise ValueError(f"decoding east: beta must be a finite number, got {beta}")
        if layer is not None and layer < 0:
            raise ValueError(f"decoding east: layer must be >= 0 (or null: the middle layer), got {layer}")
        if scale not in SCALES:
            raise ValueError(f"decoding east: scale must be one of {', '.join(SCALES)}, got {scale!r}")
        if positions not in POSITIONS:
            raise ValueError(f"decoding east: positions must be one of {', '.join(POSITIONS)}, got {positions!r}")
        if refresh_every < 1 or calibration_problems < 1 or calibration_rollouts < 2:
            raise ValueError("decoding east: need refresh_every >= 1, calibration_problems >= 1 and "
                             "calibration_rollouts >= 2 (an answer entropy needs two samples)")
        if temperature <= 0 or not 0 < top_p <= 1:
            raise ValueError(f"decoding east: need temperature > 0 and top_p in (0, 1], got {temperature}, {top_p}")
        self.beta, self.layer, self.centre, self.scale, self.positions = float(beta), layer, centre, scale, positions
        self.refresh_every, self.calibration_problems = refresh_every, calibration_problems
        self.calibration_rollouts, self.temperature, self.top_p = calibration_rollouts, temperature, top_p
        self.vector = None          # u, float32 on the CPU, once computed
        self.residual_norm = 0.0    # r of (2)
        self.steer_layer = layer    # the layer u was read at (``layer``, or the middle one)
        self.vector_step = -1       # the step u was computed at (0: the calibration set)
        self.window = []            # [problem, answer entropy] of the groups since the last refresh

    def temperatures(self, step, max_new_tokens):
        return torch.full((max_new_tokens,), float(self.temperature))

    def added_vector(self) -> torch.Tensor | None:
        """What the intervention adds: (2) with ``scale="residual"``, β·u with ``"none"``."""
        if self.vector is None:
            return None
        if self.scale == "none":
            return self.beta * self.vector
        return (self.beta * self.residual_norm / float(self.vector.norm())) * self.vector

    def intervention(self, step):
        vector = self.added_vector()
        return None if vector is None else AddVector(self.steer_layer, vector, self.positions)

    def before_training(self, ctx) -> dict:
        """u from a calibration set: problems drawn from the task mix with the run's step-0 rng,
        sampled unsteered through the trainer's sampler (so their tokens count)."""
        if not ctx.engine.supports_interventions:
            raise ValueError("decoding east steers the residual stream while sampling; the rollout engine of "
                             "model.backend cannot: use model.backend auto, fast or hf")
        problems = [ctx.tasks.sample(ctx.rng) for _ in range(self.calibration_problems)]
        batch = ctx.sample(problems, [self.calibration_rollouts] * len(problems))
        kept, entropies = group_answer_entropies(batch, ctx.tasks)
        self._compute(ctx.engine, kept, entropies, step=0)
        done = {"calibration problems": len(problems), "calibration tokens": batch.tokens,
                "answer entropy": sum(entropies) / max(len(entropies), 1)}
        if self.vector is not None:
            done["u norm"] = float(self.vector.norm())
        return done

    def _compute(self, engine, problems, entropies, step: int) -> bool:
        """Recompute u and r from ``problems`` (activations under the current weights) and their
        answer entropies; keeps the previous u when the entropies give no direction
        (``steering_vector`` is None)."""
        if not problems:
            return False
        if self.steer_layer is None:
            self.steer_layer = engine.num_layers // 2
        if self.steer_layer >= engine.num_layers:
            raise ValueError(f"decoding east: layer {self.steer_layer} is past the model's {engine.num_layers} decoder "
                             f"layers (0 to {engine.num_layers - 1}; null: the middle one)")
        h = engine.prompt_activations(problems, self.steer_layer)
        u = steering_vector(h, entropies, self.centre)
        if u is None:
            return False
        self.vector, self.vector_step = u, step
        self.residual_norm = float(h.double().norm(dim=-1).mean())
        return True

    def observe(self, stats):
        if not {"batch", "tasks", "engine"} <= set(stats.extras):
            raise ValueError("decoding east: observe needs the step's batch, task mix and engine in stats.extras "
                             "(the trainer gives them)")
        batch, tasks = stats.extras["batch"], stats.extras["tasks"]
        problems, entropies = group_answer_entropies(batch, tasks)
        m = {"decode/beta": self.beta}
        if entropies:
            m["decode/answer_entropy"] = sum(entropies) / len(entropies)
        own, mask = batch.own_rows, batch.mask[batch.own_rows]
        if self.vector is not None and own.any():  # this step's rollouts were sampled steered
            gap = (batch.behaviour_logp[own] - batch.old_logp[own]) * mask
            m["decode/logp_gap"] = float(gap.sum() / mask.sum().clamp_min(1))
        self.window += [[p, h] for p, h in zip(problems, entropies)]
        refreshed = False
        if stats.step % self.refresh_every == 0 and self.window:
            refreshed = self._compute(stats.extras["engine"], [p for p, _ in self.window],
                                      [h for _, h in self.window], stats.step)
            self.window = []
        m["decode/refreshed"] = float(refreshed)
        if self.vector is not None:
            m.update({"decode/u_norm": float(self.vector.norm()),
                      "decode/steer_norm": float(self.added_vector().norm()),
                      "decode/residual_norm": self.residual_norm, "decode/u_step": self.vector_step})
        return m
