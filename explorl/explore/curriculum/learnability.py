"""Learnability prioritisation: sample problems ∝ p(1 − p) over a pool of problems.

Foster & Foerster, "Learning to Reason at the Frontier of Learnability", arXiv:2502.12272
(LLM RL); the p(1 − p) score is Sampling For Learnability, Rutherford et al., "No Regrets",
arXiv:2408.15099. A problem solved with probability p gives a non-zero GRPO gradient most
often, and the largest expected improvement, near p = 1/2; always- and never-solved
problems teach nothing.

Design (choices, all parameters):
- a fixed pool of ``pool_size`` training seeds per source (positive-weight sources only),
  drawn from the curriculum's rng at ``bind``; problem = ``source.problem(seed)``, so its
  ``id`` is stable and its pass rate can be tracked;
- p̂ per problem id: the first visit sets p̂ = its group's mean reward, later visits blend
  p̂ ← (1 − ema)·p̂ + ema·mean reward;
- an unseen problem has the optimistic prior p̂ = ``prior`` (0.5: the largest score, so
  every problem is tried before the pool is exploited);
- score = max(p̂(1 − p̂), ``floor``) × the source's TaskMix weight; a batch draws ``n``
  distinct problems ∝ score (without replacement while the pool allows it).
"""
from __future__ import annotations

from explorl.explore.acted import MOVED_FROM_UNIFORM, Acted, spread_ratio
from explorl.explore.base import Curriculum
from explorl.registry import register


@register("curriculum", "learnability",
          paper="Foster & Foerster, arXiv:2502.12272; SFL p(1-p), Rutherford et al., arXiv:2408.15099")
class Learnability(Curriculum):
    state_keys = ("rng", "pool", "p_hat", "visits")
    engaged_when = (Acted("curriculum/weight_ratio", ">=", MOVED_FROM_UNIFORM, reduce="max",
                          what="the sampling distribution over the pool is not uniform"),)

    def __init__(self, pool_size: int = 64, ema: float = 0.5, prior: float = 0.5, floor: float = 0.01):
        if pool_size < 1:
            raise ValueError(f"curriculum learnability: pool_size must be >= 1, got {pool_size}")
        if not 0 < ema <= 1 or not 0 <= prior <= 1 or floor <= 0:
            raise ValueError("curriculum learnability: need 0 < ema <= 1, 0 <= prior <= 1, floor > 0")
        self.pool_size, self.ema, self.prior, self.floor = pool_size, ema, prior, floor

    def bind(self, tasks, seed):
        super().bind(tasks, seed)
        self.pool = {name: [self.rng.randrange(10**9, 2 * 10**9) for _ in range(self.pool_size)]
                     for name in tasks.names if tasks.weights[name] > 0}
        self.p_hat: dict[str, float] = {}
        self.visits: dict[str, int] = {}
        self._cache = {}  # (source, seed) -> Problem; derived, not state

    def problem(self, name, seed):
        key = (name, seed)
        if key not in self._cache:
            self._cache[key] = self.tasks.sources[name].problem(seed)
        return self._cache[key]

    def priority(self, problem) -> float:
        """A pool problem's score before its source's weight: max(p̂(1 − p̂), floor)."""
        p = self.p_hat.get(problem.id, self.prior)
        return max(p * (1 - p), self.floor)

    def candidates(self):
        """Every pool problem with its sampling score."""
        out = []
        for name, seeds in self.pool.items():
            weight = self.tasks.weights[name]
            for seed in seeds:
                problem = self.problem(name, seed)
                out.append((problem, self.priority(problem) * weight))
        return out

    def next(self, n):
        pool = self.candidates()
        ratio = spread_ratio([s for _, s in pool])
        chosen = []
        while len(chosen) < n:
            if not pool:  # pool exhausted: allow repeats
                pool = self.candidates()
            i = self.rng.choices(range(len(pool)), weights=[s for _, s in pool], k=1)[0]
            chosen.append(pool.pop(i)[0])
        seen = [self.p_hat[p.id] for p in chosen if p.id in self.p_hat]
        metrics = {"curriculum/frac_seen": len(seen) / max(1, n), "curriculum/weight_ratio": ratio}
        if seen:  # undefined before any chosen problem was seen: not emitted
            metrics["curriculum/p_hat_mean"] = sum(seen) / len(seen)
        return chosen, metrics

    def observe(self, stats):
        for problem, rewards in zip(stats.problems, stats.rewards):
            if not rewards:
                continue
            r = sum(rewards) / len(rewards)
            old = self.p_hat.get(problem.id)
            self.p_hat[problem.id] = r if old is None else (1 - self.ema) * old + self.ema * r
            self.visits[problem.id] = self.visits.get(problem.id, 0) + 1
        return {"curriculum/pool_seen": float(len(self.p_hat))}
