"""Knapsack RL: give each problem the number of rollouts that maximises total learning value.

Li et al., "Knapsack RL: Unlocking Exploration of LLMs via Optimizing Budget Allocation",
arXiv:2509.25849 (code: liziniu/KnapsackRL, ``verl/trainer/ppo/exploration_utils.py``,
per-prompt state in ``verl/utils/dataset/rl_dataset.py``). Followed exactly by default:

State per problem key: the number of rewards seen and the rewards of the recent visits.
p̂ = mean of the last visit; if that visit had fewer than ``reward_buffer_length`` (16)
rewards, the mean of the most recent 16 rewards across visits. Valid once
``min_buffer_length`` (8) rewards were seen.

    ProbNonZeroGrad(N, p) = 1 − p^N − (1 − p)^N,   InfoGain(p) = p(1 − p)^2
    Value(N, p)           = ProbNonZeroGrad(N, p) · InfoGain(p)

1. invalid problems (no history yet, or fewer than ``min_buffer_length`` rewards) get ``n``
   (the default group size, total / #problems); valid ones with 0 < p < 1 get ``min_n``,
   p = 0 get ``negative_n``, p = 1 get ``positive_n``.
2. cost of 0 < p < 1: log(1 − α)/log(max(p, 1 − p)) (``cost="probability"``), or
   1/(p(1 − p)) − 1 (``cost="expectation"``).
3. the "zero" problems that receive spare budget are, with ``unseen_as_zero=True``
   (default, as the code), the p = 0 problems AND the invalid ones: the code's array of
   success rates starts at 0 and only valid problems overwrite it, so its ``success_rate
   == 0`` test also picks the problems with no history. With ``unseen_as_zero=False`` only
   the valid p = 0 problems count (an earlier explorl choice: spare budget goes to problems
   known to be unsolved, not to unknown ones, which already have ``n``). E.g. rates
   [invalid, invalid, 0, 0.5], total 32, max_n 16 (n = 8): the code and the default give
   [11, 11, 5, 5], ``unseen_as_zero=False`` gives [8, 8, 11, 5].
   With no 0 < p < 1 problem, the rest goes evenly to the zero problems (or, with none,
   every problem gets ``n``, i.e. the total spread evenly); else, fallback: if
   Σ ⌊min(max_n, cost)⌋ is below the rest, the surplus goes evenly to the zero problems (or
   to every other problem if there is none), and only Σ ⌊min(max_n, cost)⌋ is left for
   step 4. If every problem has 0 < p < 1 there is no other problem to take the surplus:
   the code divides by zero there; explorl skips the fallback (the whole rest goes to step
   4, whose unusable remainder is spread evenly) and reports it as
   ``budget/fallback_no_target`` = 1.
4. exact multiple-choice knapsack DP over the 0 < p < 1 problems: extra k ∈ 1..max_n − min_n
   with value Value(k + min_n, p) and weight k (or the item unchosen: k = 0, value 0, as in the
   code), exactly filling the largest reachable capacity ≤ the rest; an unusable remainder is
   spread evenly over those problems.
The total always equals ``total``. GRPO is otherwise unchanged.

Choice: ``key="id"`` keys the state by ``Problem.id`` as in the paper (a stable prompt id).
Procedural testbed sources rarely repeat an id under a curriculum that draws fresh problems,
so the state would stay invalid and the method would equal ``fixed``; ``key="params"`` keys
it by source and difficulty parameters instead (one "prompt" per difficulty cell), and a
pool curriculum (``learnability``) makes ids recur.
"""
from __future__ import annotations

import math

import numpy as np

from explorl.explore.acted import Acted
from explorl.explore.base import Budget
from explorl.registry import register


def value(n: int, p: float) -> float:
    """Expected learning value of ``n`` rollouts on a problem of success rate ``p``."""
    return (1 - p ** n - (1 - p) ** n) * p * (1 - p) ** 2


