"""go_explore: count-based cell selection, the cell-building rule with FR3E's anchors (lowest
probability vs highest entropy), returning to a cell through the prompt (no gradient on the
prefix; the verifier judges prefix + continuation), FR3E's advantage scaling by hand, and runs
of its recipe alone and stacked."""
import json
import math
import random
from types import SimpleNamespace

import pytest
import torch

from explorl.batch import ON_POLICY, PREFIX, RolloutBatch
from explorl.explore.guidance.go_explore import (
    GoExplore,
    anchor_positions,
    returned_problem,
    state_value,
    visit_weight,
)
from explorl.tasks.problem import Problem
from loss_records import mean_centred, record_batches
from run_records import unbroken_and_resumed

P = [Problem(id=f"p{i}", prompt=f"{i}+1=", answer=str(i + 1), source="addition") for i in range(3)]


@pytest.fixture(scope="module")
def tok():
    from explorl.policy.tokenizer import build_char_tokenizer
    from explorl.tasks import ALPHABET
    return build_char_tokenizer(ALPHABET)


def scored_batch(tok, problems, texts_per_problem, rewards_per_problem, old_logp=None, entropy=None):
    """A batch of given responses (EOS appended) with given rewards and per-token tensors."""
    counts = [len(t) for t in texts_per_problem]
    texts = [t for ts in texts_per_problem for t in ts]
    ids = [tok(t, add_special_tokens=False).input_ids + [tok.eos_token_id] for t in texts]
    R, L = len(ids), max(len(x) for x in ids)
    response = torch.full((R, L), tok.pad_token_id)
    mask = torch.zeros(R, L)
    for r, x in enumerate(ids):
        response[r, :len(x)] = torch.tensor(x)
        mask[r, :len(x)] = 1
    old = torch.zeros(R, L) if old_logp is None else torch.tensor(old_logp) * mask
    ent = torch.zeros(R, L) if entropy is None else torch.tensor(entropy) * mask
    group = torch.repeat_interleave(torch.arange(len(problems)), torch.tensor(counts))
    return RolloutBatch(problems=list(problems), counts=counts, group=group,
                        prompt_ids=torch.ones(len(problems), 3, dtype=torch.long),
                        prompt_mask=torch.ones(len(problems), 3),
                        response_ids=response, mask=mask, behaviour_logp=old.clone(), old_logp=old, entropy=ent,
                        texts=texts,
                        rewards=torch.tensor([x for rs in rewards_per_problem for x in rs], dtype=torch.float))


def test_visit_weight_and_selection_prefer_rarely_visited_cells():
    assert visit_weight(0) == 1.0 and visit_weight(3) == pytest.approx(0.5) and visit_weight(99) == pytest.approx(0.1)
    gx = GoExplore()
    gx.archive = {("p0", "1"): {"visits": 0}, ("p0", "2"): {"visits": 99}}
    rng = random.Random(0)
    picks = [gx.select(rng, 1)[0] for _ in range(4000)]
    share = picks.count(("p0", "1")) / len(picks)
    assert share == pytest.approx(1 / 1.1, abs=0.02)            # P = w / Σw = 1 / (1 + 0.1)
    gx.archive[("p1", "3")] = {"visits": 3}
    both = gx.select(rng, 3)
    assert sorted(both) == sorted(gx.archive)                    # without replacement: each cell once


def test_eviction_drops_the_most_visited_then_the_oldest():
    gx = GoExplore(max_cells=2)
    gx.archive = {("a", "1"): {"visits": 5, "born": 3}, ("a", "2"): {"visits": 1, "born": 1},
                  ("a", "3"): {"visits": 1, "born": 2}, ("a", "4"): {"visits": 0, "born": 4}}
    gx._evict()
    assert sorted(gx.archive) == [("a", "3"), ("a", "4")]


