"""A non-uniform bandit over sources (EXP3 on learning progress) that logs its propensities.

Graves et al., "Automated Curriculum Learning for Neural Networks", arXiv:1704.03003 (EXP3
with a learning-progress reward); Matiisen et al., "Teacher-Student Curriculum Learning",
arXiv:1707.00183 (|change of success rate| as the signal). Off-policy evaluation from the
logged propensities is inverse propensity scoring (Horvitz & Thompson 1952; e.g. Dudík et
al., "Doubly Robust Policy Evaluation and Learning", arXiv:1103.4601).

Policy: P(j) = (1 − γ)·softmax(w)_j + γ/K over the K positive-weight sources. Each slot of a
batch draws j ~ P (fixed within the batch) and a problem of j with uniform parameters.
Every choice is appended to ``log`` with its propensity P(j); ``observe`` fills in the
outcome of that slot: ``reward`` (its group's mean reward) and ``signal`` (mean |advantage|).

Learning: each step, for each drawn source j, the learning progress is
lp_j = |success_j − ema_j| (this step's mean success of j against its running average,
which is then updated with rate ``ema``), clipped to [0, 1]; the EXP3 gain is importance
weighted, ĝ_j = lp_j · (n_j / n) / P(j), so E[ĝ_j] = lp_j, and w_j += ``lr`` · ĝ_j.

``ips_estimate(log, target)`` evaluates another curriculum over sources from the log:
mean over logged slots of π_target(j)/P(j) · reward. Slots without an observed outcome
(e.g. dropped by a filter before the update) are skipped. The log is checkpointed with the
run; ``explorl.train.plugins.plugin_states(run_dir)[0]["log"]`` reads it back (the curriculum
is the first plug-in).
"""
from __future__ import annotations

import math
from typing import Callable

from explorl.explore.acted import MOVED_FROM_UNIFORM, Acted, spread_ratio
from explorl.explore.base import Curriculum
from explorl.registry import register


def ips_estimate(log: list[dict], target_policy_probs: dict[str, float] | Callable[[dict], float],
                 key: str = "reward", self_normalize: bool = False) -> float:
    """Inverse-propensity estimate of the per-slot value of ``target_policy_probs``.

    ``target_policy_probs`` is either ``{source: probability}`` (a stationary curriculum) or
    a callable ``entry -> probability of entry["source"]`` under the target at that entry's
    step. ``key`` chooses the outcome (``"reward"`` or ``"signal"``). ``self_normalize``
    divides by the sum of importance weights instead of the number of slots (SNIPS).
    """
    prob = target_policy_probs if callable(target_policy_probs) else (
        lambda e: target_policy_probs.get(e["source"], 0.0))
    total, weights, n = 0.0, 0.0, 0
    for entry in log:
        if entry.get(key) is None:
            continue
        w = prob(entry) / entry["propensity"]
        total += w * entry[key]
        weights += w
        n += 1
    if n == 0:
        return float("nan")
    return total / weights if self_normalize else total / n


@register("curriculum", "bandit", paper="EXP3 learning-progress teacher, Graves et al., arXiv:1704.03003")
class Bandit(Curriculum):
    state_keys = ("rng", "log_weights", "ema_success", "log", "pending", "steps")
    engaged_when = (Acted("curriculum/weight_ratio", ">=", MOVED_FROM_UNIFORM, reduce="max",
                          what="source probabilities move away from uniform"),)

    def __init__(self, gamma: float = 0.2, lr: float = 0.5, ema: float = 0.3, max_log: int | None = None):
        if not 0 < gamma <= 1:
            raise ValueError(f"curriculum bandit: gamma (uniform exploration) must be in (0, 1], got {gamma}")
        if lr < 0 or not 0 < ema <= 1:
            raise ValueError("curriculum bandit: need lr >= 0 and 0 < ema <= 1")
        if max_log is not None and max_log < 1:
            raise ValueError(f"curriculum bandit: max_log must be >= 1 or null, got {max_log}")
        self.gamma, self.lr, self.ema, self.max_log = gamma, lr, ema, max_log

    def bind(self, tasks, seed):
        super().bind(tasks, seed)
        self.sources = [n for n in tasks.names if tasks.weights[n] > 0]
        self.log_weights = {n: 0.0 for n in self.sources}
        self.ema_success: dict[str, float] = {}
        self.log: list[dict] = []       # one entry per choice: step, source, propensity, outcome
        self.pending: list[int] = []    # log indices of the last batch, awaiting outcomes
        self.steps = 0

    def probabilities(self) -> dict[str, float]:
        top = max(self.log_weights.values())
        exps = {n: math.exp(w - top) for n, w in self.log_weights.items()}
        total, k = sum(exps.values()), len(self.sources)
        return {n: (1 - self.gamma) * exps[n] / total + self.gamma / k for n in self.sources}

    def next(self, n):
        probs = self.probabilities()
        picks = self.rng.choices(self.sources, weights=[probs[s] for s in self.sources], k=n)
        problems = []
        for source in picks:
            problem = self.tasks.sample(self.rng, source=source)
            self.pending.append(len(self.log))
            self.log.append({"step": self.steps, "source": source, "propensity": probs[source],
                             "id": problem.id, "reward": None, "signal": None})
            problems.append(problem)
        props = [probs[s] for s in picks]
        metrics = {f"curriculum/weight/{s}": probs[s] for s in self.sources}
        metrics["curriculum/weight_ratio"] = spread_ratio(probs.values())
        if props:  # undefined for an empty draw: not emitted
            metrics.update({"curriculum/propensity_mean": sum(props) / len(props),
                            "curriculum/propensity_min": min(props)})
        return problems, metrics

    def observe(self, stats):
        probs = {self.log[i]["source"]: self.log[i]["propensity"] for i in self.pending}
        waiting = {}
        for i in self.pending:
            waiting.setdefault(self.log[i]["id"], []).append(i)
        by_source: dict[str, list[float]] = {}
        for problem, rewards, advs in zip(stats.problems, stats.rewards, stats.advantages):
            slots = waiting.get(problem.id)
            if not slots or not rewards:
                continue
            i = slots.pop(0)
            r = sum(rewards) / len(rewards)
            self.log[i]["reward"] = r
            self.log[i]["signal"] = sum(abs(a) for a in advs) / len(advs)
            by_source.setdefault(self.log[i]["source"], []).append(r)
        n = sum(len(v) for v in by_source.values())
        metrics = {}
        for source, rs in by_source.items():
            success = sum(rs) / len(rs)
            previous = self.ema_success.get(source, success)
            lp = min(1.0, abs(success - previous))
            self.ema_success[source] = (1 - self.ema) * previous + self.ema * success
            gain = lp * (len(rs) / n) / probs[source]
            self.log_weights[source] += self.lr * gain
            metrics[f"curriculum/lp/{source}"] = lp
        self.pending = []
        self.steps += 1
        if self.max_log is not None:
            del self.log[:-self.max_log]
        return metrics
