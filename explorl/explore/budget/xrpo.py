"""XRPO: rollouts allocated by expected uncertainty reduction, and in-context seeding.

Bamba et al., "XRPO: Pushing the limits of GRPO with Targeted Exploration and
Exploitation", arXiv:2510.06672. The official code was not available when this was written;
the formulas follow a third-party reimplementation (see METHODS §4), and the marked
hyper-parameters are UNVERIFIED choices, all exposed.

Allocator. Every problem first gets ``initial_n`` rollouts (default: half the step's
per-problem budget, at least 2). The rest of the step's budget is given out in ``rounds``
rounds; within a round, one rollout at a time goes to argmax_q Π_q, with n_q counting the
rollouts already assigned (the round's are sampled together, then the statistics refresh):

    h_q(n) = t_{1−α/2, n−1} · s_q / sqrt(n)        (Student-t CI half-width, s_q unbiased std)
    Δ̂_q    = h_q(n_q) − h_q(n_q + 1)               (expected uncertainty reduction)
    φ_q    = λ · sqrt(log(1 + T) / n_q)            (exploration bonus)
    Π_q    = Δ̂_q + φ_q

T = Σ_q n_q, the rollouts assigned so far this step (a choice: the bandit's pull count).
α = 0.05, λ = 0.1 (so φ is on the scale of Δ̂ for binary rewards), ``rounds`` = 2 and
``max_n`` = 64 are UNVERIFIED choices. No scipy: t quantiles come from our own regularised
incomplete beta (continued fraction) and bisection, accurate to ~1e-10.

In-context seeding. After allocation, a problem whose rollouts all failed (every reward
≤ 0) is re-asked with solved exemplars in its context: the ``num_exemplars`` archived
same-source problems nearest in difficulty parameters (ties broken at random), each
rendered as "prompt + reference answer" followed by ``separator``. The seeded problem keeps
the id, prompt, answer, source and params (verifiers read only those), carries the
exemplars in ``Problem.context``, and gets as many new rollouts as its group had; its group
replaces the failed one. Seeded rollouts are therefore TRAINED WITH the exemplar context
(the prompt the policy saw; whether XRPO trains with or without it is UNVERIFIED). The
archive holds, per source, the last ``archive_size`` problems that had at least one rollout
with reward ≥ ``solved_threshold`` in an unseeded group; the exemplar text is the
problem's reference answer. Seeding costs extra generation, which the token count charges.
"""
from __future__ import annotations

import math
import random
from functools import lru_cache

from explorl.batch import merge
from explorl.explore.acted import Acted
from explorl.explore.base import Budget
from explorl.registry import register
from explorl.tasks.problem import Problem


# ---- Student t quantiles without scipy ---------------------------------------------------
def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1, a - 1
    c, d = 1.0, 1 - qab * x / qap
    d = 1 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1 + aa * d
        d = 1 / (d if abs(d) > tiny else tiny)
        c = 1 + aa / c if abs(1 + aa / c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1 + aa * d
        d = 1 / (d if abs(d) > tiny else tiny)
        c = 1 + aa / c if abs(1 + aa / c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1) < 1e-14:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b)."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1) / (a + b + 2):
        return front * _betacf(a, b, x) / a
    return 1 - front * _betacf(b, a, 1 - x) / b


def t_cdf(x: float, df: float) -> float:
    tail = 0.5 * betainc(df / 2, 0.5, df / (df + x * x))
    return 1 - tail if x >= 0 else tail


