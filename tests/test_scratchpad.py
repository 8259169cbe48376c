"""The long-reasoning sources: worked arithmetic whose steps are right, long enough to reason
over (25-120 characters, one token each for the testbed tokenizer), and a verifier that reads
only the final answer."""
from __future__ import annotations

import random

import pytest

from explorl.tasks import ALPHABET, TaskMix
from explorl.tasks.scratchpad import column_addition, final_answer, long_multiplication


def test_column_addition_writes_every_carry():
    assert column_addition(4738, 925) == "8+5+0=13;3+2+1=6;7+9+0=16;4+0+1=5;>5663"
    assert column_addition(999, 1) == "9+1+0=10;9+0+1=10;9+0+1=10;>1000"


def test_long_multiplication_adds_partial_products_at_their_place():
    assert long_multiplication(347, 26) == "347*6=2082;347*2=694;2082+6940=9022;>9022"
    assert long_multiplication(12, 305) == "12*5=60;12*0=0;60+0=60;12*3=36;60+3600=3660;>3660"


@pytest.fixture(scope="module")
def mix():
    return TaskMix.from_config({"addition_steps": {"digits": [4, 8]},
                                "multiplication_steps": {"digits": [2, 3], "factor_digits": [2, 3]}})


def test_reference_completions_are_long_correct_and_in_the_alphabet(mix):
    rng = random.Random(0)
    lengths = []
    for _ in range(300):
        p = mix.sample(rng)
        source = mix.sources[p.source]
        worked = source.reference_completion(p)
        lengths.append(len(worked))
        assert source.verify(p, worked) == 1.0
        assert set(p.prompt + worked) <= set(ALPHABET)
        for step in worked.split(";")[:-1]:  # every written step is true arithmetic
            left, right = step.split("=")
            assert eval(left) == int(right), (p.prompt, step)  # digits and + * only
    assert 25 <= min(lengths) and max(lengths) <= 120 and sum(lengths) / len(lengths) > 45


def test_the_verifier_reads_the_final_answer_only(mix):
    p = mix.sources["addition_steps"].problem(3)
    source = mix.sources["addition_steps"]
    assert source.verify(p, f"no working at all >{p.answer}") == 1.0
    assert source.verify(p, f"1+1=3;>{p.answer} ") == 1.0
    assert source.verify(p, p.answer) == 0.0  # no answer mark: no answer
    assert source.verify(p, f">{int(p.answer) + 1}") == 0.0
    assert final_answer("a>b>12") == "12" and final_answer("12") is None