def test_anchors_by_lowest_probability_vs_highest_entropy():
    old = torch.tensor([-9.0, -2.0, -0.3, -1.0, -0.2, -0.1])
    ent = torch.tensor([5.0, 0.1, 3.0, 0.2, 2.5, 0.3])
    # position 0 never (its prefix would be empty), whatever its score
    assert anchor_positions(old, ent, 6, 2, "low_prob") == [1, 3]
    assert anchor_positions(old, ent, 6, 2, "entropy") == [2, 4]
    assert anchor_positions(old, ent, 6, 9, "low_prob") == [1, 2, 3, 4, 5]   # fewer when the response is short
    assert anchor_positions(old, ent, 4, 2, "entropy") == [2, 3]             # only the response's tokens (not 4)
    assert anchor_positions(old, ent, 6, 2, "entropy", last=2) == [1, 2]     # a prefix budget caps the position
    assert anchor_positions(old, ent, 1, 2, "low_prob") == []


def test_cells_come_from_partially_solved_groups(tok):
    """p0: all correct, p1: all wrong, p2: one correct, one wrong. Only p2 makes cells: from its
    first correct and first wrong rollout, cut before each of the K = 2 least probable tokens."""
    batch = scored_batch(tok, P, [["1", "1"], ["7", "8"], ["4321", "5678"]], [[1, 1], [0, 0], [1, 0]],
                         old_logp=[[-5, -5, 0, 0, 0], [-5, -5, 0, 0, 0], [-5, -5, 0, 0, 0], [-5, -5, 0, 0, 0],
                                   [-0.1, -2.0, -0.3, -1.0, -0.2], [-5, -0.1, -0.2, -0.3, -3.0]])
    gx = GoExplore(anchors=2)
    added = gx.add_cells(batch, {0: None, 1: None, 2: None}, step=1, tokenizer=tok, max_prefix_tokens=11)
    assert added == 4
    assert sorted(gx.archive) == [("p2", "4"), ("p2", "432"), ("p2", "567"), ("p2", "5678")]
    assert gx.archive[("p2", "432")]["parent"] == ("p2", "4") and gx.archive[("p2", "4")]["parent"] is None
    assert gx.archive[("p2", "4")]["parent_value"] == 0.5          # V of p2's group: 1 of 2 above the mean
    assert all(c["problem"] == P[2] and c["visits"] == 0 for c in gx.archive.values())
    # entropy anchors pick other positions
    batch.entropy = torch.zeros_like(batch.old_logp)
    batch.entropy[4, 2] = 2.0
    gx2 = GoExplore(anchors=1, anchor="entropy")
    gx2.add_cells(batch, {2: None}, step=1, tokenizer=tok, max_prefix_tokens=11)
    assert ("p2", "43") in gx2.archive
    # without the partial rule an all-correct group makes cells too ("1" + EOS: the one anchor is the
    # EOS position, whose prefix is the whole answer: the continuation decides whether to stop)
    gx3 = GoExplore(anchors=1, require_partial=False, wrong_per_problem=0)
    gx3.add_cells(batch, {0: None}, step=1, tokenizer=tok, max_prefix_tokens=11)
    assert list(gx3.archive) == [("p0", "1")]