@lru_cache(maxsize=4096)
def t_quantile(q: float, df: float) -> float:
    """Inverse CDF of Student's t with ``df`` degrees of freedom (bisection)."""
    if not 0 < q < 1 or df <= 0:
        raise ValueError(f"t_quantile: need 0 < q < 1 and df > 0, got q={q}, df={df}")
    if q < 0.5:
        return -t_quantile(1 - q, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < q:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_cdf(mid, df) < q else (lo, mid)
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return (lo + hi) / 2


# ---- the allocator -----------------------------------------------------------------------
def half_width(n: int, s: float, alpha: float) -> float:
    if n < 2:
        return math.inf
    return t_quantile(1 - alpha / 2, n - 1) * s / math.sqrt(n)


def priority(n: int, s: float, total: int, alpha: float, lam: float) -> float:
    """Π = Δ̂ + φ for a problem with ``n`` rollouts of sample std ``s``."""
    delta = half_width(n, s, alpha) - half_width(n + 1, s, alpha) if n >= 2 else math.inf
    return delta + lam * math.sqrt(math.log(1 + total) / max(n, 1))


def allocate_round(ns: list[int], stds: list[float], budget: int, alpha: float, lam: float,
                   max_n: int) -> list[int]:
    """Extra rollouts per problem: ``budget`` units, each to the current argmax Π."""
    virtual, extra = list(ns), [0] * len(ns)
    for _ in range(budget):
        open_ = [i for i in range(len(ns)) if virtual[i] < max_n]
        if not open_:
            break
        total = sum(virtual)
        best = max(open_, key=lambda i: (priority(virtual[i], stds[i], total, alpha, lam), -i))
        virtual[best] += 1
        extra[best] += 1
    return extra


def sample_std(rewards: list[float]) -> float:
    n = len(rewards)
    if n < 2:
        return 0.0
    mean = sum(rewards) / n
    return math.sqrt(sum((r - mean) ** 2 for r in rewards) / (n - 1))


@register("budget", "xrpo", paper="XRPO, Bamba et al., arXiv:2510.06672")
class XRPO(Budget):
    engaged_when = (Acted("budget/xrpo_extra", ">", 0, reduce="sum", what="extra-round rollouts allocated"),
                    Acted("budget/xrpo_seeded", ">", 0, reduce="sum", what="seeded re-asks made"))
    state_keys = ("archive", "rng")

    def __init__(self, initial_n: int | None = None, rounds: int = 2, alpha: float = 0.05, lam: float = 0.1,
                 max_n: int = 64, seeding: bool = True, num_exemplars: int = 1, separator: str = ";",
                 archive_size: int = 256, solved_threshold: float = 1.0, seed: int = 0):
        if initial_n is not None and initial_n < 2:
            raise ValueError(f"budget xrpo: initial_n must be >= 2 (a t interval needs two rollouts), got {initial_n}")
        if rounds < 1 or not 0 < alpha < 1 or lam < 0 or max_n < 2:
            raise ValueError("budget xrpo: need rounds >= 1, 0 < alpha < 1, lam >= 0, max_n >= 2")
        self.initial_n, self.rounds, self.alpha, self.lam, self.max_n = initial_n, rounds, alpha, lam, max_n
        self.seeding, self.num_exemplars, self.separator = seeding, num_exemplars, separator
        self.archive_size, self.solved_threshold = archive_size, solved_threshold
        self.archive: dict[str, list[dict]] = {}   # source -> [{"id", "prompt", "answer", "params"}]
        self.rng = random.Random(seed)
        self._total = None

    def allocate(self, problems, total):
        per = total // max(1, len(problems))
        n0 = self.initial_n if self.initial_n is not None else max(2, per // 2)
        n0 = min(n0, self.max_n)
        self._total = max(total, n0 * len(problems))
        return [n0] * len(problems), {"budget/initial_n": float(n0)}

    # ---- archive -------------------------------------------------------------------------
    def remember(self, problem: Problem) -> None:
        entries = self.archive.setdefault(problem.source, [])
        entries[:] = [e for e in entries if e["id"] != problem.id]
        entries.append({"id": problem.id, "prompt": problem.prompt, "answer": problem.answer,
                        "params": dict(problem.params)})
        del entries[:-self.archive_size]

    def exemplars(self, problem: Problem) -> list[dict]:
        pool = [e for e in self.archive.get(problem.source, []) if e["id"] != problem.id]
        def dist(e):
            return sum(abs(float(e["params"].get(k, 0)) - float(v)) for k, v in problem.params.items())
        keyed = [(dist(e), self.rng.random(), e) for e in pool]
        return [e for _, _, e in sorted(keyed, key=lambda t: t[:2])[:self.num_exemplars]]

    def seeded(self, problem: Problem, exemplars: list[dict]) -> Problem:
        context = "".join(e["prompt"] + e["answer"] + self.separator for e in exemplars)
        return Problem(id=problem.id, prompt=problem.prompt, answer=problem.answer, source=problem.source,
                       params=dict(problem.params), context=context + problem.context)

    # ---- one step ------------------------------------------------------------------------
    def collect(self, sample, problems, counts, draw=None):
        problems = list(problems)
        first = sample(problems, list(counts))
        pieces = [(first, list(range(len(problems))))]
        rewards = [[] for _ in problems]
        for g, r in zip(first.group.tolist(), first.rewards.tolist()):
            rewards[g].append(r)
        total = self._total if self._total is not None else sum(counts)
        extra_left = max(0, total - sum(counts))
        extra_given = 0
        for r in range(self.rounds):
            budget = extra_left // (self.rounds - r)
            extra = allocate_round([len(x) for x in rewards], [sample_std(x) for x in rewards], budget,
                                   self.alpha, self.lam, self.max_n)
            idx = [i for i, k in enumerate(extra) if k > 0]
            if not idx:
                break
            batch = sample([problems[i] for i in idx], [extra[i] for i in idx])
            pieces.append((batch, idx))
            for g, rew in zip(batch.group.tolist(), batch.rewards.tolist()):
                rewards[idx[g]].append(rew)
            extra_left -= sum(extra)
            extra_given += sum(extra)
        for i, p in enumerate(problems):
            if any(x >= self.solved_threshold for x in rewards[i]):
                self.remember(p)
        seeded_idx, seeded_problems = [], []
        if self.seeding:
            for i, p in enumerate(problems):
                if all(x <= 0 for x in rewards[i]):
                    ex = self.exemplars(p)
                    if ex:
                        seeded_idx.append(i)
                        seeded_problems.append(self.seeded(p, ex))
        out_problems = list(problems)
        solved_seeded = 0
        if seeded_idx:
            for batch, origin in pieces:
                origin[:] = [-1 if o in seeded_idx else o for o in origin]
            batch = sample(seeded_problems, [len(rewards[i]) for i in seeded_idx])
            pieces.append((batch, list(seeded_idx)))
            for i, sp in zip(seeded_idx, seeded_problems):
                out_problems[i] = sp
            got = [0.0] * len(seeded_idx)
            for g, rew in zip(batch.group.tolist(), batch.rewards.tolist()):
                got[g] = max(got[g], rew)
            solved_seeded = sum(x >= self.solved_threshold for x in got)
        self.last_metrics = {"budget/xrpo_extra": float(extra_given), "budget/xrpo_seeded": float(len(seeded_idx)),
                             "budget/xrpo_seeded_solved": float(solved_seeded),
                             "budget/rollouts": float(sum(len(x) for x in rewards))}
        self._total = None
        return merge(pieces, out_problems) if len(pieces) > 1 else first

    def observe(self, stats):
        return dict(getattr(self, "last_metrics", {}))
