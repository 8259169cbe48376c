"""``spear``: SPEAR, from *Learn the Ropes, Then Trust the Wins: Self-imitation with Progressive
Exploration for Agentic Reinforcement Learning* (arXiv:2509.22601).

Authors' code: TencentYoutuResearch/SPEAR — the replay buffer ``TrajectoryBufferBatch`` in
``verl-agent/verl/trainer/ppo/ray_trainer_hybrid.py`` (``update_batch``, ``remove_old``,
``is_full_capacity``, ``maintain_reward_statistics`` and ``prepare_for_selection`` ~L155–440, the
p50 recalibration ~L200–220; the same class in ``verl/verl/trainer/ppo/ray_trainer_hybrid.py``), the
self-imitation (SIL) loss in ``verl-agent/verl/workers/actor/dp_actor.py`` ~L505–600 (the cosine
ramp ~L590–599) with ``compute_policy_loss_clip_cov(..., is_replay=True)`` in
``verl-agent/verl/trainer/ppo/core_algos.py``; script values from ``verl/recipe/spear/run_qwen3-32b_spear.sh``
(math with a code tool, the setting closest to explorl's) and ``verl-agent/examples/*_spear.sh``.

**Buffer** (``observe``, after each update, in the code's order):

1. eviction: entries more than ``trajectory_tolerate_steps`` steps older than the newest entry are
   dropped (the code compares with the newest stored entry, not the current step; the tolerance is
   capped at 10 as in the code);
2. the baseline history: the mean and the (population) std of each group's rewards of this step are
   appended, after whole steps are dropped from the front while the history holds more than
   ``baseline_buffer_size`` group means (10240);
3. the policy's own rows (on-policy and prefix rows) whose group advantage exceeds
   ``trajectory_score_threshold`` are stored with their problem, token ids, reward, advantage and
   the log-probs π_old recorded at sampling time.

``trajectory_score_threshold`` defaults to 0: the class that feeds the replay stores ``advantage >
0`` (``update_batch``); the config field ``trajectory_score_threshold`` (1 in yaml and scripts) is
read by no code path of the trainer. With mean-centred GRPO advantages on 0/1 rewards a correct
answer has Â = 1 − p ∈ (0, 1), so a threshold of 1 would store nothing; with std scaling Â > 1
only when the group's success rate p < 1/2.

**Replay** (``augment``, after advantages). When the buffer holds more than ``fill_factor`` (1.5) ×
``trajectory_buffer_size`` rows whose reward beats the p50 baseline (``is_full_capacity``), every
stored row's advantage is recalibrated against the history (``weight_decay_trajectory_replay`` =
−1, the scripts' value)::

    Â' = r − p50(group means)                         (norm_adv_by_std: false, the SPEAR scripts)
    Â' = (r − p50(group means)) / (p50(group stds) + 1e-6)   (norm_adv_by_std: true)

and only rows with Â' > 0 are kept (``verl/`` tree: ``> 0``; the ``verl-agent/`` copy keeps
``>= 0``, whose extra rows carry no gradient). A random subset of 2^⌊log2 n⌋ of them (at most
``trajectory_buffer_size``; the code's ``nearest_lower_power_of_2``, so a single kept row is not
replayed) is added as ``REPLAYED`` rows, one group per problem, carrying Â' as their advantage (set
here, after the group estimator, which never sees them), and the buffer is emptied
(``reset_buffer``). ``weight_decay_trajectory_replay`` in (0, 1] instead replays every stored row
with its stored advantage times that weight, as the code's other branch does. The replayed tokens
are not generated: they count in no budget.

**Loss on replayed rows** (``row_loss``): Clip-Cov with the replay settings (explorl's
``objective/clip_cov.py``, called on the replayed rows alone: the covariance, its means and the
share ⌊r·N⌋ are over the minibatch's replayed tokens), anchored at the recorded π_old (the code
replays the stored ``old_log_probs``), PPO clip ``clip_ratio_low``/``clip_ratio_high`` (0.2/0.28 in
the SPEAR scripts), times the ramp::

    c(s) = replay_loss_coef · (1 − cos(π s / S)) / 2   for s ≤ S = max_replay_loss_steps,
    c(s) = replay_loss_coef                            afterwards

**One optimizer step, not two.** The code runs the SIL loss as a separate backward and optimizer
step after the PPO epochs, aggregated over the replay mini-batch alone. Here the replayed rows join
the batch after advantages and their term is part of the same loss: they share the PPO epochs,
minibatches, ``loss_agg_mode`` and gradient-norm clip with the on-policy rows (so the replay term's
weight relative to the on-policy term also depends on how many rows each has). Regularizers of the
recipe (entropy, KL) apply to them as to every row, as the code adds its entropy bonus to the SIL
loss.

Defaults: buffer 2048, tolerance 5 (every script; yaml 10), baseline 10240, coef 1 (scripts; yaml
0.001), S = 200 (yaml; scripts 100–300), Clip-Cov r = 0.02, lb 1, ub 40 (the math scripts; the
agent scripts use lb 2, ub 60). The paper's progressive tool-call reward (``episode.py`` ~L157)
needs a tool-using task and is not part of this plug-in.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from explorl.batch import REPLAYED, join
from explorl.explore.acted import Acted
from explorl.explore.base import Guidance, LossContext
from explorl.explore.objective.clip_cov import ClipCov
from explorl.explore.objective.ppo_clip import masked_mean
from explorl.registry import register


def replay_coefficient(step: int, coef: float, ramp_steps: int) -> float:
    """c(s) = coef·(1 − cos(π s/S))/2 for s ≤ S, coef afterwards (``dp_actor.py`` ~L590–599)."""
    if ramp_steps <= 0 or step > ramp_steps:
        return coef
    return coef * (1 - math.cos(math.pi * step / ramp_steps)) / 2


def p50_baseline(mean_history: list, std_history: list) -> tuple[float, float]:
    """The 50th percentiles (NumPy's linear interpolation, as the code) of the flattened history."""
    means = [v for _, vals in mean_history for v in vals]
    stds = [v for _, vals in std_history for v in vals]
    return float(np.percentile(means, 50)), float(np.percentile(stds, 50))


def recalibrate(rewards: torch.Tensor, mean: float, std: float, by_std: bool) -> torch.Tensor:
    """Â' of stored rows against the global baseline (``compute_grpo_outcome_advantage`` with
    ``custom_reward_mean_std``)."""
    adv = rewards.float() - mean
    return adv / (std + 1e-6) if by_std else adv


def nearest_lower_power_of_two(n: int) -> int:
    return 0 if n <= 1 else 1 << (n.bit_length() - 1)


@register("guidance", "spear", paper="SPEAR: Learn the Ropes, Then Trust the Wins: Self-imitation with Progressive "
          "Exploration for Agentic RL, arXiv:2509.22601; code TencentYoutuResearch/SPEAR verl-agent/verl/workers/actor/dp_actor.py, "
          "verl-agent/verl/trainer/ppo/ray_trainer_hybrid.py")
class SPEAR(Guidance):
    engaged_when = (Acted("guide/spear_replayed", ">", 0, reduce="sum", what="replayed rows > 0"),)
    handles = frozenset({REPLAYED})
    state_keys = ("buffer", "mean_history", "std_history")

    def __init__(self, trajectory_buffer_size: int = 2048, trajectory_score_threshold: float = 0.0,
                 trajectory_tolerate_steps: int = 5, baseline_buffer_size: int = 10240,
                 replay_loss_coef: float = 1.0, max_replay_loss_steps: int = 200,
                 clip_cov_ratio_replay: float = 0.02, clip_cov_lb_replay: float = 1.0,
                 clip_cov_ub_replay: float = 40.0, clip_ratio_low: float = 0.2, clip_ratio_high: float = 0.28,
                 norm_adv_by_std: bool = False, weight_decay_trajectory_replay: float = -1.0,
                 fill_factor: float = 1.5):
        if trajectory_buffer_size < 1 or baseline_buffer_size < 1 or trajectory_tolerate_steps < 0:
            raise ValueError("guidance spear: need trajectory_buffer_size >= 1, baseline_buffer_size >= 1 and "
                             "trajectory_tolerate_steps >= 0")
        if replay_loss_coef < 0 or max_replay_loss_steps < 0 or fill_factor < 0:
            raise ValueError("guidance spear: replay_loss_coef, max_replay_loss_steps and fill_factor must be >= 0")
        self.capacity, self.threshold = trajectory_buffer_size, trajectory_score_threshold
        self.tolerate = min(trajectory_tolerate_steps, 10)  # the code caps it at 10
        self.baseline_size, self.coef, self.ramp_steps = baseline_buffer_size, replay_loss_coef, max_replay_loss_steps
        self.by_std, self.decay, self.fill_factor = norm_adv_by_std, weight_decay_trajectory_replay, fill_factor
        self.clip_cov = ClipCov(clip_cov_ratio=clip_cov_ratio_replay, clip_cov_lb=clip_cov_lb_replay,
                                clip_cov_ub=clip_cov_ub_replay, clip_ratio_low=clip_ratio_low,
                                clip_ratio_high=clip_ratio_high, clip_ratio_c=None)
        # stored rows: {"problem", "ids" (LongTensor), "logp" (recorded pi_old), "reward", "advantage", "step"}
        self.buffer: list[dict] = []
        self.mean_history: list = []  # [step, [group means]]
        self.std_history: list = []   # [step, [group stds]]
        self._ctx = None              # this step's GuideContext (scores the replayed rows in augment)

    @property
    def recalibrating(self) -> bool:
        return not 0 < self.decay <= 1

    # ---- after the update ----------------------------------------------------------------------
    def observe(self, stats):
        self._ctx = None
        self.evict()
        batch = stats.extras.get("batch")
        if batch is None:
            return {}
        own = batch.own_rows
        means, stds = [], []
        for g in range(len(batch.problems)):
            rows = ((batch.group == g) & own).nonzero().squeeze(-1)
            if len(rows):
                r = batch.rewards[rows].double().numpy()
                means.append(float(np.mean(r)))
                stds.append(float(np.std(r)))
        while sum(len(v) for _, v in self.mean_history) > self.baseline_size and self.mean_history:
            self.mean_history.pop(0)
            self.std_history.pop(0)
        if means:
            self.mean_history.append([stats.step, means])
            self.std_history.append([stats.step, stds])
        stored = 0
        for r in (own & (batch.advantages > self.threshold)).nonzero().squeeze(-1).tolist():
            n = int(batch.mask[r].sum())
            self.buffer.append({"problem": batch.problems[int(batch.group[r])],
                                "ids": batch.response_ids[r, :n].clone(), "logp": batch.old_logp[r, :n].float().clone(),
                                "reward": float(batch.rewards[r]), "advantage": float(batch.advantages[r]),
                                "step": int(stats.step)})
            stored += 1
        return {"guide/spear_stored": float(stored), "guide/spear_buffer": float(len(self.buffer)),
                "guide/spear_baseline_groups": float(sum(len(v) for _, v in self.mean_history))}

    def evict(self) -> None:
        """Drop entries more than ``tolerate`` steps older than the newest one (``remove_old``)."""
        if self.buffer:
            newest = self.buffer[-1]["step"]
            self.buffer = [e for e in self.buffer if abs(e["step"] - newest) <= self.tolerate]

    # ---- before the update -----------------------------------------------------------------------
    def baseline(self) -> tuple[float, float] | None:
        return p50_baseline(self.mean_history, self.std_history) if self.mean_history else None

    def ready(self) -> bool:
        """``is_full_capacity``: more than fill_factor × capacity stored rows beat the p50 baseline."""
        if not self.recalibrating:
            return len(self.buffer) > self.fill_factor * self.capacity
        base = self.baseline()
        rewards = [e["reward"] for e in self.buffer]
        cut = base[0] if base is not None else (sum(rewards) / len(rewards) if rewards else 0.0)
        return sum(r > cut for r in rewards) > self.fill_factor * self.capacity

    def selection(self, rng) -> tuple[list[dict], list[float]]:
        """The entries to replay and their advantages."""
        if self.recalibrating:
            mean, std = self.baseline()
            adv = recalibrate(torch.tensor([e["reward"] for e in self.buffer]), mean, std, self.by_std).tolist()
            kept = [(e, a) for e, a in zip(self.buffer, adv) if a > 0]
        else:
            kept = [(e, e["advantage"] * self.decay) for e in self.buffer]
        n = min(nearest_lower_power_of_two(len(kept)), self.capacity)
        chosen = sorted(rng.sample(range(len(kept)), n))
        return [kept[i][0] for i in chosen], [kept[i][1] for i in chosen]

    def guide(self, batch, ctx):
        self._ctx = ctx  # the replayed rows are scored in augment, after advantages, in this same step
        return batch, {}

    def augment(self, batch, sampler):
        ctx, self._ctx = self._ctx, None
        if ctx is None or not self.buffer or self.baseline() is None or not self.ready():
            return batch, {}
        entries, adv = self.selection(ctx.rng)
        self.buffer = []  # reset_buffer: every replay empties the buffer
        if not entries:
            return batch, {"guide/spear_replayed": 0.0}
        order, problems, counts = {}, [], []
        for i, e in enumerate(entries):  # one group per problem (same prompt, encoded once)
            key = (e["problem"].id, e["problem"].prefix)
            if key not in order:
                order[key] = len(problems)
                problems.append(e["problem"])
                counts.append(0)
            counts[order[key]] += 1
        ranked = sorted(range(len(entries)), key=lambda i: order[(entries[i]["problem"].id,
                                                                    entries[i]["problem"].prefix)])
        rows = ctx.score(problems, counts, token_ids=[entries[i]["ids"].tolist() for i in ranked],
                         behaviour_logp=[entries[i]["logp"] for i in ranked], kind=REPLAYED)
        rows.advantages = torch.tensor([adv[i] for i in ranked], dtype=torch.float32)
        base = self.baseline()
        metrics = {"guide/spear_replayed": float(rows.size), "guide/spear_replay_adv_mean": float(rows.advantages.mean())}
        if base is not None:
            metrics.update({"guide/spear_baseline_mean": base[0], "guide/spear_baseline_std": base[1]})
        return join([batch, rows]), metrics

    # ---- the loss of replayed rows -------------------------------------------------------------
    def row_loss(self, ctx):
        kind = ctx.kind.to(ctx.mask.device) if ctx.kind is not None else torch.zeros(ctx.logp.shape[0], dtype=torch.long)
        replayed = (kind == REPLAYED)[:, None].to(ctx.mask.dtype)
        # the recorded pi_old anchors the replayed rows; other rows get ratio 1 (their term is masked out)
        anchor = torch.where(replayed > 0, ctx.behaviour_logp, ctx.logp.detach())
        sub = LossContext(logp=ctx.logp, old_logp=anchor, behaviour_logp=ctx.behaviour_logp,
                          advantages=ctx.advantages, mask=ctx.mask * replayed, step=ctx.step, rows=ctx.rows,
                          extras=ctx.extras, kind=ctx.kind)
        loss, m = self.clip_cov.term(sub)
        c = replay_coefficient(ctx.step, self.coef, self.ramp_steps)
        return c * loss, {"loss/spear_coef": c, "loss/spear_clip_cov_frac": m["loss/clip_cov_frac"],
                          "loss/spear_ratio_mean": masked_mean(torch.exp(ctx.logp.detach() - anchor), sub.mask)}
