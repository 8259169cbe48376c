"""SwiReasoning's switching rule on a scripted entropy sequence: latent -> explicit at once when
the entropy drops below the reference, explicit -> latent only after the dwell window, the
reference reset at each switch, the fed mixtures with their think / end-of-thinking markers,
the convergence and termination injections past the switch cap, and the end-of-thinking lock."""
import math

import pytest
import torch

from explorl.explore.decoding.swireasoning import EXPLICIT, LATENT, SwiReasoning
from explorl.policy.soft import TOKEN, UNSCORED
from explorl.policy import tokenizer as char_tokenizer

NEUTRAL = "abcdefgh"


class Engine:
    tokenizer = char_tokenizer.testbed_tokenizer()


def token(ch):
    return Engine.tokenizer(ch, add_special_tokens=False).input_ids[0]


def uniform_over(chars):
    """Logits uniform over ``chars`` (entropy ln len(chars)), -inf elsewhere."""
    logits = torch.full((1, len(Engine.tokenizer)), float("-inf"))
    logits[0, [token(c) for c in chars]] = 0.0
    return logits


def run(decoding, widths, max_new):
    rule = decoding.thinking(0)
    rule.start(1, Engine(), "cpu", max_new)
    g = torch.Generator().manual_seed(0)
    steps = []
    for t, width in enumerate(widths):
        chars = NEUTRAL[:width] if isinstance(width, int) else width
        logits = uniform_over(chars)
        c = rule.step(t, logits, 1.0, 1.0, g, None, None)
        steps.append((c, torch.softmax(logits, -1)[0], int(rule.state.mode), float(rule.state.ref),
                      int(rule.state.switches)))
    return steps


def onehot(ch):
    return torch.nn.functional.one_hot(torch.tensor(token(ch)), len(Engine.tokenizer)).float()


def test_switching_rule_on_a_scripted_entropy_sequence():
    d = SwiReasoning(alpha_0=0.5, beta_0=0.7, window_size=2, max_switch_count=1, termination_max_tokens=2)
    T = 10
    steps = run(d, [4, 2, 3, 8, 8, 2, 8, 8, 2, 4], T)
    modes = [s[2] for s in steps]
    assert modes == [LATENT, EXPLICIT, EXPLICIT, LATENT, LATENT, EXPLICIT, EXPLICIT, LATENT, EXPLICIT, EXPLICIT]
    refs = [s[3] for s in steps]  # H_ref is reset to the entropy at each switch
    assert refs == pytest.approx([math.log(w) for w in [4, 2, 2, 8, 8, 2, 2, 8, 2, 2]], abs=1e-6)
    assert [s[4] for s in steps] == [0, 1, 1, 1, 1, 2, 2, 2, 3, 3]  # latent -> explicit switches counted
    c0, p0 = steps[0][0], steps[0][1]
    assert c0.fed.item() and torch.allclose(c0.weights[0], 0.9 * p0 + 0.1 * onehot(";"))  # step 0: + line break
    c1, p1 = steps[1][0], steps[1][1]  # to explicit: beta_t p + (1 - beta_t) E[end of thinking]
    beta = 0.7 + 0.3 * 1 / T
    assert c1.fed.item() and torch.allclose(c1.weights[0], beta * p1 + (1 - beta) * onehot(">"))
    assert c1.rule.item() == TOKEN
    c2 = steps[2][0]  # the convergence text (">") replaces the sample after the switch at the cap
    assert c2.tokens.item() == token(">") and c2.rule.item() == UNSCORED and not c2.fed.item()
    c3, p3 = steps[3][0], steps[3][1]  # to latent after the window: alpha_t p + (1 - alpha_t) E[think]
    alpha = 0.5 + 0.5 * 3 / T
    assert c3.fed.item() and torch.allclose(c3.weights[0], alpha * p3 + (1 - alpha) * onehot(";"))
    assert c3.rule.item() == UNSCORED  # latent steps have no log-prob under the policy
    c4, p4 = steps[4][0], steps[4][1]
    assert c4.fed.item() and torch.allclose(c4.weights[0], p4)  # inside a latent block: p^T E
    assert steps[6][0].tokens.item() == token(">")  # second switch (count 2 = 2C): converge again
    # third switch (count 3 > 2C): the termination text, then the row stops termination_max_tokens later
    assert steps[9][0].tokens.item() == token(">")
    assert [bool(s[0].stop.item()) for s in steps] == [False] * 9 + [True]


def test_sampling_the_end_of_thinking_locks_explicit_mode():
    d = SwiReasoning(window_size=0)
    steps = run(d, [4, 2, ">", 8, 8, 8], 6)
    assert [s[2] for s in steps] == [LATENT, EXPLICIT, EXPLICIT, EXPLICIT, EXPLICIT, EXPLICIT]
    assert not any(s[0].fed.item() for s in steps[3:])  # no latent step after the lock
    unlocked = run(d, [4, 2, 3, 8, 8, 8], 6)  # the same entropies without the end token: back to latent
    assert [s[2] for s in unlocked][3] == LATENT


def test_markers_must_be_single_tokens():
    rule = SwiReasoning(think_token="<think>").thinking(0)
    with pytest.raises(ValueError, match="think_token"):
        rule.start(1, Engine(), "cpu", 8)
