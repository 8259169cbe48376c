"""SubPO (``advantage: submodular``): marginal gains of a set function over a group."""
from __future__ import annotations

import dataclasses
import itertools
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from explorl.explore.advantage.grpo import GRPO
from explorl.explore.advantage.repr_bonus import mean_response_hidden
from explorl.explore.advantage.submodular import (
    Submodular,
    distinct_correct,
    facility_location,
    leave_one_out_gains,
    max_reward,
    sampling_order_gains,
    shapley_gains,
)
from explorl.tasks import Problem

FUZZ = settings(derandomize=True, database=None, deadline=None, max_examples=60,
                suppress_health_check=[HealthCheck.too_slow])


def brute_shapley(f, n):
    """φ_i = Σ_{S ⊆ N∖i} |S|!(n−|S|−1)!/n! (F(S ∪ i) − F(S)), by enumerating subsets."""
    out = []
    for i in range(n):
        rest = [j for j in range(n) if j != i]
        total = 0.0
        for size in range(n):
            for s in itertools.combinations(rest, size):
                weight = math.factorial(size) * math.factorial(n - size - 1) / math.factorial(n)
                total += weight * (f(list(s) + [i]) - f(list(s)))
        out.append(total)
    return out


def test_gains_of_distinct_correct_by_hand():
    # "12" twice (correct), "13" (correct), "x" (wrong): F(S) = 2
    f = distinct_correct(["12", " 12\n", "13", "x"], [1.0, 1.0, 1.0, 0.0])
    assert f(range(4)) == 2
    assert sampling_order_gains(f, 4) == [1.0, 0.0, 1.0, 0.0]
    assert leave_one_out_gains(f, 4) == [0.0, 0.0, 1.0, 0.0]
    assert shapley_gains(f, 4, 64, torch.Generator()) == pytest.approx([0.5, 0.5, 1.0, 0.0])


def test_gains_of_max_reward_by_hand():
    f = max_reward([0.0, 0.5, 1.0, 1.0])
    assert sampling_order_gains(f, 4) == [0.0, 0.5, 0.5, 0.0]
    assert leave_one_out_gains(f, 4) == [0.0, 0.0, 0.0, 0.0]
    # the last 0.5 is shared by the two 1.0s, the first 0.5 by all three non-zero ones
    assert shapley_gains(f, 4, 64, torch.Generator()) == pytest.approx([0.0, 0.5 / 3, 0.5 / 3 + 0.25, 0.5 / 3 + 0.25])


def facility_by_loops(e, subset):
    """(1/n) Σ_u max_{i ∈ S} max(0, cos(e_u, e_i)), written out."""
    n = len(e)
    if not subset:
        return 0.0
    cos = lambda a, b: float(a @ b) / float(a.norm() * b.norm())  # noqa: E731
    return sum(max(max(0.0, cos(e[u], e[i])) for i in subset) for u in range(n)) / n


@pytest.mark.parametrize("which", ["distinct_correct", "max_reward", "facility_location"])
def test_marginal_gains_equal_brute_force_set_values(which):
    g = torch.Generator().manual_seed(3)
    n = 5
    e = torch.randn(n, 4, generator=g, dtype=torch.float64)
    rewards = [1.0, 0.0, 1.0, 1.0, 0.3]
    texts = ["a", "b", "a", "c", "d"]
    f = {"distinct_correct": distinct_correct(texts, rewards), "max_reward": max_reward(rewards),
         "facility_location": facility_location(e)}[which]
    brute = {"distinct_correct": lambda s: len({texts[i] for i in s if rewards[i] >= 1}),
             "max_reward": lambda s: max([0.0] + [rewards[i] for i in s]),
             "facility_location": lambda s: facility_by_loops(e, list(s))}[which]
    for size in range(n + 1):
        for s in itertools.combinations(range(n), size):
            assert f(list(s)) == pytest.approx(brute(list(s)), abs=1e-12)
    assert sampling_order_gains(f, n) == pytest.approx([brute(range(i + 1)) - brute(range(i)) for i in range(n)])
    assert leave_one_out_gains(f, n) == pytest.approx(
        [brute(range(n)) - brute([j for j in range(n) if j != i]) for i in range(n)])
    exact = shapley_gains(f, n, math.factorial(n), torch.Generator())   # every order
    assert exact == pytest.approx(brute_shapley(brute, n), abs=1e-12)
    assert sum(exact) == pytest.approx(brute(range(n)))                    # efficiency: the gains sum to F(S)
    sampled = shapley_gains(f, n, 800, torch.Generator().manual_seed(0))
    assert sampled == pytest.approx(exact, abs=0.08)


@st.composite
def ground_sets(draw):
    n = draw(st.integers(2, 7))
    texts = draw(st.lists(st.sampled_from("abcd"), min_size=n, max_size=n))
    rewards = draw(st.lists(st.sampled_from([0.0, 0.1, 0.5, 1.0]), min_size=n, max_size=n))
    emb = draw(st.lists(st.lists(st.floats(-3, 3), min_size=3, max_size=3), min_size=n, max_size=n))
    order = draw(st.permutations(range(n)))
    a_size = draw(st.integers(0, n - 1))
    b_size = draw(st.integers(a_size, n - 1))
    return texts, rewards, torch.tensor(emb, dtype=torch.float64) + 1e-3, order, a_size, b_size


