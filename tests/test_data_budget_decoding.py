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
from explorl.explore.budget.xrpo import XRPO, allocate_round, priority, t_quantile
from explorl.explore.curriculum.alp_gmm import ALPGMM
from explorl.explore.curriculum.bandit import Bandit, ips_estimate, log_from_run
from explorl.explore.curriculum.dump import DUMP
from explorl.explore.curriculum.learnability import Learnability
from explorl.explore.decoding.ead import EAD
from explorl.explore.objective.ppo_clip import PPOClip
from explorl.policy.engine import RolloutEngine
from explorl.tasks import Problem, TaskMix
from explorl.train.batch import RolloutBatch

RECIPES = ["dump", "alp_gmm", "learnability", "bandit", "broad", "knapsack", "xrpo", "dynamic_sampling", "ead"]


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


def test_learnability_prefers_unseen_problems_at_the_optimistic_prior():
    cur = Learnability(pool_size=10, floor=1e-4)
    cur.bind(mix(addition={"digits": [1, 3]}), seed=1)
    pool = [cur.problem("addition", s) for s in cur.pool["addition"]]
    cur.observe(stats(pool[:5], [[1.0] * 4 for _ in pool[:5]]))
    chosen = cur.next(5)[0]
    assert {p.id for p in chosen} == {p.id for p in pool[5:]}


# ---- bandit with logged propensities ------------------------------------------------------
MU = {"addition": 0.2, "multiplication": 0.5, "sorting": 0.9}


def test_bandit_logs_every_propensity_and_ips_recovers_another_curriculums_value():
    cur = Bandit(gamma=0.3, lr=0.5)
    cur.bind(mix(), seed=0)
    env = random.Random(0)
    for step in range(60):
        before = cur.probabilities()
        problems, m = cur.next(32)
        entries = cur.log[-32:]
        assert [e["id"] for e in entries] == [p.id for p in problems]
        assert all(e["propensity"] == pytest.approx(before[e["source"]]) for e in entries)
        assert m["curriculum/propensity_mean"] == pytest.approx(sum(e["propensity"] for e in entries) / 32)
        rewards = [[float(env.random() < MU[p.source]) for _ in range(4)] for p in problems]
        cur.observe(stats(problems, rewards, step=step))
    assert len(cur.log) == 60 * 32 and all(e["reward"] is not None for e in cur.log)
    assert max(cur.probabilities().values()) - min(cur.probabilities().values()) > 0.1  # not uniform
    for target in ({s: 1 / 3 for s in MU}, {"addition": 0.6, "multiplication": 0.3, "sorting": 0.1}):
        true = sum(target[s] * MU[s] for s in MU)
        assert ips_estimate(cur.log, target) == pytest.approx(true, abs=0.04)
        assert ips_estimate(cur.log, target, self_normalize=True) == pytest.approx(true, abs=0.04)
    # a target given as a function of the entry (e.g. another logged bandit) works the same way
    assert ips_estimate(cur.log, lambda e: 1.0 if e["source"] == "sorting" else 0.0) == pytest.approx(0.9, abs=0.06)


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
    assert allocate_round(ns, stds, 1, 0.05, 0.1, 64) == [1, 0, 0, 0]
    assert allocate_round(ns, stds, 12, 0.05, 0.1, 64) == [7, 2, 3, 0]
    assert allocate_round(ns, stds, 12, 0.05, 0.0, 64) == [8, 0, 4, 0]  # no bonus: zero std gets nothing
    assert allocate_round(ns, stds, 100, 0.05, 0.1, 10) == [6, 6, 2, 0]  # max_n caps, the rest is unused


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
    ctx = LossContext(logp=batch.old_logp.clone(), old_logp=batch.old_logp, behaviour_logp=batch.behaviour_logp,
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
        log = log_from_run(tmp_path / name)
        assert len(log) >= 2 * 4 and all(0 < e["propensity"] <= 1 for e in log)
        assert not math.isnan(ips_estimate(log, {"addition": 0.5, "reversal": 0.5}))