def test_returning_puts_the_prefix_in_the_prompt(tiny_model):
    """An explored cell's rows: a new PREFIX group whose prompt ends with the prefix, whose
    response ids hold the continuation only, and whose verifier sees prefix + continuation."""
    from explorl.policy.engine import RolloutEngine
    from explorl.tasks import make_source
    model, tok = tiny_model
    engine = RolloutEngine(model, tok)
    source = make_source("addition", digits=[1, 2])
    seen = []

    def sample(problems, counts, temperatures=None):
        batch = engine.rollout(problems, counts, [1.0] * 6, seed=1)
        group_problems = [problems[g] for g in batch.group.tolist()]
        seen.extend((p, t) for p, t in zip(group_problems, batch.texts))
        batch.rewards = torch.tensor([source.score(p, p.completed(t)) for p, t in zip(group_problems, batch.texts)])
        return batch

    base = scored_batch(tok, P[:1], [["2", "3"]], [[0, 0]])    # not partially solved: no new cell
    gx = GoExplore(cells_per_step=1, rollouts_per_cell=4)
    problem = Problem(id="q", prompt="12+7=", answer="19", source="addition")
    gx.archive = {("q", "1"): {"problem": problem, "prefix": "1", "visits": 0, "born": 0, "parent": None,
                               "parent_value": 0.0, "value": None}}
    ctx = SimpleNamespace(engine=engine, rng=random.Random(0), step=1, sample=sample,
                          extras={"teacher_context": SimpleNamespace(max_new_tokens=6)})
    out, m = gx.guide(base, ctx)
    assert m["guide/gx_explored"] == 1 and gx.archive[("q", "1")]["visits"] == 1
    rows = (out.row_kind == PREFIX).nonzero().squeeze(-1)
    assert len(rows) == 4 and out.counts == [2, 4] and (out.row_kind[:2] == ON_POLICY).all()
    g = int(out.group[rows[0]])
    returned = out.problems[g]
    assert returned.prefix == "1" and returned.prompt == "12+7=" and returned.id != "q"
    assert returned == returned_problem(problem, "1")
    prompt = tok.decode(out.prompt_ids[g][out.prompt_mask[g] == 1].tolist(), skip_special_tokens=True)
    assert prompt == "12+7=1"                                        # the prefix sits in the prompt
    for r in rows.tolist():
        ids = out.response_ids[r][out.mask[r] == 1].tolist()
        text = tok.decode(ids, skip_special_tokens=True)
        assert text == out.texts[r]                                  # response ids: the continuation only
        assert torch.equal(out.grad_mask[r], out.mask[r])            # gradient on those tokens, none on the prefix
    assert [(p.prefix, p.prompt) for p, _ in seen] == [("1", "12+7=")] * 4
    assert out.rewards[rows].tolist() == [source.score(returned, "1" + t) for _, t in seen]


def test_fr3e_deltas_along_a_chain(tok):
    """Chain root → c1 ("1") → c2 ("12") → c3 ("123"); the root group's V was 0.5.
    Explored: c1 with rewards [1, 1, 1, 0] (V = 0.75), c2 with [1, 0, 0, 0] (V = 0.25).
    Δ(c1) = 0.75 − 0.5 = 0.25, Δ(c2) = 0.25 − 0.75 = −0.5.
    c3's parent c2 now has a value; a cell whose ancestors were never explored falls back to the
    root group's V."""
    q = Problem(id="q", prompt="12+7=", answer="19", source="addition")
    gx = GoExplore(fr3e_scaling=True)
    cell = lambda prefix, parent: {"problem": q, "prefix": prefix, "visits": 0, "born": 0, "parent": parent,
                                   "parent_value": 0.5, "value": None}
    gx.archive = {("q", "1"): cell("1", None), ("q", "12"): cell("12", ("q", "1")),
                  ("q", "123"): cell("123", ("q", "12"))}
    assert gx.parent_value(("q", "123")) == 0.5                      # nothing explored yet: the root's V
    assert state_value([1, 1, 1, 0]) == 0.75 and state_value([1, 0, 0, 0]) == 0.25 and state_value([1, 1]) == 0.0
    deltas = gx.record_values({("q", "1"): [1, 1, 1, 0], ("q", "12"): [1, 0, 0, 0]})
    assert deltas[("q", "1")] == pytest.approx(0.25) and deltas[("q", "12")] == pytest.approx(-0.5)
    assert gx.parent_value(("q", "123")) == 0.25


