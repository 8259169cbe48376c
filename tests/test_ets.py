"""ETS (``explorl.explore.rollout.ets``): the selection solves the cost model of the authors'
``select_softmax_costmodel`` — checked against hand-computed trees and against an enumeration of
the program written here from its formula — and a search on the tiny model ends with W answers."""
import itertools
import math
import random

import pytest

from explorl.explore.rollout.ets import ETS, CostModel, exact_clusters, kept_widths, ngram_clusters, rebase_allocation

# Four candidates: A and B under ancestor "a", C and D under "c", all under the root "r".
ANCESTORS = [{"r", "a"}, {"r", "a"}, {"r", "c"}, {"r", "c"}]
SCORES = [0.9, 0.85, 0.5, 0.45]
TEXTS = ["x1", "x1", "y", "z"]


def test_rebase_allocation_by_hand():
    # e^{s/0.2} = 90.017, 70.105, 12.182, 9.488 (sum 181.79): A ceil(4*90.017/181.79)=2, then
    # B ceil(2*70.105/91.775)=2, nothing left for C and D
    assert rebase_allocation(SCORES, 4, 0.2) == [2, 2, 0, 0]
    # 90.017, 12.182, 1.649: ceil(4 * 90.017 / 103.85) = ceil(3.47) = 4 takes the whole width
    assert rebase_allocation([0.9, 0.5, 0.1], 4, 0.2) == [4, 0, 0]
    # equal scores: the first allocation goes in order, the second (sorted ascending, reversed) backwards
    assert rebase_allocation([0.5, 0.5], 3, 0.2) == [2, 1]
    assert kept_widths([0.5, 0.5], [True, True], 3, 0.2) == [1, 2]


def test_the_node_cost_decides_by_hand():
    # O = [.5, .5, 0, 0]; C = 1/(3 ancestors + 4 nodes); coverage 0.3/3 per cluster ({A,B}, {C}, {D}).
    # {A,B}: 1 - 4/7 + .1 = .529 beats {A}: .5 - 3/7 + .1 = .171, {A,B,C}: 1 - 6/7 + .2 = .343, all: .3
    ets = ETS(lambda_c=1.0, lambda_s=0.3, softmax_temperature=0.2)
    keep, widths = ets.select(SCORES, ANCESTORS, TEXTS, 4)
    assert keep == [True, True, False, False]
    # REBASE over A and B only: A ceil(4*90.017/160.12) = 3, B the last 1
    assert widths == [3, 1, 0, 0]
    model = CostModel(SCORES, ANCESTORS, TEXTS, 4, 1.0, 0.3, 0.2, exact_clusters)
    assert model.outcome == [0.5, 0.5, 0.0, 0.0]
    assert model.node_cost == pytest.approx(-1 / 7) and model.coverage == pytest.approx(0.1)
    assert model.objective(keep) == pytest.approx(1 - 4 / 7 + 0.1)


def test_coverage_keeps_different_steps_by_hand():
    # with lambda_s = 1.5 each cluster is worth .5 > the 1/7 a node costs: all four are kept
    # (1 + 1.5 - 7/7 = 1.5 against {A,C,D}: .5 + 1.5 - 6/7 = 1.14); REBASE then still gives C, D no width
    keep, widths = ETS(lambda_c=1.0, lambda_s=1.5).select(SCORES, ANCESTORS, TEXTS, 4)
    assert keep == [True] * 4 and widths == [2, 2, 0, 0]
    # without coverage and with the code's guard for lambda_c = 0 (+1e-4 per node), everything is kept too
    keep, _ = ETS(lambda_c=0.0, lambda_s=0.0).select(SCORES, ANCESTORS, TEXTS, 4)
    assert keep == [True] * 4
    assert CostModel(SCORES, ANCESTORS, TEXTS, 4, 0.0, 0.0, 0.2, exact_clusters).node_cost == pytest.approx(1e-4 / 7)