def solve_dp(rates: list[float], min_n: int, max_extra: int, budget: int) -> tuple[list[int], int]:
    """Exact multiple-choice knapsack: extra rollouts k_i ∈ 0..max_extra with Σ k_i = the
    largest reachable capacity ≤ ``budget`` maximising Σ g_i(k_i), where g_i(k) =
    Value(k + min_n, p_i) for k ≥ 1 and g_i(0) = 0 (an item not chosen scores nothing, as in
    the code's 0/1 multiple-choice DP — not Value(min_n, p_i)).

    Returns ``(extras, used)``. dp[i][w] is the best value of the first i items using exactly
    w units (−inf if unreachable); the extras are recovered by backtracking.
    """
    m = len(rates)
    if m == 0 or budget <= 0:
        return [0] * m, 0
    dp = np.full(budget + 1, -np.inf)
    dp[0] = 0.0
    choice = np.zeros((m, budget + 1), dtype=np.int64)
    for i, p in enumerate(rates):
        gains = [0.0] + [value(k + min_n, p) if 0 < p < 1 else 0.0 for k in range(1, max_extra + 1)]
        best, arg = dp.copy(), np.zeros(budget + 1, dtype=np.int64)  # k = 0
        for k in range(1, min(max_extra, budget) + 1):
            cand = np.full(budget + 1, -np.inf)
            cand[k:] = dp[:-k] + gains[k]
            better = cand > best
            best[better], arg[better] = cand[better], k
        dp, choice[i] = best, arg
    used = int(np.flatnonzero(dp > -np.inf).max())
    extras, w = [0] * m, used
    for i in range(m - 1, -1, -1):
        extras[i] = int(choice[i, w])
        w -= extras[i]
    return extras, used


def spread(amount: int, indices: list[int], out: list[int]) -> None:
    """Add ``amount`` evenly over ``indices`` of ``out`` (the first ones get the remainder)."""
    base, rem = divmod(amount, len(indices))
    for j, i in enumerate(indices):
        out[i] += base + (1 if j < rem else 0)


def knapsack_allocate(rates: list[float | None], total: int, n: int, min_n: int = 2, max_n: int = 128,
                      negative_n: int = 2, positive_n: int = 2, alpha: float = 0.9,
                      cost: str = "probability", fallback: bool = True,
                      unseen_as_zero: bool = True) -> tuple[list[int], dict]:
    """Rollouts per problem from success rates (``None`` = invalid / unknown).

    ``unseen_as_zero``: the invalid problems join the p = 0 ones when spare budget is spread
    (as the authors' code); ``False``: only the valid p = 0 problems do.
    """
    counts, effective, zeros = [], [], []
    for i, p in enumerate(rates):
        if p is None:
            counts.append(n)
            if unseen_as_zero:
                zeros.append(i)
        elif 0 < p < 1:
            counts.append(min_n)
            effective.append(i)
        elif p == 0:
            counts.append(negative_n)
            zeros.append(i)
        else:
            counts.append(positive_n)
    rest = total - sum(counts)
    if rest < 0:
        raise ValueError(f"budget knapsack: the initial allocation {sum(counts)} exceeds the total {total}; "
                         f"lower min_n / negative_n / positive_n")
    info = {"fallback": 0.0, "fallback_no_target": 0.0, "effective": float(len(effective))}
    if not effective:
        if rest > 0:
            if zeros:
                spread(rest, zeros, counts)
            else:  # the code's "every problem gets n" (= total spread evenly)
                counts = [0] * len(rates)
                spread(total, list(range(len(rates))), counts)
        return counts, info
    if fallback:
        def c(p):
            return math.log(1 - alpha) / math.log(max(p, 1 - p)) if cost == "probability" else 1 / (p * (1 - p)) - 1
        estimated = sum(int(min(max_n, c(rates[i]))) for i in effective)
        others = zeros or [i for i in range(len(rates)) if i not in effective]
        if estimated < rest and others:
            spread(rest - estimated, others, counts)
            info["fallback"] = 1.0
            rest = estimated
        elif estimated < rest:  # every problem has 0 < p < 1: the code divides by zero here
            info["fallback_no_target"] = 1.0
    extras, used = solve_dp([rates[i] for i in effective], min_n, max_n - min_n, rest)
    for i, k in zip(effective, extras):
        counts[i] += k
    if rest - used > 0:
        spread(rest - used, effective, counts)
    return counts, info


