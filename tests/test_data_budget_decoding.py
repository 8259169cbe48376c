"""Curricula (DUMP, ALP-GMM, learnability, bandit), budgets (BroRL, Knapsack, XRPO, DAPO
dynamic sampling) and EAD decoding: each against its defining behaviour, plus recipes,
checkpointed state and a two-step run of every recipe."""
import hashlib
import itertools
import math
import random

import pytest
import torch

from explorl.explore.base import LossContext, StepStats
from explorl.explore.budget.broad import Broad, plan_chunks
from explorl.explore.budget.dynamic_sampling import DynamicSampling, informative_groups
from explorl.explore.budget.fixed import Fixed
from explorl.explore.budget.knapsack import Knapsack, knapsack_allocate, solve_dp, value
from explorl.explore.budget.xrpo import XRPO, allocate_round, priority, sample_std, t_quantile
from explorl.explore.curriculum.alp_gmm import ALPGMM
from explorl.explore.curriculum.bandit import Bandit, ips_estimate
from explorl.explore.curriculum.dump import DUMP
from explorl.explore.curriculum.learnability import Learnability
from explorl.explore.decoding.ead import EAD
from explorl.explore.objective.ppo_clip import PPOClip
from explorl.policy.engine import RolloutEngine
from explorl.tasks import Problem, TaskMix
from explorl.train.plugins import plugin_states
from explorl.batch import RolloutBatch

RECIPES = ["dump", "alp_gmm", "learnability", "bandit", "broad", "knapsack", "xrpo", "dynamic_sampling", "ead",
           "east"]


# ---- helpers ------------------------------------------------------------------------------
def mix(**sources):
    return TaskMix.from_config(sources or {"addition": {"digits": [1, 3]}, "multiplication": {"digits": [1, 2]},
                                           "sorting": {"length": [2, 6]}})


def stats(problems, rewards, advantages=None, step=1):
    advantages = advantages or [[0.0] * len(r) for r in rewards]
    return StepStats(step=step, problems=problems, rewards=rewards, advantages=advantages, entropy=0.0, tokens=0)


def stable_unit(*parts) -> float:
    """A deterministic number in [0, 1) from ``parts`` (synthetic environments)."""
    return int(hashlib.md5(":".join(map(str, parts)).encode()).hexdigest()[:8], 16) / 2**32


def fake_batch(problems, counts, reward):
    """A scored batch without a model: ``reward(problem, k)`` for the k-th rollout of a problem."""
    R = sum(counts)
    group = torch.repeat_interleave(torch.arange(len(problems)), torch.tensor(counts))
    slot = [k for c in counts for k in range(c)]
    return RolloutBatch(
        problems=list(problems), counts=list(counts), group=group,
        prompt_ids=torch.ones(len(problems), 2, dtype=torch.long), prompt_mask=torch.ones(len(problems), 2),
        response_ids=torch.ones(R, 3, dtype=torch.long), mask=torch.ones(R, 3), behaviour_logp=torch.zeros(R, 3),
        old_logp=torch.zeros(R, 3), entropy=torch.zeros(R, 3),
        texts=[f"{problems[g].id}#{k}" for g, k in zip(group.tolist(), slot)],
        rewards=torch.tensor([float(reward(problems[g], k)) for g, k in zip(group.tolist(), slot)]))


class Sampler:
    """``sample(problems, counts)`` for budgets: records every call's problems and rows."""

    def __init__(self, reward):
        self.reward, self.calls = reward, []

    def __call__(self, problems, counts):
        self.calls.append((list(problems), list(counts)))
        return fake_batch(problems, counts, self.reward)

    @property
    def rows(self):
        return [sum(c) for _, c in self.calls]


def problem(i, source="addition", **params):
    return Problem(id=f"{source}/{i}", prompt=f"{i}+0=", answer=str(i), source=source, params=params or {"digits": 1})


def group_rewards(batch):
    out = [[] for _ in batch.problems]
    for g, r in zip(batch.group.tolist(), batch.rewards.tolist()):
        out[g].append(r)
    return out


# ---- DUMP ---------------------------------------------------------------------------------
def test_dump_weight_moves_to_the_source_with_largest_windowed_mean_abs_advantage():
    cur = DUMP(window=50, c=1.0, tau=0.1)
    cur.bind(mix(), seed=0)
    for _ in range(5):
        probs = [cur.tasks.sample(cur.rng, source=s) for s in ("addition", "multiplication", "sorting") for _ in range(4)]
        scale = {"addition": 0.1, "multiplication": 1.0, "sorting": 0.3}
        advs = [[scale[p.source] * (1 if k % 2 else -1) for k in range(8)] for p in probs]
        cur.observe(stats(probs, [[0.0] * 8 for _ in probs], advs))
    weights = cur.probabilities()
    assert max(weights, key=weights.get) == "multiplication" and weights["multiplication"] > 0.9
    problems, metrics = cur.next(200)
    assert metrics["curriculum/weight/multiplication"] == pytest.approx(weights["multiplication"])
    assert sum(p.source == "multiplication" for p in problems) > 160
    # the window forgets: old large advantages leave after `window` responses
    for _ in range(8):
        probs = [cur.tasks.sample(cur.rng, source="multiplication") for _ in range(8)]
        cur.observe(stats(probs, [[0.0] * 8 for _ in probs], [[0.0] * 8 for _ in probs]))
    assert cur.scores()["multiplication"] < cur.scores()["sorting"]