def test_fr3e_scaling_from_rollouts(tok):
    """One step through ``guide`` and ``augment``: the problem's group [1, 0, 0, 0] has V(S_0) = 0.25;
    its correct response "12" gives the chain S_0 → S_1 ("1") → S_2 ("12") (K = 2 anchors at its two
    least probable positions). Exploring S_1 gives [1, 1, 1, 0] (V = 0.75), S_2 gives [1, 0, 0, 0]
    (V = 0.25): Δ_1 = 0.75 − 0.25 = 0.5, Δ_2 = 0.25 − 0.75 = −0.5, and each explored group's
    mean-centred advantages are divided by exp(Δ_j). The problem's own group keeps its advantages (the
    root's exp(1 − V(S_0)) is not applied: see the module docstring)."""
    q = Problem(id="q", prompt="12+7=", answer="19", source="addition")
    base = scored_batch(tok, [q], [["12", "34", "56", "78"]], [[1, 0, 0, 0]],
                        old_logp=[[-0.1, -5, -4]] + [[-0.1, -0.1, -0.1]] * 3)
    explored_rewards = {"1": [1, 1, 1, 0], "12": [1, 0, 0, 0]}

    def sample(problems, counts, temperatures=None):
        assert counts == [4] * len(problems)
        return scored_batch(tok, problems, [["9"] * 4] * len(problems), [explored_rewards[p.prefix] for p in problems])

    gx = GoExplore(anchors=2, correct_per_problem=1, wrong_per_problem=0, cells_per_step=2, rollouts_per_cell=4,
                   deepen=False, fr3e_scaling=True)
    ctx = SimpleNamespace(engine=SimpleNamespace(tokenizer=tok, pad=tok.pad_token_id), rng=random.Random(0), step=1,
                          sample=sample, extras={"teacher_context": SimpleNamespace(max_new_tokens=6)})
    batch, m = gx.guide(base, ctx)
    assert m["guide/gx_new_cells"] == 2 and m["guide/gx_explored"] == 2
    assert gx.archive[("q", "12")]["parent"] == ("q", "1") and gx.archive[("q", "1")]["parent_value"] == 0.25
    prefixes = [p.prefix for p in batch.problems]
    assert prefixes[0] == "" and sorted(prefixes[1:]) == ["1", "12"]
    # the estimator's mean-centred advantages (adv_no_use_std), then augment
    grid, _ = batch.to_groups(batch.rewards)
    batch.advantages = batch.rewards - batch.from_groups(grid.sum(1, keepdim=True).expand_as(grid) / 4)
    out, m = gx.augment(batch, None)
    e = math.exp
    expected = {"": [0.75, -0.25, -0.25, -0.25],
                "1": [a / e(0.5) for a in (0.25, 0.25, 0.25, -0.75)],
                "12": [a / e(-0.5) for a in (0.75, -0.25, -0.25, -0.25)]}
    for g, prefix in enumerate(prefixes):
        rows = (out.group == g).nonzero().squeeze(-1)
        assert out.advantages[rows].tolist() == pytest.approx(expected[prefix], rel=1e-6), prefix
    assert m["guide/gx_fr3e_scale"] == pytest.approx((e(-0.5) + e(0.5)) / 2)
    assert gx.augment(out, None) == (out, {})        # the factors are used once


def run(tiny_config, tmp_path, steps=3, **sections):
    from explorl.explore.guidance import go_explore
    from explorl.train.loop import Trainer
    # parity (tests/user_sources.py) after a 100-step warm start: groups partly solved, so cells form; its
    # one-character answers make the EOS position an anchor, whose prefix is the whole answer
    cfg = tiny_config(recipe="go_explore", tasks={"parity": {"kind": "user_sources:Parity", "length": [2, 3]},
                                                  "addition": {"digits": [1, 1]}},
                      model={"warmup": {"steps": 100}}, train={"steps": steps}, **sections)
    trainer = Trainer(cfg, tmp_path / "run", progress=False, log=lambda *_: None)
    method = next(g for g in trainer.plugins.guidance if isinstance(g, go_explore.GoExplore))
    batches = record_batches(method)
    trainer.run()
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    return cfg, batches, rows, method


def explored_groups(batch):
    """{group index: rewards} of the groups of prefix rows."""
    groups = {}
    for r in (batch.row_kind == PREFIX).nonzero().squeeze(-1).tolist():
        groups.setdefault(int(batch.group[r]), []).append(float(batch.rewards[r]))
    return groups


