"""DUMP: distribution-level curriculum by UCB on the mean absolute advantage of each source.

Wang et al., "DUMP: Automated Distribution-Level Curriculum Learning for RL-based LLM
Post-training", arXiv:2504.09710 (code: ZhentingWang/DUMP, ``verl/utils/curriculum_learning.py``).

Per source j (a "distribution"), a sliding window of the last ``window`` per-response
advantages gives μ_j = mean |Â|; n_j counts every response seen from j. Then

    UCB_j = μ_j + c · sqrt(2 ln(N + 1) / (n_j + 1)),   N = Σ_j n_j
    P(j)  = softmax(UCB_j / τ)

and each slot of a batch draws a source j ~ P, then a problem of j with uniform parameters
(the code's "uniform index with replacement"). An unvisited source has μ_j = 0 and the
largest bonus, so it is tried as soon as others have been seen.

Choices: only sources with a positive TaskMix weight take part (a weight-0 source is never
sampled, as in ``uniform``); the mix's weights are otherwise ignored. The code's quirk of
also updating the estimators on validation (advantage := reward) is not reproduced.
"""
from __future__ import annotations

import math

from explorl.explore.acted import MOVED_FROM_UNIFORM, Acted, spread_ratio
from explorl.explore.base import Curriculum
from explorl.registry import register


def softmax(xs: list[float], tau: float) -> list[float]:
    top = max(xs)
    exps = [math.exp((x - top) / tau) for x in xs]
    total = sum(exps)
    return [e / total for e in exps]


@register("curriculum", "dump", paper="DUMP, Wang et al., arXiv:2504.09710")
class DUMP(Curriculum):
    state_keys = ("rng", "windows", "seen")
    engaged_when = (Acted("curriculum/weight_ratio", ">=", MOVED_FROM_UNIFORM, reduce="max",
                          what="source weights move away from uniform"),)

    def __init__(self, window: int = 300, c: float = 1.0, tau: float = 0.1):
        if window < 1:
            raise ValueError(f"curriculum dump: window must be >= 1, got {window}")
        if c < 0 or tau <= 0:
            raise ValueError(f"curriculum dump: need c >= 0 and tau > 0, got c={c}, tau={tau}")
        self.window, self.c, self.tau = window, c, tau

    def bind(self, tasks, seed):
        super().bind(tasks, seed)
        self.sources = [n for n in tasks.names if tasks.weights[n] > 0]
        self.windows = {n: [] for n in self.sources}   # last `window` per-response advantages
        self.seen = {n: 0 for n in self.sources}       # n_j: responses seen from source j

    def scores(self) -> dict[str, float]:
        total = sum(self.seen.values())
        out = {}
        for name in self.sources:
            w = self.windows[name]
            mu = sum(abs(a) for a in w) / len(w) if w else 0.0
            out[name] = mu + self.c * math.sqrt(2 * math.log(total + 1) / (self.seen[name] + 1))
        return out

    def probabilities(self) -> dict[str, float]:
        ucb = self.scores()
        return dict(zip(self.sources, softmax([ucb[n] for n in self.sources], self.tau)))

    def next(self, n):
        probs = self.probabilities()
        weights = [probs[s] for s in self.sources]
        picks = self.rng.choices(self.sources, weights=weights, k=n)
        problems = [self.tasks.sample(self.rng, source=s) for s in picks]
        metrics = {f"curriculum/weight/{s}": probs[s] for s in self.sources}
        metrics["curriculum/weight_ratio"] = spread_ratio(weights)
        return problems, metrics

    def observe(self, stats):
        for problem, advs in zip(stats.problems, stats.advantages):
            if problem.source not in self.windows:
                continue
            w = self.windows[problem.source]
            w.extend(float(a) for a in advs)
            del w[:-self.window]
            self.seen[problem.source] += len(advs)
        ucb = self.scores()
        return {f"curriculum/ucb/{s}": ucb[s] for s in self.sources}