def test_dump_unvisited_source_gets_the_exploration_bonus():
    cur = DUMP(window=300, c=1.0, tau=0.1)
    cur.bind(mix(), seed=0)
    assert cur.probabilities() == pytest.approx({s: 1 / 3 for s in cur.sources})  # nothing seen: uniform
    probs = [cur.tasks.sample(cur.rng, source=s) for s in ("addition", "multiplication") for _ in range(10)]
    cur.observe(stats(probs, [[0.0] * 8 for _ in probs], [[0.5, -0.5] * 4 for _ in probs]))
    ucb, N = cur.scores(), 160
    assert ucb["sorting"] == pytest.approx(math.sqrt(2 * math.log(N + 1) / 1))
    assert ucb["addition"] == pytest.approx(0.5 + math.sqrt(2 * math.log(N + 1) / 81))
    assert max(cur.probabilities(), key=cur.probabilities().get) == "sorting"
    # the probabilities are softmax(UCB / τ)
    exps = {s: math.exp(ucb[s] / 0.1) for s in ucb}
    assert cur.probabilities() == pytest.approx({s: e / sum(exps.values()) for s, e in exps.items()})
    # c scales the exploration term: c = 0.5 on the same observations
    half = DUMP(window=300, c=0.5, tau=0.1)
    half.bind(mix(), seed=0)
    half.observe(stats(probs, [[0.0] * 8 for _ in probs], [[0.5, -0.5] * 4 for _ in probs]))
    assert half.scores()["addition"] == pytest.approx(0.5 + 0.5 * math.sqrt(2 * math.log(N + 1) / 81))
    assert half.scores()["sorting"] == pytest.approx(0.5 * math.sqrt(2 * math.log(N + 1)))


# ---- ALP-GMM ------------------------------------------------------------------------------
def alp_env(p, step):
    """Long reversals are noisy (learning progress), everything else is constant."""
    if p.source == "reversal" and p.params["length"] >= 8:
        return [stable_unit(p.id, step)] * 4
    return [1.0 if p.source == "addition" else 0.0] * 4


def test_alp_gmm_concentrates_where_learning_progress_is_high_and_keeps_the_random_ratio():
    cur = ALPGMM(fit_rate=64, random_task_ratio=0.2, k_max=6)
    cur.bind(mix(addition={"digits": [1, 5]}, reversal={"length": [2, 10]}), seed=0)
    for step in range(14):
        problems, m = cur.next(32)
        if step < 2:
            assert m["curriculum/random_frac"] == 1.0  # bootstrap: uniform tasks only
        cur.observe(stats(problems, [alp_env(p, step) for p in problems]))
    assert cur.gmm is not None
    problems, m = cur.next(2000)
    assert m["curriculum/random_frac"] == pytest.approx(0.2, abs=0.03)
    hot = sum(p.source == "reversal" and p.params["length"] >= 8 for p in problems) / len(problems)
    # uniform sampling would give 0.5 * 3/9 = 0.17; GMM samples (80%) go to the high-ALP region
    assert hot > 0.6


# ---- learnability -------------------------------------------------------------------------
def test_learnability_samples_always_and_never_solved_problems_less():
    cur = Learnability(pool_size=30, ema=1.0)
    cur.bind(mix(addition={"digits": [1, 3]}), seed=0)
    pool = [cur.problem("addition", s) for s in cur.pool["addition"]]
    kind = {p.id: ("easy", "hard", "mid")[i % 3] for i, p in enumerate(pool)}
    reward = {"easy": [1.0] * 8, "hard": [0.0] * 8, "mid": [1.0, 0.0] * 4}
    cur.observe(stats(pool, [reward[kind[p.id]] for p in pool]))
    counts = {"easy": 0, "hard": 0, "mid": 0}
    for _ in range(100):
        for p in cur.next(5)[0]:
            counts[kind[p.id]] += 1
    assert counts["mid"] > 0.85 * 500
    assert counts["easy"] < 0.1 * counts["mid"] and counts["hard"] < 0.1 * counts["mid"]


def test_learnability_estimate_is_an_ema_of_the_success_rate():
    cur = Learnability(pool_size=4, ema=0.25)
    cur.bind(mix(addition={"digits": [1, 3]}), seed=0)
    p = cur.problem("addition", cur.pool["addition"][0])
    cur.observe(stats([p], [[1.0, 1.0, 0.0, 0.0]]))        # first visit: p̂ = 0.5
    cur.observe(stats([p], [[1.0] * 4]))                    # then 0.75 · 0.5 + 0.25 · 1 = 0.625
    assert cur.p_hat[p.id] == pytest.approx(0.625)
    score = {q.id: s for q, s in cur.candidates()}
    assert score[p.id] == pytest.approx(0.625 * 0.375 * cur.tasks.weights["addition"])   # p̂(1 − p̂)


def test_learnability_prefers_unseen_problems_at_the_optimistic_prior():
    cur = Learnability(pool_size=10, floor=1e-4)
    cur.bind(mix(addition={"digits": [1, 3]}), seed=1)
    pool = [cur.problem("addition", s) for s in cur.pool["addition"]]
    cur.observe(stats(pool[:5], [[1.0] * 4 for _ in pool[:5]]))
    chosen = cur.next(5)[0]
    assert {p.id for p in chosen} == {p.id for p in pool[5:]}


# ---- bandit with logged propensities ------------------------------------------------------
STEPS = 30


def success_rate(source, step):
    """Learning progress on multiplication only: its success rate climbs 0.05 -> 0.92 over the
    run while addition and sorting stay flat (their step means still move by sampling noise)."""
    if source == "multiplication":
        return 0.05 + 0.03 * step
    return {"addition": 0.2, "sorting": 0.9}[source]