def test_recipe_runs_end_to_end(tiny_config, tmp_path):
    from explorl.tasks import TaskMix
    cfg, batches, rows, _ = run(tiny_config, tmp_path)
    assert rows[-1]["guide/gx_cells"] > 0 and any(r.get("rows/prefix", 0) > 0 for r in rows)
    # the logged counts and pass rate recomputed from each step's batch; without fr3e_scaling every group
    # (explored ones included, each on its own) keeps the mean-centred advantage of the recipe's grpo
    for r, batch in zip(rows, batches):
        prefix = batch.row_kind == PREFIX
        if "guide/gx_explored" in r:
            assert r["guide/gx_prefix_rows"] == r["rows/prefix"] == int(prefix.sum()) == 8 * r["guide/gx_explored"]
            assert r["guide/gx_prefix_pass_rate"] == pytest.approx(float((batch.rewards[prefix] >= 1).float().mean()),
                                                                   abs=5e-7)
        assert torch.allclose(batch.advantages, mean_centred(batch), atol=1e-6)
    tasks = TaskMix.from_config(cfg.tasks)
    prefix_rows, needs_prefix = 0, 0
    for batch in batches:
        for r in (batch.row_kind == PREFIX).nonzero().squeeze(-1).tolist():
            problem = batch.problems[int(batch.group[r])]
            assert problem.prefix and float(batch.rewards[r]) == tasks.verify(problem, problem.prefix + batch.texts[r])
            needs_prefix += float(batch.rewards[r]) != tasks.verify(problem, batch.texts[r])
            prefix_rows += 1
    assert prefix_rows > 0 and needs_prefix > 0       # the verifier judged prefix + continuation
    # the token budget counts the explored rollouts
    assert all(r["tokens/step"] > 0 for r in rows)
    state = torch.load(max((tmp_path / "run" / "ckpt").glob("step_*")) / "trainer.pt", weights_only=True)
    assert any(isinstance(s, dict) and "archive" in s for s in state["plugins"])


def test_stacks_with_knapsack_and_clip_cov(tiny_config, tmp_path):
    _, batches, rows, gx = run(tiny_config, tmp_path, steps=2, budget={"name": "knapsack"},
                               objective=[{"name": "clip_cov"}],
                               guidance=[{"name": "go_explore", "fr3e_scaling": True, "anchor": "entropy"}])
    assert (tmp_path / "run" / "eval.json").exists() and len(rows) == 2
    # FR3E's scale recomputed from the last step's rollouts: each explored group's mean-centred advantages
    # divided by exp(V(cell) − V(parent)), V the share of rewards above the group mean
    batch, factors = batches[-1], []
    centred, groups = mean_centred(batch), explored_groups(batch)
    assert groups and rows[-1]["guide/gx_explored"] == len(groups)
    for g, rewards in groups.items():
        problem = batch.problems[g]
        key = (problem.id.split("|go_explore:")[0], problem.prefix)
        mean = sum(rewards) / len(rewards)
        value = sum(x > mean for x in rewards) / len(rewards)
        factor = math.exp(-(value - gx.parent_value(key)))
        rows_g = (batch.group == g).nonzero().squeeze(-1)
        assert batch.advantages[rows_g].tolist() == pytest.approx((centred[rows_g] * factor).tolist(), abs=1e-6)
        factors += [factor] * len(rewards)
    own = batch.row_kind != PREFIX
    assert torch.allclose(batch.advantages[own], centred[own], atol=1e-6)
    assert rows[-1]["guide/gx_fr3e_scale"] == pytest.approx(sum(factors) / len(factors), abs=5e-7)


def test_a_resumed_run_equals_an_unbroken_one(tiny_config, tmp_path):
    """The archive (cells, visits, values) is checkpointed: stopping after step 1 and resuming gives the
    same steps 2 and 3."""
    cfg = tiny_config(recipe="go_explore", tasks={"parity": {"kind": "user_sources:Parity", "length": [2, 3]}},
                      model={"warmup": {"steps": 100}}, train={"steps": 3},
                      guidance=[{"name": "go_explore", "fr3e_scaling": True, "cells_per_step": 4}])
    full, part = unbroken_and_resumed(cfg, tmp_path)
    assert part == full
    assert full[2]["guide/gx_cells"] > 0 and full[2]["guide/gx_selected_visits"] >= 0
