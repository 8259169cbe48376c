"""The forking regime's source: countdown answered by a randomized depth-first search written out.
Its traces must be valid searches (every move true arithmetic on numbers at hand, backing up only
from exhausted nodes, the answer reaching the target), drawn at random (several traces per
problem, several first moves), and its verifier must read only the final answer."""
from __future__ import annotations

import random
import re
from collections import Counter

import pytest

from explorl.tasks import ALPHABET, TaskMix, make_source
from explorl.tasks.checker import check_task
from explorl.tasks.countdown import parse_expression, parse_prompt
from explorl.tasks.countdown_search import MAX_TRACE_CHARS, CountdownSearch, text_roles

MOVE = re.compile(r"(\d+)([-+*])(\d+)=(\d+)")
OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def legal_moves(state: list[int]) -> set[tuple[int, str, int]]:
    """Written from the rules in the module docstring, not from its code: larger operand first,
    '-' only to a positive result, no '*' by 1."""
    out = set()
    for i in range(len(state)):
        for j in range(i + 1, len(state)):
            a, b = max(state[i], state[j]), min(state[i], state[j])
            out |= {(a, "+", b)} | ({(a, "-", b)} if a > b else set()) | ({(a, "*", b)} if b != 1 else set())
    return out


def replay(prompt: str, trace: str) -> int:
    """Check ``trace`` as a depth-first search for the prompt's target; return its moves."""
    numbers, target = parse_prompt(prompt)
    body, answer = trace.rsplit(">", 1)
    tokens = re.findall(r"\d+[-+*]\d+=\d+|,|;+", body)
    assert "".join(tokens) == body, f"unparsed text in {trace!r}"
    stack = [(list(numbers), set())]  # (numbers at the node, moves tried there)
    moves, last = 0, None
    for n, tok in enumerate(tokens):
        if tok == ",":
            assert last is not None and len(last) >= 2, f"',' after a move that leaves one number in {trace!r}"
            stack.append((last, set()))
            continue
        if tok.startswith(";"):
            assert last is not None and len(last) == 1, f"backing up from a move that is not a dead end: {trace!r}"
            for _ in range(len(tok) - 1):  # every node left behind was searched through
                state, tried = stack.pop()
                assert tried == legal_moves(state), f"left {state} with {legal_moves(state) - tried} untried"
            continue
        a, op, b, r = MOVE.fullmatch(tok).groups()
        a, b, r = int(a), int(b), int(r)
        state, tried = stack[-1]
        assert (a, op, b) in legal_moves(state), f"{tok} is not a move from {state} in {trace!r}"
        assert (a, op, b) not in tried, f"{tok} tried twice at {state}"
        assert OPS[op](a, b) == r, f"{tok} is wrong arithmetic"
        tried.add((a, op, b))
        rest = list(state)
        rest.remove(a)
        rest.remove(b)
        last = rest + [r]
        assert r != target or n == len(tokens) - 1, f"{tok} reaches the target but the search goes on"
        moves += 1
    assert last is not None and last[-1] == target, f"the last move of {trace!r} does not reach {target}"
    value, used = parse_expression(answer)
    assert value == target and not Counter(used) - Counter(numbers), f"answer {answer!r} of {trace!r}"
    return moves


@pytest.mark.parametrize("ranges", [{}, {"numbers": [3, 3]}, {"numbers": [4, 4], "max_value": [3, 6]}])
def test_check_task_passes(ranges):
    report = check_task(make_source("countdown_search", **ranges), n=30)
    assert report["unique_ids"] == report["problems"]


def test_traces_are_valid_searches_that_reach_the_target():
    source = make_source("countdown_search", numbers=[3, 4])
    rng = random.Random(0)
    lengths, dead_ends = [], 0
    for seed in range(150):
        p = source.problem(seed)
        for trace in (source.reference_completion(p), source.sample_reference(p, rng)):
            moves = replay(p.prompt, trace)
            dead_ends += trace.count(";") > 0
            lengths.append(len(trace))
            assert source.verify(p, trace) == 1.0
            assert set(trace) <= set(ALPHABET)
    assert dead_ends > 100  # most traces search: they back up at least once
    assert sum(n <= MAX_TRACE_CHARS for n in lengths) / len(lengths) > 0.97