def test_bandit_logs_every_propensity_and_ips_recovers_another_curriculums_value():
    cur = Bandit(gamma=0.3, lr=0.5)
    cur.bind(mix(), seed=0)
    env = random.Random(0)
    moving = []
    for step in range(STEPS):
        before = cur.probabilities()
        problems, m = cur.next(32)
        entries = cur.log[-32:]
        assert [e["id"] for e in entries] == [p.id for p in problems]
        assert all(e["propensity"] == pytest.approx(before[e["source"]]) for e in entries)
        assert m["curriculum/propensity_mean"] == pytest.approx(sum(e["propensity"] for e in entries) / 32)
        rewards = [[float(env.random() < success_rate(p.source, step)) for _ in range(8)] for p in problems]
        cur.observe(stats(problems, rewards, step=step))
        moving.append(cur.probabilities()["multiplication"])
    assert len(cur.log) == STEPS * 32 and all(e["reward"] is not None for e in cur.log)
    # the learning-progress source gains weight; the flat ones (noise only) fall behind
    probs, w = cur.probabilities(), cur.log_weights
    assert w["multiplication"] > 1.5 * max(w["addition"], w["sorting"])
    assert probs["multiplication"] > max(probs["addition"], probs["sorting"]) + 0.1
    assert 1 / 3 < moving[9] < moving[19] < moving[-1] and moving[-1] > 0.4
    # IPS on a non-stationary environment: the value of a stationary target is the mean over
    # steps of sum_j target(j) * success_j(step)
    for target in ({s: 1 / 3 for s in probs}, {"addition": 0.6, "multiplication": 0.3, "sorting": 0.1}):
        true = sum(target[s] * success_rate(s, t) for s in target for t in range(STEPS)) / STEPS
        assert ips_estimate(cur.log, target) == pytest.approx(true, abs=0.04)
        assert ips_estimate(cur.log, target, self_normalize=True) == pytest.approx(true, abs=0.04)
    # a target given as a function of the entry (e.g. another logged bandit) works the same way
    assert ips_estimate(cur.log, lambda e: 1.0 if e["source"] == "sorting" else 0.0) == pytest.approx(0.9, abs=0.06)
    # the logging policy itself: every weight is 1, IPS is the mean logged reward
    assert ips_estimate(cur.log, lambda e: e["propensity"]) == pytest.approx(
        sum(e["reward"] for e in cur.log) / len(cur.log))


# ---- BroRL: large N in bounded chunks -----------------------------------------------------
def test_broad_large_n_runs_within_the_memory_of_a_small_one():
    problems = [problem(i) for i in range(4)]
    small = Sampler(lambda p, k: k % 2)
    Fixed(n=4).collect(small, problems, Fixed(n=4).allocate(problems, 16)[0])
    big_budget = Broad(n=64, chunk_rollouts=16)
    counts, _ = big_budget.allocate(problems, 16)
    big = Sampler(lambda p, k: k % 2)
    batch = big_budget.collect(big, problems, counts)
    assert max(big.rows) <= max(small.rows) == 16
    assert batch.counts == [64] * 4 and batch.size == 256 and batch.problems == problems
    # every group is whole and holds only its own problem's rollouts
    for g, text in zip(batch.group.tolist(), batch.texts):
        assert text.startswith(problems[g].id + "#")
    assert torch.equal(batch.group, torch.repeat_interleave(torch.arange(4), 64))
    assert plan_chunks([5, 3, 9], 4) == [[(0, 4)], [(0, 1), (1, 3)], [(2, 4)], [(2, 4)], [(2, 1)]]


def test_broad_merged_chunks_match_the_training_forward(tiny_model):
    engine = RolloutEngine(*tiny_model)
    problems = [Problem(id=str(i), prompt=p, answer="", source="x") for i, p in enumerate(["12+3=", "9=", "rev:abc="])]
    calls = []

    def sample(probs, ns):
        calls.append(sum(ns))
        return engine.rollout(probs, ns, [1.0] * 5, seed=len(calls))
    batch = Broad(n=7, chunk_rollouts=5).collect(sample, problems, [7, 7, 7])
    assert max(calls) <= 5 and batch.counts == [7, 7, 7]
    logits = engine.response_logits(batch).detach()
    logp = torch.log_softmax(logits, -1).gather(-1, batch.response_ids[..., None]).squeeze(-1)
    assert torch.allclose(logp * batch.mask, batch.old_logp, atol=1e-5)  # prompts line up with their rollouts


# ---- Knapsack RL --------------------------------------------------------------------------
def test_knapsack_dp_is_exact_against_brute_force():
    rng = random.Random(0)
    for _ in range(25):
        m, max_extra, budget, min_n = rng.randint(1, 3), rng.randint(1, 4), rng.randint(0, 9), rng.randint(1, 3)
        rates = [rng.uniform(0.05, 0.95) for _ in range(m)]
        extras, used = solve_dp(rates, min_n, max_extra, budget)
        reachable = min(budget, m * max_extra)
        def score(ks):  # an unchosen item (k = 0) scores 0, as in the authors' DP
            return sum(value(k + min_n, p) if k else 0.0 for k, p in zip(ks, rates))
        best = max(score(ks) for ks in itertools.product(range(max_extra + 1), repeat=m) if sum(ks) == reachable)
        assert used == reachable == sum(extras) and all(0 <= k <= max_extra for k in extras)
        assert score(extras) == pytest.approx(best)


def test_knapsack_total_is_respected():
    rng = random.Random(1)
    for _ in range(40):
        B = rng.randint(1, 12)
        n = rng.randint(2, 10)
        rates = [rng.choice([None, 0.0, 1.0, rng.random()]) for _ in range(B)]
        counts, _ = knapsack_allocate(rates, B * n, n, min_n=2, max_n=rng.randint(2, 40))
        assert sum(counts) == B * n and min(counts) >= 1


def test_knapsack_gives_hard_but_solvable_problems_more():
    # success rates: easy, medium, hard-but-solvable, unsolved, solved; 5 problems x 8 rollouts
    counts, info = knapsack_allocate([0.9, 0.5, 0.15, 0.0, 1.0], 40, 8, min_n=2, max_n=128)
    assert sum(counts) == 40 and info["fallback"] == 0.0
    assert counts[2] == max(counts) and counts[2] > counts[1] > counts[0]
    assert counts[3] == 2 and counts[4] == 2  # negative_n / positive_n
    # through the budget: per-problem history keyed by Problem.id (valid after 8 rewards)
    budget = Knapsack()
    probs = [problem(i) for i in range(3)]
    budget.observe(stats(probs, [[1.0] * 7 + [0.0], [1.0, 0.0] * 4, [0.0] * 7 + [1.0]]))
    counts, m = budget.allocate(probs + [problem(9)], 32)
    assert sum(counts) == 32 and counts[3] == 8 and counts[2] == max(counts[:3]) and m["budget/frac_valid"] == 0.75