@FUZZ
@given(case=ground_sets())
def test_every_set_function_is_monotone_and_submodular(case, fuzz_cases):
    """A ⊆ B, x ∉ B: F(A ∪ x) − F(A) ≥ F(B ∪ x) − F(B) ≥ 0 (diminishing, non-negative gains)."""
    texts, rewards, emb, order, a_size, b_size = case
    fuzz_cases.tick()
    a, b, x = list(order[:a_size]), list(order[:b_size]), order[-1]
    for f in (distinct_correct(texts, rewards), max_reward(rewards), facility_location(emb)):
        gain_a, gain_b = f(a + [x]) - f(a), f(b + [x]) - f(b)
        assert gain_b >= -1e-12
        assert gain_a >= gain_b - 1e-12
        assert f([]) == 0.0


# ---- the estimator on a real batch --------------------------------------------------------------

def problems(n):
    prompts = ["12+3=", "9=", "sort:5432=", "rev:ab="]
    return [Problem(id=str(i), prompt=prompts[i], answer="", source="x") for i in range(n)]


@pytest.fixture
def batch(tiny_model):
    from explorl.policy.engine import RolloutEngine
    engine = RolloutEngine(*tiny_model)
    out = engine.rollout(problems(3), [4, 4, 4], [1.0] * 6, seed=0)
    out.texts = ["15", "15", " 15", "15",      # four identical correct answers
                 "x", "9", "y", "9",           # one correct answer, given twice
                 "1", "2", "3", "4"]           # nothing correct
    out.rewards = torch.tensor([1.0, 1, 1, 1, 0, 1, 0, 1, 0, 0, 0, 0])
    return out, engine


def groups_of(batch, engine):
    groups = batch.groups()
    groups.extras.update(batch=batch, engine=engine, ref_engine=None)
    return groups


@pytest.mark.parametrize("set_function", ["distinct_correct", "max_reward"])
def test_a_group_of_identical_correct_answers_earns_one_full_reward_not_n(batch, set_function):
    batch, engine = batch
    groups = groups_of(batch, engine)
    for credit, first_group in [("sampling_order", [1.0, 0, 0, 0]), ("shapley", [0.25] * 4),
                                ("leave_one_out", [0.0] * 4)]:
        est = Submodular(set_function=set_function, credit=credit)
        per_group = est.set_functions(groups)
        rows, f = per_group[0]
        assert f(range(4)) == 1.0                                    # F of the group: one, not four
        gains = est.gains(f, 4, torch.Generator())
        assert gains == pytest.approx(first_group)
        assert sum(gains) <= 1.0 + 1e-12


def test_the_estimator_group_normalises_the_gains_in_sampling_order(batch):
    batch, engine = batch
    groups = groups_of(batch, engine)
    adv, metrics = Submodular().compute(groups, None)
    gains = torch.tensor([[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]])
    expect, _ = GRPO().compute(dataclasses.replace(groups, rewards=gains), None)
    assert torch.allclose(adv, expect)
    assert adv[0, 0] > 0 and (adv[0, 1:] < 0).all()                  # duplicates of the first correct answer: below it
    assert (adv[2] == 0).all()
    assert metrics["adv/submodular_value"] == pytest.approx(2 / 3)    # F: 1, 1, 0 over the three groups
    mixed, _ = Submodular(verifier_coef=1.0, gain_coef=0.5).compute(groups, None)
    expect, _ = GRPO().compute(dataclasses.replace(groups, rewards=groups.rewards + 0.5 * gains), None)
    assert torch.allclose(mixed, expect)                             # r + λΔ, then GRPO


def test_facility_location_reads_the_policys_mean_response_hidden_state(batch):
    batch, engine = batch
    groups = groups_of(batch, engine)
    est = Submodular(set_function="facility_location")
    rows, f = est.set_functions(groups)[1]
    e = mean_response_hidden(engine, batch)[rows]
    for s in ([0], [1, 3], [0, 1, 2, 3]):
        assert f(s) == pytest.approx(facility_by_loops(e, s), abs=1e-9)
    assert Submodular(set_function="facility_location", features="reference").needs == {"ref_model"}
    with pytest.raises(ValueError, match="reference model"):
        Submodular(set_function="facility_location", features="reference").compute(groups, None)


def test_shapley_draws_come_from_the_seed_and_call_count_only(batch):
    """Under DDP every rank must draw the same orders: a seeded generator and a checkpointed call
    count, never the global random state."""
    batch, engine = batch
    groups = groups_of(batch, engine)
    spec = dict(set_function="facility_location", credit="shapley", permutations=5)   # 5 < 4!: sampled
    a, b = Submodular(**spec), Submodular(**spec)
    torch.manual_seed(1)
    first, _ = a.compute(groups, None)
    torch.manual_seed(2)
    assert torch.equal(first, b.compute(groups, None)[0])
    second, _ = a.compute(groups, None)
    resumed = Submodular(**spec)
    resumed.load_state_dict(b.state_dict())
    assert torch.equal(second, resumed.compute(groups, None)[0])
    other, _ = Submodular(**spec, seed=7).compute(groups, None)
    assert not torch.equal(first, other)


@pytest.mark.parametrize("params, needle", [
    ({"set_function": "coverage"}, "set_function must be one of distinct_correct, max_reward, facility_location"),
    ({"credit": "greedy"}, "credit must be one of sampling_order, leave_one_out, shapley"),
    ({"permutations": 0}, "permutations must be >= 1"),
    ({"gain_coef": 0.0}, "not both 0"),
    ({"features": "teacher"}, "features must be one of policy, reference"),
])
def test_bad_parameters_name_themselves(params, needle):
    from explorl.registry import build
    with pytest.raises(ValueError, match="advantage") as info:
        build("advantage", {"name": "submodular", **params})
    assert needle in str(info.value)