def enumerate_program(scores, ancestors, texts, width, lambda_c, lambda_s, temperature):
    """The best objective over every non-empty subset, from the program as rebase.py writes it."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    exp = {i: math.exp(scores[i] / temperature) for i in order}
    left, n = width, {}
    for j, i in enumerate(order):  # n_i = ceil(W' e_i / sum of e over the nodes not yet allocated)
        n[i] = math.ceil(left * exp[i] / math.fsum(exp[k] for k in order[j:]))
        left -= n[i]
    outcome = [n[i] / sum(n.values()) for i in range(len(scores))]
    branches = set().union(*ancestors)
    cost = (1e-4 if lambda_c == 0 else -lambda_c) / (len(branches) + len(scores))
    clusters = {t: [i for i in range(len(texts)) if texts[i] == t] for t in texts}
    cover = lambda_s / len(clusters) if lambda_s > 0 and len(scores) > 1 and len(clusters) > 1 else 0.0
    best = -math.inf
    for keep in itertools.product([0, 1], repeat=len(scores)):
        if not any(keep):
            continue
        kept_branches = {b for i, k in enumerate(keep) if k for b in ancestors[i]}
        value = (sum(o * k for o, k in zip(outcome, keep)) + cost * (len(kept_branches) + sum(keep))
                 + cover * sum(any(keep[i] for i in members) for members in clusters.values()))
        best = max(best, value)
    return best


def random_instance(rng):
    """A random tree of depth <= 3 and its N <= 8 frontier nodes."""
    n = rng.randint(1, 8)
    parents = {}
    ancestors = []
    for i in range(n):
        depth = rng.randint(1, 3)
        chain = ["root"] + [f"d{d}-{rng.randint(0, 2)}" for d in range(1, depth)]
        chain = [c if k == 0 else "/".join(chain[1:k + 1]) for k, c in enumerate(chain)]
        parents[i] = chain
        ancestors.append(set(chain))
    scores = [round(rng.random(), 2) for _ in range(n)]
    texts = [rng.choice(["p", "q", "r", "s"]) for _ in range(n)]
    return scores, ancestors, texts, rng.randint(1, 8)


@pytest.mark.parametrize("solver", ["brute", "milp"])
def test_the_selection_is_an_optimum_of_the_program(solver, fuzz_cases):
    rng = random.Random(0)
    for _ in range(60):
        fuzz_cases.tick()
        scores, ancestors, texts, width = random_instance(rng)
        lambda_c, lambda_s = rng.choice([0.0, 0.5, 1.0, 3.0]), rng.choice([0.0, 0.4, 1.5])
        ets = ETS(lambda_c=lambda_c, lambda_s=lambda_s, softmax_temperature=0.2, solver=solver)
        keep, widths = ets.select(scores, ancestors, texts, width)
        model = CostModel(scores, ancestors, texts, width, lambda_c, lambda_s, 0.2, exact_clusters)
        best = enumerate_program(scores, ancestors, texts, width, lambda_c, lambda_s, 0.2)
        assert model.objective(keep) == pytest.approx(best, abs=1e-9)
        assert any(keep) and sum(widths) == width and all(w == 0 for w, k in zip(widths, keep) if not k)


def test_ngram_clusters_put_equal_steps_together():
    labels = ngram_clusters(["12+3", "12+3", "987", ""])
    assert labels[0] == labels[1] and len(set(labels)) == 3


@pytest.mark.parametrize("value", ["rollout", "verifier"])
def test_an_ets_search_ends_with_its_width_in_answers(tiny_model, value):
    from explorl.batch import RolloutRequest
    from explorl.policy.engine import RolloutEngine
    from explorl.tasks import Problem
    engine = RolloutEngine(*tiny_model)
    problems = [Problem(id="0", prompt="12+3=", answer="15", source="x"),
                Problem(id="1", prompt="rev:ab=", answer="ba", source="x")]
    calls = []

    def score(probs, texts):
        calls.append(len(texts))
        return [float(len(t) % 2) for t in texts]  # a stand-in verifier that rewards some responses

    ets = ETS(step_tokens=2, value_rollouts=2, value=value, clusters="ngram")
    request = RolloutRequest(engine=engine, problems=problems, counts=[5, 3], temperatures=[1.0] * 6, top_p=1.0,
                             seed=0, score=score)
    tree_engine, trees, leaves = ets.search(request)
    assert [len(ls) for ls in leaves] == [5, 3]
    assert all(leaf.finished and leaf.reward is not None for ls in leaves for leaf in ls)
    # probes were spent (value rollouts) but are not part of the trees
    in_trees = {id(n) for t in trees for n in t.root.leaves()}
    assert all(id(leaf) in in_trees for ls in leaves for leaf in ls)
    in_tree_tokens = sum(len(n.tokens) for t in trees for n in _reachable(t.root))
    if value == "rollout":
        assert tree_engine.stats.generated > in_tree_tokens and len(calls) > 2
    else:
        assert tree_engine.stats.generated == in_tree_tokens
    batch, metrics = ets.sample(request)
    assert batch.counts == [5, 3] and batch.rewards.shape == (8,)
    assert metrics["rollout/tokens_generated"] == batch.generated_tokens


def _reachable(node):
    return [node] + [n for c in node.children for n in _reachable(c)]