def test_knapsack_success_rate_history_across_visits_of_different_sizes():
    budget = Knapsack(min_buffer_length=5, reward_buffer_length=6)
    a, b, c = problem(1), problem(2), problem(3)
    visits = [[1.0, 0.0, 1.0], [0.0, 0.0], [1.0, 1.0, 1.0, 1.0], [0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0], [1.0]]
    expected = [
        None,     # 3 rewards seen < min_buffer_length 5: invalid
        2 / 5,    # last visit 2 < 6: the most recent 6 across visits, only 5 exist: (0+0 + 1+0+1)/5
        4 / 6,    # last visit 4 < 6: 1,1,1,1 then the last two of the visit before, 0,0 -> 4/6
        2 / 7,    # last visit 7 >= 6: its own mean (all 7 rewards, not only the last 6)
        2 / 6,    # last visit 1 < 6: 1, then the LAST five of the 7-visit (0,0,0,1,0 read backwards) -> 2/6
    ]             # (its first five would give 3/6)
    assert budget.success_rate(a) is None and budget.success_rate(c) is None  # never seen
    for rewards, expect in zip(visits, expected):
        budget.observe(stats([a, b], [rewards, []]))  # an empty group leaves no trace
        got = budget.success_rate(a)
        assert got == (None if expect is None else pytest.approx(expect)), (rewards, got)
    assert budget.success_rate(b) is None and budget.problem_key(b) not in budget.history
    budget.observe(stats([c], [[1.0] * 4]))
    assert budget.success_rate(c) is None          # 4 < 5 rewards
    budget.observe(stats([c], [[0.0]]))
    assert budget.success_rate(c) == pytest.approx(4 / 5)
    budget.observe(stats([c], [[0.0] * 6]))        # a full visit replaces the history
    assert budget.success_rate(c) == 0.0
    restored = Knapsack(min_buffer_length=5, reward_buffer_length=6)
    restored.load_state_dict(budget.state_dict())
    assert restored.success_rate(a) == pytest.approx(2 / 6)


def knapsack_with_history(**kwargs):
    """Problems 0, 1 unseen; problem 2 with p = 0; problem 3 with p = 0.5 (8 rewards each)."""
    budget = Knapsack(max_n=16, **kwargs)
    probs = [problem(i) for i in range(4)]
    budget.observe(stats(probs[2:], [[0.0] * 8, [1.0, 0.0] * 4]))
    return budget, probs


def test_knapsack_spreads_spare_budget_like_the_authors_code_by_default():
    # rates [unseen, unseen, 0, 0.5], total 32 over 4 problems: n = 8, min_n = negative_n = 2.
    # initial: [8, 8, 2, 2] = 20, rest 12. cost(0.5) = log(0.1)/log(0.5) = 3.32 -> 3 < 12: fallback.
    # The authors' success-rate array is 0 for the unseen problems, so "p = 0" is {0, 1, 2}:
    # the surplus 12 - 3 = 9 goes 3 each -> [11, 11, 5, 2]; the DP gets 3 for problem 3 -> [11, 11, 5, 5].
    counts, info = knapsack_allocate([None, None, 0.0, 0.5], 32, 8, max_n=16)
    assert counts == [11, 11, 5, 5] and info["fallback"] == 1.0
    budget, probs = knapsack_with_history()
    assert budget.unseen_as_zero is True
    counts, m = budget.allocate(probs, 32)
    assert counts == [11, 11, 5, 5] and m["budget/fallback"] == 1.0 and m["budget/frac_valid"] == 0.5
    # unseen_as_zero=False: only problem 2 takes the surplus 9 -> [8, 8, 11, 2], then the DP's 3
    counts, info = knapsack_allocate([None, None, 0.0, 0.5], 32, 8, max_n=16, unseen_as_zero=False)
    assert counts == [8, 8, 11, 5] and info["fallback"] == 1.0
    budget, probs = knapsack_with_history(unseen_as_zero=False)
    assert budget.allocate(probs, 32)[0] == [8, 8, 11, 5]
    # with no 0 < p < 1 problem, the same rule: [unseen, 0, 1], total 12, n = 4 -> [4, 2, 2], rest 4
    assert knapsack_allocate([None, 0.0, 1.0], 12, 4) == ([6, 4, 2], pytest.approx(dict(
        fallback=0.0, fallback_no_target=0.0, effective=0.0)))          # 2 each to {0, 1}
    assert knapsack_allocate([None, 0.0, 1.0], 12, 4, unseen_as_zero=False)[0] == [4, 6, 2]  # all 4 to {1}
    assert knapsack_allocate([None, 1.0], 9, 4)[0] == [7, 2]             # [4, 2], rest 3 to the unseen one
    assert knapsack_allocate([None, 1.0], 9, 4, unseen_as_zero=False)[0] == [5, 4]  # no zero: 9 spread evenly
    from explorl.registry import _annotation, build, lookup
    assert lookup("budget", "knapsack").parameters()["unseen_as_zero"] is True  # shown by `explorl list`
    assert _annotation(Knapsack, "unseen_as_zero") is bool
    assert build("budget", {"name": "knapsack", "unseen_as_zero": False}).unseen_as_zero is False
    with pytest.raises(ValueError, match="unseen_as_zero"):
        build("budget", {"name": "knapsack", "unseen_as_zero": "no"})


