"""Tree rollouts in the engine (``explorl.policy.tree``): a shared prefix is forwarded once, every
leaf is the sequence flat sampling draws from the same uniforms (tokens and log-probs), a shared
prefix counts once toward the token budget, and the store frees what no open node needs."""
import pytest
import torch

from explorl.policy.engine import RolloutEngine
from explorl.policy.tree import Segments, TreeEngine
from explorl.tasks import Problem

PROMPTS = ["12+3=", "rev:abc="]
TEMPS = [1.0, 0.7, 1.3, 1.0, 0.9, 1.1, 1.0, 0.8]  # a schedule that varies, so a wrong position shows


def problems():
    return [Problem(id=str(i), prompt=p, answer="", source="x") for i, p in enumerate(PROMPTS)]


def grow_two_levels(engine, segments, through_second=True, seed=0):
    tree_engine = TreeEngine(engine, TEMPS, segments=segments, seed=seed)
    trees = tree_engine.roots(problems())
    first = tree_engine.grow([(t.root, 3) for t in trees])
    tree_engine.grow([(c, 2) for cs in first for c in cs if not c.finished], through=through_second)
    return tree_engine, trees


class PositionCounter:
    """Counts the positions the model's embedding layer sees (every forward passes through it)."""

    def __init__(self, model):
        self.positions = 0
        self.handle = model.model.embed_tokens.register_forward_hook(self)

    def __call__(self, module, inputs, output):
        self.positions += inputs[0].numel()


@pytest.mark.parametrize("backend", ["fast", "hf"])
def test_a_shared_prefix_is_forwarded_once(tiny_model, backend):
    model, tok = tiny_model
    engine = RolloutEngine(model, tok, backend)
    counter = PositionCounter(model)
    try:
        tree_engine, trees = grow_two_levels(engine, Segments(max_tokens=2))
    finally:
        counter.handle.remove()
    prompt_ids, _ = engine.encode_prompts(problems())
    nodes = [n for t in trees for n in t.nodes[1:]]
    # every drawn token is fed once to compute its keys and values, except a response's last
    fed = sum(len(n.tokens) - (1 if n.finished else 0) for n in nodes)
    assert counter.positions == prompt_ids.numel() + fed == tree_engine.stats.forwarded
    # the second level continued 6 nodes of 2 tokens without running their prefixes again
    leaves = [leaf for t in trees for leaf in t.root.leaves()]
    flat_positions = sum(len(leaf.path()) and sum(len(n.tokens) for n in leaf.path()) for leaf in leaves)
    assert counter.positions - prompt_ids.numel() < flat_positions


@pytest.mark.parametrize("backend", ["fast", "hf"])
@pytest.mark.parametrize("segments", [Segments(max_tokens=2), Segments(max_tokens=3, entropy_above=3.9)])
def test_leaves_are_flat_samples_under_the_same_noise(tiny_model, backend, segments):
    model, tok = tiny_model
    engine = RolloutEngine(model, tok, backend)
    tree_engine, trees = grow_two_levels(engine, segments)
    # a third draw from the inner nodes the second level's chains were cut into (their keys,
    # values and next-token logits were stored at the cut)
    cut = [n for t in trees for n in t.nodes if n.depth == 2 and n.open and n.children]
    assert cut
    tree_engine.grow([(n, 1) for n in cut], through=True)
    leaves = [t.root.leaves() for t in trees]
    batch = tree_engine.leaves_batch(trees, leaves)
    assert batch.size == sum(len(ls) for ls in leaves) and batch.size > len(trees) * 3
    if segments.entropy_above is not None:  # some segment ended before an uncertain token, not at 3 tokens
        assert any(0 < len(n.tokens) < 3 and not n.finished for t in trees for n in t.nodes[1:])
    for r, leaf in enumerate(leaf for ls in leaves for leaf in ls):
        noise = [u for node in leaf.path() for u in node.noise]
        noise = torch.tensor(noise + [0.5] * (len(TEMPS) - len(noise)))[None]
        flat = engine.rollout([leaf.tree.problem], [1], TEMPS, noise=noise)
        n = int(batch.mask[r].sum())
        assert n == int(flat.mask[0].sum())
        assert flat.response_ids[0, :n].tolist() == batch.response_ids[r, :n].tolist()
        assert flat.texts[0] == batch.texts[r]
        for key in ("behaviour_logp", "old_logp", "entropy"):
            assert torch.allclose(getattr(flat, key)[0, :n], getattr(batch, key)[r, :n], atol=1e-5), key