def test_a_hand_made_trace_is_checked_as_a_search():
    """The replay itself must reject what is not a search (else the test above proves nothing)."""
    good = "7-3=4,5*4=20;5+4=9;5-4=1;;5*3=15,15+7=22>(5*3)+7"
    assert replay("3,5,7>22:", good) == 6
    for bad, why in [("7-3=4,5*4=20;5+4=9;;5*3=15,15+7=22>(5*3)+7", "untried"),   # left {4,5} with 5-4 untried
                     ("7-3=4,5*4=21;5+4=9;5-4=1;;5*3=15,15+7=22>(5*3)+7", "wrong arithmetic"),
                     ("7-3=4,6*4=24;5+4=9;5-4=1;;5*3=15,15+7=22>(5*3)+7", "not a move"),
                     ("5*3=15,15+7=22>(5*3)+6", "answer")]:
        with pytest.raises(AssertionError, match=why):
            replay("3,5,7>22:", bad)


def test_traces_are_drawn_at_random():
    source = make_source("countdown_search", numbers=[3, 3])
    rng = random.Random(1)
    firsts = Counter()
    for seed in range(40):
        p = source.problem(seed)
        traces = {source.sample_reference(p, rng) for _ in range(12)}
        assert len(traces) >= 2, (p.prompt, traces)  # several traces of every problem
        firsts.update(t.split("=")[0] for t in traces)
        assert source.reference_completion(p) == source.reference_completion(p)  # the fixed one is fixed
    # the first move: many combinations, none dominating
    assert len(firsts) > 30 and max(firsts.values()) < 0.1 * sum(firsts.values())


def test_the_verifier_reads_only_the_final_answer():
    source = CountdownSearch()
    p = source.problem(5)
    numbers, target = parse_prompt(p.prompt)
    trace = source.reference_completion(p)
    answer = trace.rsplit(">", 1)[1]
    assert source.verify(p, trace) == 1.0
    assert source.verify(p, f"1+1=3;;garbage>{answer}") == 1.0   # wrong working, right answer
    assert source.verify(p, f">{answer}") == 1.0                  # no working at all
    assert source.verify(p, trace.rsplit(">", 1)[0]) == 0.0       # the search without its answer
    assert source.verify(p, f"{trace}>{numbers[0]}") == 0.0       # a later, wrong answer wins
    assert source.verify(p, answer) == 0.0                        # no answer mark: no answer
    assert source.verify(p, f">{'+'.join(map(str, numbers * 2))}") == 0.0  # numbers used twice


def test_the_verifier_counts_the_numbers_an_answer_uses():
    from explorl.tasks import Problem
    p = Problem(id="cds/fixed", prompt="3,5,7>22:", answer="(5*3)+7", source="countdown_search")
    source = CountdownSearch()
    assert source.verify(p, "5+7=12;>(5*3)+7") == 1.0
    assert source.verify(p, ">7+7+5+3") == 0.0    # reaches 22 with 7 twice
    assert source.verify(p, ">11+11") == 0.0      # reaches 22 with numbers not given
    assert source.verify(p, ">(7+3)*2+2") == 0.0  # 2 is not among them


def test_text_roles_of_a_hand_made_trace():
    roles = text_roles("7-3=4,5*4=20;;5*3=15>(5*3)+7")
    assert "".join(r[0] for r in roles) == "dddaacdddaaacc" + "dddaaa" + "c" + "a" * 7
    assert roles[-7:] == ["answer"] * 7 and roles[3] == "arithmetic" and roles[14] == "decision"
    assert text_roles("12") == ["decision", "decision"] and text_roles("") == []


def test_the_solver_teacher_writes_answers_the_verifier_reads():
    from explorl.teachers.solver import Solver
    mix = TaskMix.from_config({"countdown_search": {"numbers": [3, 3]}})
    solver = Solver()
    solver.bind(mix, None, None)
    p = mix.sources["countdown_search"].problem(2)
    found = solver.solutions(p, 2)
    assert found and all(s.startswith(">") and mix.verify(p, s) == 1.0 for s in found)


def test_the_warm_up_sees_several_traces_of_a_repeated_problem():
    from explorl.policy.tokenizer import testbed_tokenizer
    from explorl.policy.warmup import _sft_batch
    mix = TaskMix.from_config({"countdown_search": {"numbers": [3, 3]}})
    p = mix.sources["countdown_search"].problem(9)
    ids, labels = _sft_batch(testbed_tokenizer(), [p] * 8, tasks=mix, reference_rng=random.Random(0))
    assert len({tuple(row.tolist()) for row in labels}) >= 3
    ids, labels = _sft_batch(testbed_tokenizer(), [p] * 8, tasks=mix)  # no rng: the fixed reference
    assert len({tuple(row.tolist()) for row in labels}) == 1
