"""CoT2's task and warm start: MNNS answers against a brute force of another kind, the
held-out split by digit multiset, the continuous-supervision targets and loss against hand
numbers, and a few supervision steps lower that loss."""
import itertools
import math
import random

import pytest
import torch

from explorl.explore.guidance.cot2_csft import CoT2CSFT, csft_batch, csft_kl, csft_loss, thought_targets
from explorl.policy.engine import RolloutEngine
from explorl.tasks import make_source
from explorl.tasks.mnns import STATES, held_out, parse_digits, state_char


@pytest.fixture(scope="module")
def mnns_model():
    """A tiny model whose character tokenizer spells MNNS's state characters (all of ASCII)."""
    from explorl.policy.model import build_tiny
    from explorl.tasks import ALPHABET
    from explorl.tasks.alphabet import ASCII
    return build_tiny("qwen2", ALPHABET + "".join(c for c in ASCII if c not in ALPHABET), 32, 2, 4, 2, 64, 64, seed=0)


def least_non_negative_sum(digits):
    """Brute force over subsets: a sign pattern is a subset S negated, the sum total - 2 sum(S)."""
    total = sum(digits)
    sums = {total - 2 * sum(c) for r in range(len(digits) + 1) for c in itertools.combinations(digits, r)}
    return min(s for s in sums if s >= 0)


def test_mnns_answers_against_brute_force():
    for length, top in [(2, 3), (4, 9), (5, 7)]:
        source = make_source("mnns", length=length, max_digit=top)
        problems = source.eval_set(60) + [source.sample(random.Random(s)) for s in range(60)]
        for p in problems:
            digits = parse_digits(p.prompt)
            assert len(digits) == length and all(1 <= d <= top for d in digits)
            assert p.answer == str(least_non_negative_sum(digits))
            assert source.score(p, source.reference_completion(p)) == 1.0
            assert source.score(p, f"{STATES[:3]}>{int(p.answer) + 1}") == 0.0


def test_mnns_chain_of_thought_is_the_best_sign_pattern_partial_sums():
    source = make_source("mnns")
    for p in source.eval_set(20):
        digits = parse_digits(p.prompt)
        thought, answer = source.reference_completion(p).split(">")
        sums = [STATES.index(c) - len(STATES) // 2 for c in thought]
        assert len(sums) == len(digits) - 1 and answer == p.answer
        steps = [sums[0]] + [b - a for a, b in zip(sums, sums[1:])] + [int(answer) - sums[-1]]
        assert [abs(s) for s in steps] == digits  # each step adds or subtracts the next digit


def test_mnns_keeps_every_permutation_of_a_multiset_on_one_side():
    source = make_source("mnns")
    held = {tuple(sorted(parse_digits(p.prompt))) for p in source.eval_set(200)}
    train = {tuple(sorted(parse_digits(source.sample(random.Random(s)).prompt))) for s in range(400)}
    assert held and train and not held & train
    assert all(held_out(list(m)) for m in held) and not any(held_out(list(m)) for m in train)


def test_mnns_refuses_sums_without_a_state_character():
    with pytest.raises(ValueError, match="state character"):
        make_source("mnns", length=7, max_digit=9)


def test_csft_kl_hand_numbers():
    logits = torch.log(torch.tensor([[1.0, 3.0], [1.0, 3.0]]))  # softmax (1/4, 3/4)
    target = torch.tensor([[0.5, 0.5], [1.0, 0.0]])
    kl = csft_kl(logits, target)
    assert kl[0].item() == pytest.approx(0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75), abs=1e-6)
    assert kl[1].item() == pytest.approx(math.log(4.0), abs=1e-6)


def test_csft_targets_are_the_uniform_distribution_over_sign_paths(mnns_model):
    model, tok = mnns_model
    engine = RolloutEngine(model, tok)
    source = make_source("mnns", length=3, max_digit=4)
    p = next(q for q in source.eval_set(40) if len(set(parse_digits(q.prompt)[:2])) == 1)  # d1 = d2: 0 twice
    d1, d2, _ = parse_digits(p.prompt)
    batch, targets = csft_batch(engine, [p], think_tokens=2)
    char_id = lambda s: tok(state_char(s), add_special_tokens=False).input_ids[0]  # noqa: E731
    step0 = {char_id(d1): 0.5, char_id(-d1): 0.5}
    step1 = {}
    for s in (d1 + d2, d1 - d2, -d1 + d2, -d1 - d2):  # duplicates add up
        step1[char_id(s)] = step1.get(char_id(s), 0.0) + 0.25
    for t, expected in enumerate([step0, step1]):
        got = {i: v for i, v in enumerate(targets[0, t].tolist()) if v > 0}
        assert got == pytest.approx(expected)
        assert torch.equal(batch.soft.weights[0, t], targets[0, t])  # the hard teacher feeds p*_t^T E
    answer = tok(">" + p.answer, add_special_tokens=False).input_ids + [engine.response_end_id]
    assert batch.response_ids[0, 2:2 + len(answer)].tolist() == answer
    # the loss: the KL of each thought step plus the answer tokens' cross-entropy
    logits = torch.randn(1, batch.response_ids.shape[1], targets.shape[-1])
    loss, parts = csft_loss(logits, batch, targets)
    ce = -torch.log_softmax(logits[0, 2:2 + len(answer)], -1).gather(-1, torch.tensor(answer)[:, None]).sum()
    assert loss.item() == pytest.approx((csft_kl(logits[0, :2], targets[0]).sum() + ce).item(), rel=1e-5)


def test_countdown_targets_superpose_solver_solutions():
    from explorl.tasks.countdown import parse_expression
    p = make_source("countdown", numbers=[3, 3]).eval_set(1)[0]
    traces, answer = thought_targets(p, 8)
    assert answer == p.answer and len(traces) >= 1 and all(len(t) == 8 for t, _ in traces)
    assert sum(w for _, w in traces) == pytest.approx(1.0)
    for text, _ in traces:
        assert parse_expression(text.strip())[0] == int(p.prompt.split(">")[1].rstrip(":"))


def test_a_few_supervision_steps_lower_the_loss(mnns_model):
    import copy
    model, tok = mnns_model
    engine = RolloutEngine(copy.deepcopy(model), tok)
    fixed = make_source("mnns", length=3, max_digit=3).eval_set(8)

    class Ctx:
        problems_per_step = 8

        @staticmethod
        def draw(n):
            return fixed

    Ctx.engine = engine
    batch, targets = csft_batch(engine, fixed, 2)
    before = csft_loss(engine.response_logits(batch), batch, targets)[0].item()
    out = CoT2CSFT(think_tokens=2, steps=15, lr=3e-3).before_training(Ctx)
    after = csft_loss(engine.response_logits(batch), batch, targets)[0].item()
    assert after < before - 0.5 and out["guide/csft_kl_last"] < out["guide/csft_kl_first"]
