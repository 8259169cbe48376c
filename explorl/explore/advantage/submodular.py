"""SubPO: a policy gradient on the marginal gains of a submodular set function of the group.

Prajapat, Mutný, Zeilinger, Krause, *Submodular Reinforcement Learning*, ICLR 2024,
arXiv:2307.13372; code manish-pra/non-additive-RL @ ef8ea29 (named on the arXiv page).

The paper's reward is a set function F of the visited states, monotone and submodular
(diminishing returns); SubPO maximises it greedily by a policy gradient on the marginal gains

    F(s | τ_{0:j}) = F(τ_{0:j} ∪ {s}) − F(τ_{0:j})

taken in the time order of the trajectory. The code, at that commit:

- ``gym_env/inheritance_test.py:15-28`` (MuJoCo Ant): the step reward is the marginal coverage
  gain (|mask_{t+1}| − |mask_t|)/10 (the modular baseline pays |mask_t|/10), fed to an
  actor-critic with GAE, γ = 0.99, τ = 0.95 (``gym_env/gym_subrl.py:151-181``).
- ``main.py:147-217`` (tabular grid): −mean_h log π(a_h)·F(τ_{0:h+1})/MAX_Ret; the line with
  the difference F(τ_{0:h+1}) − F(τ_{0:h}) is commented out (``main.py:187-192``).
- ``utils/environment.py:981-994``: weighted coverage Σ_{n ∈ ∪cover(s)} w(n), a coverage of
  distinct items (its ``SRL`` baseline counts repeats, so it is modular).

Here the "trajectory" is a group: the G responses o_1..o_G of one prompt in the order they
were sampled (the batch's row order), and F is a set function over them (``set_function``):

    distinct_correct     F(S) = |{text(o) : o ∈ S, r(o) ≥ 1}|          distinct correct responses
                         (text stripped of surrounding white space: the evaluation's
                         ``distinct_correct``), the coverage of ``environment.py:981-994``
    max_reward           F(S) = max(0, max_{o ∈ S} r(o))                 pass@k-like
    facility_location    F(S) = (1/G) Σ_{u ∈ group} max_{o ∈ S} max(0, cos(e_u, e_o))
                         e: each response's mean last-layer hidden state (``repr_bonus``'s
                         ``mean_response_hidden``), L2-normalised; ``features`` says whose:
                         the policy's (``policy``) or the frozen reference's (``reference``)

Each is monotone and submodular (the negative part of the cosine is cut so that every
benefit is ≥ 0, which facility location needs). Rollout i's credit Δ_i (``credit``):

    sampling_order   Δ_i = F(S_{<i} ∪ {o_i}) − F(S_{<i})      the time order; Σ_i Δ_i = F(S)
    leave_one_out    Δ_i = F(S) − F(S ∖ {o_i})                 Σ_i Δ_i ≤ F(S) for submodular F
    shapley          Δ_i = mean over orders σ of the gain of o_i after its predecessors in σ
                     (Σ_i Δ_i = F(S)); all G! orders when G! ≤ ``permutations``, else
                     ``permutations`` orders drawn from a generator seeded by ``seed`` and the
                     call count (checkpointed), so every process draws the same orders

and its reward becomes r'_i = ``verifier_coef``·r_i + ``gain_coef``·Δ_i, group-normalised as GRPO
does (``scale_by_std``, ``epsilon``). This is an estimator (it replaces GRPO), not a shaper:
SubPO changes the reward the policy gradient sees, and the code's Ant variant feeds the gains
to its advantage estimator (GAE) in place of the reward; here the group baseline plays that part.

Documented choices (the paper's full text could not be read; its estimator is NOT VERIFIED):

- **Order.** ``sampling_order`` is the default, as the code's gains follow the trajectory's time
  order. Rollouts of a group are sampled independently, so that order is arbitrary: under
  ``max_reward`` or identical correct answers the first correct rollout takes all the credit
  and the later ones none. ``shapley`` shares it (m identical correct answers get 1/m each);
  ``leave_one_out`` subtracts a baseline F(S ∖ {o_i}) that does not depend on o_i, so it
  estimates ∇E[F(S)] without bias, but gives redundant responses nothing (m ≥ 2 identical
  correct answers get 0 each).
- **Mixing.** By default the reward is the gain alone (``verifier_coef`` = 0, ``gain_coef`` = 1);
  r_i + λΔ_i is ``verifier_coef: 1, gain_coef: λ``. ``distinct_correct`` and ``max_reward``
  already pay only rewarded responses; ``facility_location`` is pure diversity and is meant to
  be mixed with the verifier.
- No entropy bonus (the code's 0.01 in Ant, 0 in the grid configs): add the ``entropy`` term.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Callable, Sequence

import torch

from explorl.explore.advantage.grpo import GRPO
from explorl.explore.advantage.repr_bonus import mean_response_hidden
from explorl.explore.acted import Acted
from explorl.explore.base import Advantage, Groups
from explorl.registry import register

SetFunction = Callable[[Sequence[int]], float]
SET_FUNCTIONS = ("distinct_correct", "max_reward", "facility_location")
CREDITS = ("sampling_order", "leave_one_out", "shapley")
FEATURES = ("policy", "reference")


# ---- set functions over one group (items 0..n-1) -------------------------------------------

def distinct_correct(texts: Sequence[str], rewards: Sequence[float]) -> SetFunction:
    """F(S) = the number of distinct (stripped) texts among the correct (reward ≥ 1) items of S."""
    keys = [t.strip() if r >= 1.0 else None for t, r in zip(texts, rewards)]
    return lambda subset: float(len({keys[i] for i in subset} - {None}))


def max_reward(rewards: Sequence[float]) -> SetFunction:
    """F(S) = max(0, max_{i ∈ S} r_i); F(∅) = 0."""
    r = [float(x) for x in rewards]
    return lambda subset: max([0.0] + [r[i] for i in subset])


def facility_location(embeddings: torch.Tensor) -> SetFunction:
    """F(S) = (1/n) Σ_u max_{i ∈ S} max(0, cos(e_u, e_i)) over the n rows of ``embeddings``."""
    e = torch.nn.functional.normalize(embeddings.double(), dim=-1)
    sim = (e @ e.T).clamp_min(0.0)
    n = sim.shape[0]

    def value(subset):
        if not len(subset):
            return 0.0
        return float(sim[:, list(subset)].max(1).values.sum()) / n
    return value


# ---- credit: each item's share of F(S) -------------------------------------------------------

def gains_in_order(f: SetFunction, order: Sequence[int]) -> dict[int, float]:
    """Δ of each item of ``order`` given the items before it: F(prefix ∪ {i}) − F(prefix)."""
    gains, prefix, before = {}, [], f([])
    for i in order:
        prefix.append(i)
        after = f(prefix)
        gains[i] = after - before
        before = after
    return gains


def sampling_order_gains(f: SetFunction, n: int) -> list[float]:
    gains = gains_in_order(f, range(n))
    return [gains[i] for i in range(n)]


def leave_one_out_gains(f: SetFunction, n: int) -> list[float]:
    whole = f(range(n))
    return [whole - f([j for j in range(n) if j != i]) for i in range(n)]


def shapley_gains(f: SetFunction, n: int, permutations: int, generator: torch.Generator) -> list[float]:
    """Mean gain over orders: every order when n! ≤ ``permutations`` (exact), else that many drawn."""
    if math.factorial(n) <= permutations:
        orders = list(itertools.permutations(range(n)))
    else:
        orders = [torch.randperm(n, generator=generator).tolist() for _ in range(permutations)]
    total = [0.0] * n
    for order in orders:
        for i, g in gains_in_order(f, order).items():
            total[i] += g
    return [t / len(orders) for t in total]


@register("advantage", "submodular",
          paper="SubPO, Submodular Reinforcement Learning (arXiv:2307.13372; code manish-pra/non-additive-RL)")
class Submodular(Advantage):
    engaged_when = (Acted("adv/submodular_frac_changed", ">=", 0.1,
                          what="marginal gains differ from the plain rewards in >= 10% of rollouts"),)
    kind = "estimator"
    min_group_size = 2  # group-normalised: a lone rollout has no group to compare with
    state_keys = ("calls",)

    def __init__(self, set_function: str = "distinct_correct", credit: str = "sampling_order",
                 permutations: int = 64, verifier_coef: float = 0.0, gain_coef: float = 1.0,
                 features: str = "policy", scale_by_std: bool = True, epsilon: float = 1e-6, seed: int = 0):
        if set_function not in SET_FUNCTIONS:
            raise ValueError(f"set_function must be one of {', '.join(SET_FUNCTIONS)}, got {set_function!r}")
        if credit not in CREDITS:
            raise ValueError(f"credit must be one of {', '.join(CREDITS)}, got {credit!r}")
        if features not in FEATURES:
            raise ValueError(f"features must be one of {', '.join(FEATURES)}, got {features!r}")
        if permutations < 1:
            raise ValueError(f"permutations must be >= 1, got {permutations}")
        if verifier_coef < 0 or gain_coef < 0 or verifier_coef + gain_coef == 0:
            raise ValueError(f"verifier_coef and gain_coef must be >= 0 and not both 0, got {verifier_coef} "
                             f"and {gain_coef}")
        self.set_function, self.credit, self.permutations = set_function, credit, permutations
        self.verifier_coef, self.gain_coef, self.features = verifier_coef, gain_coef, features
        self.grpo = GRPO(scale_by_std=scale_by_std, epsilon=epsilon)
        self.seed, self.calls = seed, 0
        if set_function == "facility_location" and features == "reference":
            self.needs = frozenset({"ref_model"})

    def set_functions(self, groups: Groups) -> list[tuple[list[int], SetFunction]]:
        """For each group: its rows (sampling order) and F over them (items 0..n-1)."""
        batch = groups.extras["batch"]
        row_grid, _ = batch.to_groups(torch.arange(batch.size))
        embeddings = None
        if self.set_function == "facility_location":
            engine = groups.extras["ref_engine" if self.features == "reference" else "engine"]
            if engine is None:
                raise ValueError("advantage submodular: features: reference needs the reference model")
            embeddings = mean_response_hidden(engine, batch)
        out = []
        for p in range(len(groups.problems)):
            valid = groups.mask[p] > 0
            rows, rewards = row_grid[p][valid].tolist(), groups.rewards[p][valid].tolist()
            if self.set_function == "distinct_correct":
                f = distinct_correct([batch.texts[r] for r in rows], rewards)
            elif self.set_function == "max_reward":
                f = max_reward(rewards)
            else:
                f = facility_location(embeddings[rows])
            out.append((rows, f))
        return out

    def gains(self, f: SetFunction, n: int, generator: torch.Generator) -> list[float]:
        if self.credit == "sampling_order":
            return sampling_order_gains(f, n)
        if self.credit == "leave_one_out":
            return leave_one_out_gains(f, n)
        return shapley_gains(f, n, self.permutations, generator)

    def compute(self, groups: Groups, adv=None):
        batch = groups.extras["batch"]
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.calls)
        self.calls += 1
        delta = torch.zeros(batch.size, dtype=torch.float64)
        values = []
        for rows, f in self.set_functions(groups):
            if rows:
                delta[rows] = torch.tensor(self.gains(f, len(rows), generator), dtype=torch.float64)
                values.append(f(range(len(rows))))
        gain_grid, _ = batch.to_groups(delta.float())
        mask = groups.mask.float()
        shaped = (self.verifier_coef * groups.rewards + self.gain_coef * gain_grid) * mask
        out, metrics = self.grpo.compute(dataclasses.replace(groups, rewards=shaped), None)
        n = mask.sum().clamp_min(1.0)
        metrics.update({"adv/submodular_value": sum(values) / max(len(values), 1),
                        "adv/submodular_gain_mean": float((gain_grid * mask).sum() / n),
                        "adv/submodular_frac_zero_gain": float(((gain_grid.abs() < 1e-12) & (mask > 0)).sum() / n),
                        "adv/submodular_frac_changed": float((((shaped - groups.rewards).abs() > 1e-9) & (mask > 0)).sum()
                                                             / n)})
        return out, metrics