def test_knapsack_every_problem_effective_with_budget_left_is_reported():
    # rates [0.5, 0.3], total 24, n = 12: initial [2, 2], rest 20; costs 3 + floor(6.46) = 9 < 20, but
    # there is no other problem to take the surplus (the authors' code divides by zero here): the
    # fallback is skipped, the DP gets all 20 (as with fallback=False), and a metric says so.
    counts, info = knapsack_allocate([0.5, 0.3], 24, 12)
    assert sum(counts) == 24 and info["fallback"] == 0.0 and info["fallback_no_target"] == 1.0
    assert counts == knapsack_allocate([0.5, 0.3], 24, 12, fallback=False)[0]
    assert knapsack_allocate([0.5, 0.3], 24, 12, fallback=False)[1]["fallback_no_target"] == 0.0
    assert knapsack_allocate([0.5, 0.3, 1.0], 26, 8)[1]["fallback_no_target"] == 0.0  # p = 1 takes it
    budget = Knapsack(min_buffer_length=2)
    probs = [problem(0), problem(1)]
    budget.observe(stats(probs, [[1.0, 0.0], [1.0, 0.0, 0.0]]))
    counts, m = budget.allocate(probs, 24)
    assert sum(counts) == 24 and m["budget/fallback_no_target"] == 1.0 and m["budget/fallback"] == 0.0


# ---- XRPO ---------------------------------------------------------------------------------
def test_t_quantiles_without_scipy():
    for df, expect in ((1, 12.7062), (2, 4.3027), (5, 2.5706), (30, 2.0423)):
        assert t_quantile(0.975, df) == pytest.approx(expect, abs=1e-4)


def test_xrpo_allocation_order_on_constructed_statistics():
    ns, stds = [4, 4, 8, 16], [0.5, 0.0, 0.5, 0.5]
    T = sum(ns)
    pri = [priority(n, s, T, 0.05, 0.1) for n, s in zip(ns, stds)]
    # by hand: Π = t_{.975,n-1}·s/√n − t_{.975,n}·s/√(n+1) + λ·sqrt(log(1+T)/n)
    h = lambda n, s: t_quantile(0.975, n - 1) * s / math.sqrt(n)  # noqa: E731
    for i in range(4):
        assert pri[i] == pytest.approx(h(ns[i], stds[i]) - h(ns[i] + 1, stds[i]) + 0.1 * math.sqrt(math.log(1 + T) / ns[i]))
    # uncertain with few rollouts > uncertain with more > zero-std (bonus only) > well-sampled
    assert sorted(range(4), key=lambda i: -pri[i]) == [0, 2, 1, 3]
    for budget, lam, max_n in ((1, 0.1, 64), (12, 0.1, 64), (12, 0.0, 64), (100, 0.1, 10), (0, 0.1, 64)):
        assert allocate_round(ns, stds, budget, 0.05, lam, max_n) == greedy_by_hand(ns, stds, budget, 0.05, lam, max_n)
    assert allocate_round(ns, stds, 1, 0.05, 0.1, 64) == [1, 0, 0, 0]          # the largest Π above
    assert allocate_round(ns, stds, 12, 0.05, 0.0, 64)[1] == 0                 # no bonus: zero std gets nothing
    capped = allocate_round(ns, stds, 100, 0.05, 0.1, 10)
    assert [n + k for n, k in zip(ns, capped)] == [10, 10, 10, 16]             # max_n caps, the rest is unused


def greedy_by_hand(ns, stds, budget, alpha, lam, max_n):
    """The allocation rule written out: ``budget`` times, recompute every open problem's
    Π = Δ̂ + φ from scratch (n_q and T = Σ n_q counting the rollouts given so far) and give one
    rollout to the largest (ties: the lowest index); a problem at ``max_n`` is closed."""
    def h(n, s):  # Student-t CI half-width; undefined (infinite) below two rollouts
        return math.inf if n < 2 else t_quantile(1 - alpha / 2, n - 1) * s / math.sqrt(n)

    n, extra = list(ns), [0] * len(ns)
    for _ in range(budget):
        T = sum(n)
        best, best_pi = None, -math.inf
        for q in range(len(n)):
            if n[q] >= max_n:
                continue
            delta = math.inf if n[q] < 2 else h(n[q], stds[q]) - h(n[q] + 1, stds[q])
            pi = delta + lam * math.sqrt(math.log(1 + T) / max(n[q], 1))
            if best is None or pi > best_pi:
                best, best_pi = q, pi
        if best is None:
            break
        n[best] += 1
        extra[best] += 1
    return extra


def test_xrpo_allocation_equals_the_greedy_rule_on_random_statistics():
    rng = random.Random(0)
    for _ in range(60):
        m = rng.randint(1, 6)
        ns = [rng.randint(2, 12) for _ in range(m)]
        stds = [sample_std([float(rng.random() < rng.random()) for _ in range(n)]) for n in ns]
        if rng.random() < 0.3:
            stds[0] = stds[-1]  # equal statistics: ties
            ns[0] = ns[-1]
        budget, lam, max_n = rng.randint(0, 40), rng.choice([0.0, 0.1, 0.5]), rng.randint(4, 24)
        ns = [min(n, max_n) for n in ns]
        got = allocate_round(ns, stds, budget, 0.05, lam, max_n)
        assert got == greedy_by_hand(ns, stds, budget, 0.05, lam, max_n), (ns, stds, budget, lam, max_n)
        assert sum(got) == min(budget, sum(max_n - n for n in ns))