@register("budget", "knapsack", paper="Knapsack RL, Li et al., arXiv:2509.25849")
class Knapsack(Budget):
    engaged_when = (Acted("budget/frac_moved", ">=", 0.1,
                          what="allocations differ from the fixed count in >= 10% of problems"),)
    state_keys = ("history",)

    def __init__(self, n: int | None = None, min_n: int = 2, max_n: int = 128, negative_n: int = 2,
                 positive_n: int = 2, alpha: float = 0.9, cost: str = "probability", fallback: bool = True,
                 min_buffer_length: int = 8, reward_buffer_length: int = 16, key: str = "id",
                 unseen_as_zero: bool = True):
        if min(min_n, negative_n, positive_n) < 1 or max_n < min_n:
            raise ValueError("budget knapsack: need min_n, negative_n, positive_n >= 1 and max_n >= min_n")
        if cost not in ("probability", "expectation"):
            raise ValueError(f"budget knapsack: cost must be probability or expectation, got {cost!r}")
        if key not in ("id", "params"):
            raise ValueError(f"budget knapsack: key must be id or params, got {key!r}")
        if not 0 < alpha < 1:
            raise ValueError(f"budget knapsack: alpha must be in (0, 1), got {alpha}")
        self.n, self.min_n, self.max_n = n, min_n, max_n
        self.negative_n, self.positive_n, self.alpha = negative_n, positive_n, alpha
        self.cost, self.fallback, self.key, self.unseen_as_zero = cost, fallback, key, unseen_as_zero
        self.min_buffer_length, self.reward_buffer_length = min_buffer_length, reward_buffer_length
        # key -> {"visits": rewards of the recent visits (enough to cover the buffer), "count": all seen}
        self.history: dict[str, dict] = {}

    def fewest_rollouts(self, rollouts_per_problem):
        return min(self.min_n, self.negative_n, self.positive_n, self.n or rollouts_per_problem)

    def problem_key(self, problem) -> str:
        if self.key == "id":
            return problem.id
        return problem.source + "/" + "-".join(f"{k}{problem.params[k]:g}" for k in sorted(problem.params))

    def success_rate(self, problem) -> float | None:
        state = self.history.get(self.problem_key(problem))
        if state is None or state["count"] < self.min_buffer_length:
            return None
        visits = state["visits"]
        last = visits[-1]
        if len(last) >= self.reward_buffer_length:
            return sum(last) / len(last)
        recent = [r for v in reversed(visits) for r in reversed(v)][:self.reward_buffer_length]
        return sum(recent) / len(recent)

    def allocate(self, problems, total):
        n = self.n if self.n is not None else max(1, total // max(1, len(problems)))
        rates = [self.success_rate(p) for p in problems]
        counts, info = knapsack_allocate(rates, total, n, self.min_n, self.max_n, self.negative_n,
                                         self.positive_n, self.alpha, self.cost, self.fallback,
                                         self.unseen_as_zero)
        return counts, {"budget/rollouts": float(sum(counts)), "budget/largest_n": float(max(counts)),
                        "budget/frac_moved": sum(c != n for c in counts) / max(1, len(counts)),
                        "budget/frac_valid": sum(r is not None for r in rates) / max(1, len(rates)),
                        "budget/fallback": info["fallback"],
                        "budget/fallback_no_target": info["fallback_no_target"]}

    def observe(self, stats):
        for problem, rewards in zip(stats.problems, stats.rewards):
            if not rewards:
                continue
            state = self.history.setdefault(self.problem_key(problem), {"visits": [], "count": 0})
            state["visits"].append([float(r) for r in rewards])
            state["count"] += len(rewards)
            while len(state["visits"]) > 1 and sum(map(len, state["visits"][1:])) >= self.reward_buffer_length:
                state["visits"].pop(0)  # older visits no longer enter p̂
        return {}