def test_token_accounting_counts_a_shared_prefix_once(tiny_model):
    tree_engine, trees = grow_two_levels(RolloutEngine(*tiny_model), Segments(max_tokens=2))
    leaves = [t.root.leaves() for t in trees]
    batch = tree_engine.leaves_batch(trees, leaves)
    nodes = [n for t in trees for n in t.nodes[1:]]
    assert batch.generated_tokens == sum(len(n.tokens) for n in nodes) == tree_engine.stats.generated
    # the responses repeat each node's tokens once per leaf under it
    repeats = sum(len(n.tokens) * len(n.leaves()) for n in nodes)
    assert batch.tokens == repeats and batch.sampled_tokens == batch.generated_tokens < batch.tokens
    # every token of a response names its node
    for r, leaf in enumerate(leaf for ls in leaves for leaf in ls):
        ids = [leaf.tree.node_id(n) for n in leaf.path() for _ in n.tokens]
        assert batch.tree_node[r, :len(ids)].tolist() == ids


def test_the_trainer_counts_generated_tokens_of_a_tree(tiny_config, tmp_path):
    from explorl.train.loop import Trainer
    cfg = tiny_config(recipe="tree_grpo", rollout={"name": "tree", "branch": 2, "segment_tokens": 2},
                      train={"steps": 1})
    trainer = Trainer(cfg, tmp_path / "run", progress=False, log=lambda *_: None)
    metrics = trainer.train_step()
    assert metrics["tokens/step"] == metrics["rollout/tokens_generated"] == trainer.tokens
    assert metrics["rollout/tokens_generated"] < metrics["rollout/response_tokens"]
    shared = 1 - metrics["rollout/tokens_generated"] / metrics["rollout/response_tokens"]
    assert metrics["rollout/shared_token_frac"] == pytest.approx(shared) and shared > 0
    engaged, note = trainer.plugins.rollout.engagement()[0].check([metrics])  # the board reads this
    assert engaged, note
    trainer.close()


def test_the_store_frees_what_no_open_node_needs(tiny_model):
    tree_engine, trees = grow_two_levels(RolloutEngine(*tiny_model), Segments(max_tokens=2), through_second=False)
    held = lambda: sum(n.kv[0][0].shape[1] for t in trees for n in t.nodes if n.kv is not None)  # noqa: E731
    assert tree_engine.stats.kv_tokens == held() and tree_engine.stats.kv_tokens_peak >= held()
    first = [n for t in trees for n in t.root.children]
    second = [c for n in first for c in n.children if c.open]
    assert second, "the second level left no open node"
    # closing the root and the first level frees nothing an open node needs: its prefix stays
    for tree in trees:
        tree_engine.close(tree.root)
    for node in first:
        tree_engine.close(node)
    assert all(n.kv is not None for n in [second[0].parent, second[0].tree.root])
    (child,), = tree_engine.grow([(second[0], 1)])
    assert child.path()[:-1] == second[0].path()
    # once every node is closed, nothing is held
    for tree in trees:
        for node in tree.nodes[1:]:
            if node.open:
                tree_engine.close(node)
    assert held() == tree_engine.stats.kv_tokens == 0
    with pytest.raises(ValueError, match="open"):
        tree_engine.grow([(second[0], 1)])


@pytest.mark.parametrize("where, message", [({"train": {"parallel": "ddp"}}, "one process"),
                                            ({"model": {"backend": "vllm"}}, "built-in engine")])
def test_a_tree_rollout_refuses_what_it_cannot_run_on(tiny_config, where, message):
    from explorl.train.plugins import Plugins
    with pytest.raises(ValueError, match=message):
        Plugins.from_config(tiny_config(recipe="tree_grpo", **where))