def test_xrpo_seeds_only_problems_whose_rollouts_all_failed():
    solved, failed, mixed = problem(1), problem(2), problem(3, digits=2)  # `solved` is the nearest exemplar
    lonely = problem(4, source="sorting", length=3)  # fails, but no solved sorting exemplar exists
    outcome = {solved.id: lambda k: 1.0, failed.id: lambda k: 0.0, mixed.id: lambda k: float(k % 2), lonely.id: lambda k: 0.0}
    sampler = Sampler(lambda p, k: 1.0 if p.context else outcome[p.id](k))
    budget = XRPO(rounds=2, seed=0)
    probs = [solved, failed, mixed, lonely]
    counts, _ = budget.allocate(probs, 32)
    assert counts == [4] * 4
    batch = budget.collect(sampler, probs, counts)
    seeded_calls = [c for c in sampler.calls if any(p.context for p in c[0])]
    assert len(seeded_calls) == 1 and [p.id for p in seeded_calls[0][0]] == [failed.id]
    out = batch.problems
    assert [p.id for p in out] == [p.id for p in probs]
    assert out[1].context == solved.prompt + solved.answer + ";"
    assert (out[1].prompt, out[1].answer, out[1].source) == (failed.prompt, failed.answer, failed.source)
    assert out[0].context == out[2].context == out[3].context == ""
    rewards = group_rewards(batch)
    assert all(r == 1.0 for r in rewards[1])  # the failed group was replaced by the seeded one
    assert sum(batch.counts) == 32 and batch.counts[1] == len(rewards[1]) >= 4  # the seeded group: as many as before
    assert [e["id"] for e in budget.archive["addition"]] == [solved.id, mixed.id] and "sorting" not in budget.archive


def test_seeded_problem_keeps_verification_and_is_encoded_with_its_context(tiny_model):
    tasks = TaskMix.from_config({"countdown": {"numbers": [2, 2]}})
    p = tasks.sample(random.Random(0))
    ex = tasks.sample(random.Random(1))
    seeded = XRPO().seeded(p, [{"prompt": ex.prompt, "answer": ex.answer}])
    assert tasks.verify(seeded, p.answer) == tasks.verify(p, p.answer) == 1.0  # countdown parses the prompt
    engine = RolloutEngine(*tiny_model)
    ids, _ = engine.encode_prompts([seeded])
    assert engine.tokenizer.decode(ids[0], skip_special_tokens=True) == ex.prompt + ex.answer + ";" + p.prompt


# ---- DAPO dynamic sampling ----------------------------------------------------------------
def kinds_env():
    """Problems whose ids say whether their group is all-0, all-1 or mixed."""
    def reward(p, k):
        kind = p.id.split("/")[0]
        return {"zero": 0.0, "one": 1.0, "mixed": float(k % 2)}[kind]
    return reward


def make_draw(kinds):
    it = itertools.count()

    def draw(n):
        return [Problem(id=f"{kinds[j % len(kinds)]}/{j}", prompt="1+1=", answer="2", source="addition")
                for j in (next(it) for _ in range(n))]
    return draw


def test_dynamic_sampling_no_zero_variance_group_reaches_the_loss():
    budget = DynamicSampling(max_num_gen_batches=10)
    probs = make_draw(["zero", "mixed", "one", "zero"])(8)
    counts, _ = budget.allocate(probs, 32)
    sampler = Sampler(kinds_env())
    batch = budget.collect(sampler, probs, counts, draw=make_draw(["mixed", "one", "zero"]))
    assert len(batch.problems) == 8 and len(informative_groups(batch)) == 8
    assert all(0 < sum(r) < len(r) for r in group_rewards(batch))
    assert len(sampler.calls) == 3  # 2 kept, then 3 per refill of 8: 2 + 3 + 3 >= 8


def test_dynamic_sampling_refill_stops_at_its_limit():
    budget = DynamicSampling(max_num_gen_batches=3)
    probs = make_draw(["zero", "mixed", "one", "one"])(4)
    sampler = Sampler(kinds_env())
    batch = budget.collect(sampler, probs, [4] * 4, draw=make_draw(["zero", "one"]))
    assert len(sampler.calls) == 3
    assert len(batch.problems) == 1 and informative_groups(batch) == [0]  # trains on what it found
    nothing = Sampler(kinds_env())
    budget.collect(nothing, make_draw(["zero"])(4), [4] * 4, draw=make_draw(["one"]))
    assert len(nothing.calls) == 3 and budget.observe(None)["budget/ds_fallback"] == 1.0


def test_dynamic_sampling_replace_mode_duplicates_informative_groups():
    budget = DynamicSampling(mode="replace", min_replace_ratio=0.25, seed=0)
    probs = make_draw(["zero", "mixed", "one", "mixed"])(8)
    sampler = Sampler(kinds_env())
    batch = budget.collect(sampler, probs, [4] * 8, draw=make_draw(["zero"]))
    assert len(sampler.calls) == 1  # 4 informative of 8 >= 25%: no refill needed
    assert len(batch.problems) == 8 and len(informative_groups(batch)) == 8
    assert {p.id.split("/")[0] for p in batch.problems} == {"mixed"}


# ---- EAD ----------------------------------------------------------------------------------
def test_ead_temperature_follows_the_schedule():
    temps = EAD().temperatures(step=0, max_new_tokens=12000)
    assert torch.all(temps[:10] == 1.0)  # warm-up c = 10 at the base temperature
    assert temps[10].item() == pytest.approx(1 + 1.2 - math.exp(10 / (20 * 25)))
    assert temps[200].item() == pytest.approx(1 + 1.2 - math.exp(200 / 500))
    assert temps[-1].item() == pytest.approx(0.1)  # floor at tau_min
    assert torch.all(temps[10:][1:] <= temps[10:][:-1])  # annealed: non-increasing after warm-up
    later = EAD().temperatures(step=10, max_new_tokens=400)  # d_s = 25 + 5 * 10 = 75: slower cooling
    assert later[300].item() == pytest.approx(1 + 1.2 - math.exp(300 / (20 * 75)))
    assert EAD(decay_freq=39990).temperatures(step=100, max_new_tokens=20)[15].item() == pytest.approx(
        2.2 - math.exp(15 / (20 * 40000)))  # d_s capped at 40000
    paper = EAD(exponent_scale=1.0).temperatures(step=0, max_new_tokens=30)
    assert paper[12].item() == pytest.approx(2.2 - math.exp(12 / 25)) and paper[25].item() == pytest.approx(0.1)


