"""DTS / DTS* (``explorl.explore.rollout.dts``): the soft backup on a hand-computed tree, the
Boltzmann and greedy selections, and a search on the tiny model whose every inner value is the
soft backup of its children."""
import math
import random

import pytest

from explorl.explore.rollout.dts import DTS, DTSStar, soft_value
from explorl.policy.tree import TokenTree


def hand_tree():
    """root -> c1 (a response, r = 1); root -> c2 -> g1 (r = 0), g2 (r = 1)."""
    tree = TokenTree(problem=None)
    c1 = tree.add(tree.root, 0)
    c2 = tree.add(tree.root, 0)
    g1, g2 = tree.add(c2, 0), tree.add(c2, 0)
    for leaf, reward in ((c1, 1.0), (g1, 0.0), (g2, 1.0)):
        leaf.finished, leaf.reward = True, reward
    return tree, c1, c2, g1, g2


@pytest.mark.parametrize("backup", ["children", "visits"])
def test_soft_backup_by_hand(backup):
    tree, c1, c2, g1, g2 = hand_tree()
    dts = DTS(lam=2.0, backup=backup)
    for leaf in (c1, g1, g2):  # the order the rollouts came back in
        dts.back_up(leaf)
    # V(c2) = (1/2) log((e^0 + e^2) / 2) = 0.716890 (its children have one visit each)
    assert c2.value == pytest.approx(0.5 * math.log((1 + math.e ** 2) / 2)) == pytest.approx(0.716890, abs=1e-6)
    if backup == "children":  # V(root) = (1/2) log((e^2 + e^{2 V(c2)}) / 2) = 0.878221
        assert tree.root.value == pytest.approx(0.5 * math.log((math.e ** 2 + math.exp(2 * c2.value)) / 2))
        assert tree.root.value == pytest.approx(0.878221, abs=1e-6)
    else:  # c1 has one visit, c2 two: (1/2) log((1 e^2 + 2 e^{2 V(c2)}) / 3) = 0.83000
        assert tree.root.value == pytest.approx(0.5 * math.log((math.e ** 2 + 2 * math.exp(2 * c2.value)) / 3))
        assert tree.root.value == pytest.approx(0.830006, abs=1e-6)
    assert [n.visits for n in (tree.root, c1, c2, g1, g2)] == [3, 1, 2, 1, 1]
    # a soft value lies between the mean and the max of its children, and tends to the max as λ grows
    assert 0.5 < c2.value < 1.0 and soft_value([0.0, 1.0], 200.0) == pytest.approx(1.0, abs=0.01)


def test_boltzmann_and_greedy_selection():
    dts, star = DTS(lam=2.0, max_children=2), DTSStar(lam=2.0, max_children=2)
    rng = random.Random(0)
    picks = [dts.choose([1.0, 0.0], rng) for _ in range(20000)]
    assert picks.count(0) / len(picks) == pytest.approx(math.e ** 2 / (math.e ** 2 + 1), abs=0.01)  # 0.881
    assert all(star.choose([1.0, 0.0], rng) == 0 for _ in range(100))
    assert {star.choose([0.5, 0.5], rng) for _ in range(100)} == {0, 1}  # ties broken at random
    # root (full) -> c1 (v 1, one child: room for another), c2 (v 0, full, a response and an open child)
    tree = TokenTree(problem=None)
    c1, c2 = tree.add(tree.root, 0), tree.add(tree.root, 0)
    c1.value, c2.value = 1.0, 0.0
    tree.add(c1, 0).value = 0.5
    done, open_child = tree.add(c2, 0), tree.add(c2, 0)
    done.finished, done.value, open_child.value = True, 0.0, 0.0
    assert star.select(tree, rng) is c1  # the best child, which has room to draw another
    # an exhausted subtree is never selected: with c1's subtree done, the search goes through c2
    for leaf in c1.children:
        leaf.finished = True
    tree.add(c1, 0).finished = True
    assert star.select(tree, rng) is open_child
    # a node with room draws a new child (the project page's rule) unless the not-yet-drawn child
    # competes with a prior value: it wins at 2, loses to c1's 1.0 at -1 (c1 then has room)
    assert DTSStar(max_children=3).select(tree, rng) is tree.root
    assert DTSStar(max_children=3, new_child_value=2.0).select(tree, rng) is tree.root
    assert DTSStar(max_children=3, new_child_value=-1.0).select(tree, rng) is c1


def test_a_dts_search_backs_up_every_inner_node(tiny_model):
    from explorl.batch import RolloutRequest
    from explorl.policy.engine import RolloutEngine
    from explorl.tasks import Problem
    engine = RolloutEngine(*tiny_model)
    problems = [Problem(id="0", prompt="12+3=", answer="15", source="x"),
                Problem(id="1", prompt="rev:ab=", answer="ba", source="x")]
    score = lambda probs, texts: [float(len(t) % 2) for t in texts]  # noqa: E731  (a stand-in verifier)
    for method in (DTS(lam=2.0, block_tokens=2, max_children=2), DTSStar(block_tokens=2, max_children=3)):
        request = RolloutRequest(engine=engine, problems=problems, counts=[6, 4], temperatures=[1.0] * 6,
                                 top_p=1.0, seed=0, score=score)
        tree_engine, trees, leaves = method.search(request)
        assert [len(ls) for ls in leaves] == [6, 4]
        for tree, ls in zip(trees, leaves):
            assert tree.root.visits == len(ls)  # one rollout per iteration
            assert all(leaf.finished and leaf.value == leaf.reward for leaf in ls)
            for node in tree.nodes:
                assert len(node.children) <= method.max_children
                if node.children:
                    assert node.value == pytest.approx(soft_value([c.value for c in node.children], method.lam))
        rng = random.Random(0)
        assert all(method.answer(ls, rng) in ls for ls in leaves)
        tree_engine.release(trees)
        assert tree_engine.stats.kv_tokens == 0