def test_ead_behaviour_logprobs_are_the_tempered_ones_and_feed_the_tis_weight(tiny_model):
    model, tok = tiny_model
    engine = RolloutEngine(model, tok)
    dec = EAD(warmup_tokens=1, exponent_scale=1.0, decay_freq=8.0, decay_increase=0.0)
    temps = dec.temperatures(step=3, max_new_tokens=6)
    assert temps[0] == 1.0 and temps[1] > 1.0 and temps[5] < 1.0
    problems = [Problem(id=str(i), prompt=p, answer="", source="x") for i, p in enumerate(["12+3=", "9=", "sort:5432="])]
    batch = engine.rollout(problems, [4, 4, 4], temps, dec.top_p, seed=3)
    logits = engine.response_logits(batch).detach()
    ids = batch.response_ids[..., None]
    for t in range(batch.response_ids.shape[1]):
        m = batch.mask[:, t].bool()
        tempered = torch.log_softmax(logits[:, t] / temps[t], -1).gather(-1, ids[:, t]).squeeze(-1)
        assert torch.allclose(batch.behaviour_logp[m, t], tempered[m], atol=1e-5)
    ctx = LossContext(logp=batch.old_logp + 0.1, old_logp=batch.old_logp, behaviour_logp=batch.behaviour_logp,
                      advantages=torch.ones_like(batch.mask), mask=batch.mask)
    _, metrics = PPOClip(tis_cap=2.0).term(ctx)
    w = torch.exp(batch.old_logp - batch.behaviour_logp).clamp(max=2.0)
    assert metrics["loss/tis_weight_mean"] == pytest.approx(float((w * batch.mask).sum() / batch.mask.sum()), rel=1e-5)
    assert (w * batch.mask).sum() != batch.mask.sum()  # the correction is not trivially 1


# ---- recipes, state, end to end -----------------------------------------------------------
@pytest.mark.parametrize("name", RECIPES)
def test_recipe_loads_and_builds(name):
    from explorl.config import load_config
    from explorl.train.plugins import Plugins
    plugins = Plugins.from_config(load_config(recipe=name))
    assert name in plugins.names()


def synthetic_rewards(problems, step, n=4):
    return [[float(stable_unit(p.id, step, k) < 0.5) for k in range(n)] for p in problems]


@pytest.mark.parametrize("make", [lambda: DUMP(window=20), lambda: ALPGMM(fit_rate=16, k_max=3),
                                  lambda: Learnability(pool_size=8), lambda: Bandit()],
                         ids=["dump", "alp_gmm", "learnability", "bandit"])
def test_curriculum_state_round_trip_gives_identical_choices(make):
    tasks = mix()
    a = make()
    a.bind(tasks, seed=3)
    for step in range(4):
        problems, _ = a.next(8)
        a.observe(stats(problems, synthetic_rewards(problems, step), synthetic_rewards(problems, step + 100)))
    state = a.state_dict()
    b = make()
    b.bind(tasks, seed=99)
    b.load_state_dict(state)
    for step in range(4, 7):
        pa, _ = a.next(8)
        pb, _ = b.next(8)
        assert [p.id for p in pa] == [p.id for p in pb]
        rewards = synthetic_rewards(pa, step)
        a.observe(stats(pa, rewards))
        b.observe(stats(pb, rewards))


@pytest.mark.parametrize("make", [lambda: Knapsack(key="params", min_buffer_length=4), lambda: XRPO(),
                                  lambda: DynamicSampling(mode="replace")], ids=["knapsack", "xrpo", "dynamic_sampling"])
def test_budget_state_round_trip_gives_identical_choices(make):
    tasks, rng = mix(), random.Random(0)
    reward = lambda p, k: float(stable_unit(p.id, k) < 0.4)  # noqa: E731
    draw = lambda n: [tasks.sample(rng) for _ in range(n)]  # noqa: E731

    def step(budget, problems):
        counts, _ = budget.allocate(problems, 4 * len(problems))
        batch = budget.collect(Sampler(reward), problems, counts, draw=None)
        budget.observe(stats(batch.problems, group_rewards(batch)))
        return counts, [p.id + p.context for p in batch.problems], batch.texts

    a = make()
    for _ in range(4):
        step(a, draw(6))
    b = make()
    b.load_state_dict(a.state_dict())
    for _ in range(3):
        problems = draw(6)
        assert step(a, problems) == step(b, problems)


@pytest.fixture(scope="module")
def explorl_home(tmp_path_factory):
    return tmp_path_factory.mktemp("explorl_home")


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_trains_two_steps_end_to_end(name, tiny_overrides, explorl_home, tmp_path, monkeypatch):
    from explorl.cli import main
    monkeypatch.setenv("EXPLORL_HOME", str(explorl_home))
    sets = [o for o in tiny_overrides if not o.startswith("recipe=")]
    if name == "broad":  # keep the test fast: still several chunks per step
        sets += ["budget.n=12", "budget.chunk_rollouts=16"]
    args = ["train", "--out", str(tmp_path / name), "--recipe", name, "--steps", "2", "--quiet"]
    for o in sets:
        args += ["--set", o]
    assert main(args) == 0
    assert (tmp_path / name / "ckpt" / "latest").exists()
    if name == "bandit":  # the run's choice log, with propensities, is checkpointed
        log = plugin_states(tmp_path / name)[0]["log"]  # the curriculum is the first plug-in
        assert len(log) >= 2 * 4 and all(0 < e["propensity"] <= 1 for e in log)
        assert not math.isnan(ips_estimate(log, {"addition": 0.5, "reversal": 0.5}))


# ---- the metrics that show each mechanism acted (explorl.explore.acted) ---------------------
def test_dynamic_sampling_logs_the_groups_it_dropped_and_refilled():
    budget = DynamicSampling(max_num_gen_batches=10)
    probs = make_draw(["zero", "mixed", "one", "zero"])(8)
    budget.collect(Sampler(kinds_env()), probs, [4] * 8, draw=make_draw(["mixed", "one", "zero"]))
    m = budget.observe(None)
    # 3 batches of 8 groups, 2 + 3 + 3 informative kept: 24 − 8 dropped
    assert m["budget/ds_dropped"] == 16 and m["budget/ds_gen_batches"] == 3
    assert budget.engagement()[0].check([m])[0] and budget.engagement()[1].check([m])[0]
    all_mixed = DynamicSampling()
    all_mixed.collect(Sampler(kinds_env()), make_draw(["mixed"])(4), [4] * 4, draw=make_draw(["mixed"]))
    quiet = all_mixed.observe(None)
    assert quiet["budget/ds_dropped"] == 0 and not all_mixed.engagement()[0].check([quiet])[0]


def test_knapsack_logs_the_share_of_problems_moved_off_the_fixed_count():
    budget = Knapsack()
    probs = [problem(i) for i in range(3)]
    budget.observe(stats(probs, [[1.0] * 7 + [0.0], [1.0, 0.0] * 4, [0.0] * 7 + [1.0]]))
    counts, m = budget.allocate(probs + [problem(9)], 32)
    assert m["budget/frac_moved"] == sum(c != 8 for c in counts) / 4 and m["budget/frac_moved"] >= 0.5
    _, fresh = Knapsack().allocate([problem(i) for i in range(4)], 32)  # no history: the fixed count
    assert fresh["budget/frac_moved"] == 0 and not Knapsack().engagement()[0].check([fresh])[0]


def test_learnability_logs_how_far_its_sampling_is_from_uniform():
    cur = Learnability(pool_size=4, ema=1.0)
    cur.bind(mix(addition={"digits": [1, 3]}), seed=0)
    pool = [cur.problem("addition", s) for s in cur.pool["addition"]]
    assert cur.next(2)[1]["curriculum/weight_ratio"] == 1.0  # all unseen: uniform at the prior
    cur.observe(stats(pool[:2], [[1.0, 0.0, 0.0, 0.0], [1.0] * 4]))  # p̂ 0.25 (score 0.1875), 1 (floor 0.01)
    m = cur.next(2)[1]
    assert m["curriculum/weight_ratio"] == pytest.approx(0.25 / 0.01)  # the prior's 0.25 over the floor
    assert cur.engagement()[0].check([m])[0]


def test_uniform_pool_draws_learnabilitys_pool_and_samples_it_uniformly():
    from explorl.explore.curriculum.uniform_pool import UniformPool
    tasks = mix(addition={"digits": [1, 3]}, sorting={"length": [2, 6]})
    learn, uniform = Learnability(pool_size=6), UniformPool(pool_size=6)
    learn.bind(tasks, seed=3)
    uniform.bind(tasks, seed=3)
    assert uniform.pool == learn.pool  # the same problems for the same run seed
    pool = [uniform.problem("addition", s) for s in uniform.pool["addition"]]
    uniform.observe(stats(pool, [[1.0] * 4 for _ in pool]))  # solved: learnability would avoid them
    assert {q.id: s for q, s in uniform.candidates()} == {q.id: tasks.weights[q.source] for q, _ in uniform.candidates()}
    chosen, m = uniform.next(12)
    assert len({p.id for p in chosen}) == 12 and m["curriculum/weight_ratio"] == 1.0  # distinct within a batch
    assert uniform.engagement() is None  # a control, no mechanism


def test_ead_schedule_on_the_runs_response_length():
    """reference_length 12: a 48-token answer goes through the schedule of a 12-token one, four
    positions per step of it; the span logged is over the positions the responses reached."""
    ead = EAD(exponent_scale=1.0, decay_freq=20.0, warmup_tokens=0, decay_increase=0.0, reference_length=12)
    short, long = ead.temperatures(step=1, max_new_tokens=12), ead.temperatures(step=1, max_new_tokens=48)
    assert long[::4].tolist() == pytest.approx(short.tolist())
    assert long[47].item() == pytest.approx(2.2 - math.exp(47 * 12 / 48 / 20)) and long[47] > 0.1
    unscaled = EAD(exponent_scale=1.0, decay_freq=20.0, warmup_tokens=0, decay_increase=0.0)
    assert unscaled.temperatures(step=1, max_new_tokens=48)[47].item() == pytest.approx(0.1)  # floor by token 15
    batch = type("B", (), {"lengths": torch.tensor([20, 24, 30])})()  # median 24 of 48: half the schedule
    m = ead.observe(StepStats(step=1, problems=[], rewards=[], advantages=[], entropy=0.0, tokens=0,
                              extras={"batch": batch}))
    assert m["decode/temperature_span"] == pytest.approx(float(long[0] - long[23]))
    with pytest.raises(ValueError, match="reference_length must be >= 1"):
        EAD(reference_length=0)


def test_ead_logs_the_temperature_span_the_responses_lived_through():
    ead = EAD()  # warm-up of 10 tokens at T = 1, then cooling
    lengths = torch.tensor([4, 30, 30, 200])  # median 30
    batch = type("B", (), {"lengths": lengths})()
    m = ead.observe(StepStats(step=2, problems=[], rewards=[], advantages=[], entropy=0.0, tokens=0,
                              extras={"batch": batch}))
    temps = [1.0] * 10 + [1 + 1.2 - math.exp(t / (20 * (25 + 5 * 2))) for t in range(10, 30)]
    assert m["decode/temperature_span"] == pytest.approx(max(temps) - min(temps))
    short = ead.observe(StepStats(step=2, problems=[], rewards=[], advantages=[], entropy=0.0, tokens=0,
                                  extras={"batch": type("B", (), {"lengths": torch.tensor([6, 8, 9])})()}))
    assert short["decode/temperature_span"] == 0.0  # every response ended in the warm-up: never annealed
    assert not ead.engagement()[0].check([short])[0]
