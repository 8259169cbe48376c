"""Tests for explorl.tasks: generators, verifiers, TaskMix and JsonlSource."""
import json
import random
from collections import Counter

import pytest

from explorl.tasks import ALPHABET, SOURCES, Addition, JsonlSource, Problem, TaskMix, make_source
from explorl.tasks.checker import NEVER_CORRECT, check_task
from explorl.tasks import countdown
from explorl.tasks.countdown import Countdown, parse_expression, parse_prompt

ADVERSARIAL = NEVER_CORRECT + ["((((((((((", "3+", "*", ")(", "1" * 100, "  42  ", "\u202e42"]


@pytest.fixture
def jsonl_path(tmp_path):
    rows = [{"prompt": f"q{i}=", "answer": str(i * 3)} for i in range(10)]
    rows.append({"prompt": "half=", "answer": "0.5"})
    path = tmp_path / "toy.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    return path


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_check_task_passes(name):
    report = check_task(make_source(name), n=10)
    assert report["source"] == name
    assert report["unique_ids"] == report["problems"]
    assert report["max_prompt_chars"] <= 24


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_deterministic_and_in_alphabet(name):
    a, b = make_source(name), make_source(name)
    assert [a.problem(s) for s in range(20)] == [b.problem(s) for s in range(20)]
    assert a.sample(random.Random(7)) == b.sample(random.Random(7))
    assert a.eval_set(5, seed=3) == b.eval_set(5, seed=3)
    assert a.eval_set(5, seed=3) != a.eval_set(5, seed=4)
    for p in a.eval_set(30):
        assert set(p.prompt + p.answer) <= set(ALPHABET)


@pytest.mark.parametrize("name", sorted(SOURCES) + ["jsonl"])
def test_adversarial_completions_never_raise(name, jsonl_path):
    """Completions are decoded text: any string, however malformed, scores without raising."""
    src = JsonlSource(jsonl_path) if name == "jsonl" else make_source(name)
    for p in src.eval_set(5):
        for completion in ADVERSARIAL + [p.answer * 3, p.answer + "?!"]:
            reward = src.verify(p, completion)
            assert isinstance(reward, float) and 0.0 <= reward <= 1.0


def test_difficulty_changes_problem():
    add = make_source("addition")
    for seed in range(20):
        easy, hard = add.problem(seed, {"digits": 1}), add.problem(seed, {"digits": 5})
        assert max(len(x) for x in easy.prompt[:-1].split("+")) == 1
        assert max(len(x) for x in hard.prompt[:-1].split("+")) == 5
        assert easy.id != hard.id and easy.params == {"digits": 1}
    srt = make_source("sorting", length=[3, 3])
    assert all(len(srt.problem(s).answer) == 3 for s in range(10))
    cd = make_source("countdown")
    assert all(len(cd.problem(s, {"numbers": 4, "max_value": 9}).prompt.split(">")[0].split(",")) == 4
               for s in range(10))
    # out-of-range parameters are clamped to the source's ranges
    assert add.problem(0, {"digits": 99}).params == {"digits": 5}


def test_arithmetic_answers_are_correct():
    for name, op in (("addition", lambda a, b: a + b), ("multiplication", lambda a, b: a * b)):
        for p in make_source(name).eval_set(50):
            a, b = (int(x) for x in p.prompt[:-1].replace("*", "+").split("+"))
            assert int(p.answer) == op(a, b)


def test_sequence_answers():
    for p in make_source("sorting").eval_set(20):
        assert p.prompt.startswith("sort:") and p.answer == "".join(sorted(p.prompt[5:-1]))
    for p in make_source("reversal").eval_set(20):
        assert p.prompt.startswith("rev:") and p.answer == p.prompt[4:-1][::-1]


COUNTDOWN = Problem(id="cd/fixed", prompt="3,5,7>22:", answer="3*5+7", source="countdown")


@pytest.mark.parametrize("completion, reward", [
    ("3*5+7", 1.0),
    ("7+5*3", 1.0),             # a different correct expression
    (" (7 + 5*3) ", 1.0),
    ("7+3*5+0", 0.0),           # 0 is not given
    ("3*5+7+7-7", 0.0),         # 7 used three times
    ("3*7+5", 0.0),             # wrong value (26)
    ("2*11", 0.0),              # right value, numbers not given
    ("22", 0.0),
    ("-3+25", 0.0),             # unary minus is not allowed
    ("3*5+7=22", 0.0),
    ("(3*5+7", 0.0),
    ("3*5/1+7", 0.0),
])
def test_countdown_scoring(completion, reward):
    assert Countdown().verify(COUNTDOWN, completion) == reward


def test_countdown_generated_targets_are_reachable():
    for p in make_source("countdown").eval_set(50):
        value, used = parse_expression(p.answer)
        numbers, target = p.prompt[:-1].split(">")
        assert value == int(target) and 1 <= value <= 999
        assert not Counter(used) - Counter(int(n) for n in numbers.split(",")) and len(used) >= 2


@pytest.mark.parametrize("numbers", [2, 3, 4, 5])
def test_countdown_target_is_never_one_of_the_given_numbers(numbers):
    """Echoing a given number must never solve a problem: over eval and training seeds, for
    every ``numbers`` setting and small and large ``max_value`` (small values collide most)."""
    rng = random.Random(numbers)
    for max_value in (3, 9, 20):
        src = make_source("countdown", numbers=[numbers, numbers], max_value=[max_value, max_value])
        problems = src.eval_set(300) + src.eval_set(100, seed=7) + [src.sample(rng) for _ in range(300)]
        assert len({p.id for p in problems}) == len(problems)
        for p in problems:
            given, target = parse_prompt(p.prompt)
            assert len(given) == numbers and target not in given, p.prompt
            for n in set(given):  # no single given number scores
                assert src.verify(p, str(n)) == 0.0
            assert src.verify(p, p.answer) == 1.0
    # the default ranges (numbers 2..5, max_value 3..20) as the testbed draws them
    src = make_source("countdown")
    for p in src.eval_set(500) + [src.sample(rng) for _ in range(500)]:
        given, target = parse_prompt(p.prompt)
        assert target not in given, p.prompt


def test_countdown_falls_back_to_the_sum_of_all_numbers(monkeypatch):
    """When no drawn expression qualifies, the target is the sum of every number (larger than each)."""
    monkeypatch.setattr(countdown, "_build", lambda rng, items: items[0])  # every draw echoes a number
    prompt, answer = Countdown().generate(random.Random(0), {"numbers": 4, "max_value": 9})
    given, target = parse_prompt(prompt)
    assert target == sum(given) and target not in given
    assert parse_expression(answer) == (target, given)


def test_parse_expression():
    assert parse_expression("(1+2)*3-4") == (5, [1, 2, 3, 4])
    assert parse_expression("10-2-3") == (5, [10, 2, 3])
    for bad in ["", "1+", "(1", "1)", "1 2", "a", "1//2", "(" * 40 + "1" + ")" * 40]:
        with pytest.raises(ValueError):
            parse_expression(bad)


def test_taskmix_weights():
    mix = TaskMix({n: make_source(n) for n in ("addition", "sorting", "reversal")},
                  {"addition": 3.0, "sorting": 1.0, "reversal": 0.0})
    rng = random.Random(0)
    counts = Counter(mix.sample(rng).source for _ in range(2000))
    assert counts["reversal"] == 0
    assert 2.4 < counts["addition"] / counts["sorting"] < 3.7
    assert mix.sample(rng, source="reversal").source == "reversal"
    p = mix.sample(rng, source="addition", params={"digits": 2})
    assert p.params == {"digits": 2} and mix.verify(p, p.answer) == 1.0
    assert mix.verify(p, "nope") == 0.0
    assert set(mix.eval_sets(4)) == {"addition", "sorting", "reversal"}
    assert all(len(v) == 4 for v in mix.eval_sets(4).values())


def test_taskmix_errors():
    with pytest.raises(ValueError, match="unknown task source 'bogus'.*addition"):
        make_source("bogus")
    with pytest.raises(ValueError, match="addition.*digitz"):
        TaskMix.from_config({"addition": {"digitz": [1, 2]}})
    with pytest.raises(ValueError, match="sorting.*weight"):
        TaskMix.from_config({"sorting": {"weight": "heavy"}})
    with pytest.raises(ValueError, match="countdown.*numbers"):
        TaskMix.from_config({"countdown": {"numbers": [1, 2, 3]}})
    with pytest.raises(ValueError, match="positive weight"):
        TaskMix({"addition": make_source("addition")}, {"addition": 0})
    with pytest.raises(ValueError, match="unknown"):
        TaskMix({"addition": make_source("addition")}, {"sorting": 1})


def test_taskmix_from_config():
    mix = TaskMix.from_config({"addition": {"weight": 2, "digits": [2, 3]}, "countdown": {}})
    assert mix.names == ["addition", "countdown"] and mix.weights["addition"] == 2.0
    rng = random.Random(1)
    for _ in range(20):
        p = mix.sample(rng, source="addition")
        assert 2 <= p.params["digits"] <= 3


def test_jsonl_source(jsonl_path):
    src = JsonlSource(jsonl_path, holdout=3)
    assert src.name == "toy" and len(src.rows) == 11
    report = check_task(src, n=5, alphabet="")
    assert report["source"] == "toy"
    evals = src.eval_set(10)
    assert len(evals) == 3 and evals == src.eval_set(10)
    train_ids = {src.sample(random.Random(i)).id for i in range(50)}
    assert not train_ids & {p.id for p in evals}
    half = next(p for p in evals if p.answer == "0.5")
    assert src.verify(half, " 0.50 ") == 1.0 and src.verify(half, ".5") == 1.0
    assert src.verify(half, "0.5x") == 0.0 and src.verify(half, "1/2") == 0.0


def test_jsonl_bad_rows(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "a", "answer": "1"}\n\n{"prompt": "b"}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl.*line 3.*'answer'"):
        JsonlSource(path)
    path.write_text('{"prompt": "a", "answer": "1"}\nnot json\n')
    with pytest.raises(ValueError, match="line 2"):
        JsonlSource(path)
    path.write_text('{"q": "a", "a": "1"}\n')
    assert JsonlSource(path, name="qa", prompt_key="q", answer_key="a").problem(0).prompt == "a"


@pytest.mark.parametrize("row, message", [
    ('{"prompt": "a=", "answer": null}', r"line 2: 'answer' \(the answer\) must be a string or a number, got null"),
    ('{"prompt": null, "answer": "1"}', r"line 2: 'prompt' \(the prompt\) must be a string or a number, got null"),
    ('{"prompt": ["a"], "answer": "1"}', r"line 2: 'prompt' .* got list"),
    ('{"prompt": "a=", "answer": true}', r"line 2: 'answer' .* got bool"),
    ('{"prompt": "a=", "answer": {"x": 1}}', r"line 2: 'answer' .* got dict"),
    ('{"prompt": "  ", "answer": "1"}', r"line 2: 'prompt' \(the prompt\) is empty"),
    ('{"prompt": "a=", "answer": NaN}', r"line 2: invalid JSON \(NaN is not a JSON number\)"),
    ('["a=", "1"]', r"line 2: expected a JSON object, got list"),
    ('{"prompt": "a="}', r"line 2: missing key 'answer'"),
    ('{"prompt": "a=\\ud800", "answer": "1"}', r"line 2: 'prompt' .* unpaired surrogate"),
])
def test_jsonl_values_that_are_not_text_name_file_and_line(tmp_path, row, message):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"prompt": "1+1=", "answer": "2"}\n' + row + "\n")
    with pytest.raises(ValueError, match=r"rows\.jsonl: " + message):
        JsonlSource(path)


def test_jsonl_numbers_become_strings(tmp_path):
    path = tmp_path / "nums.jsonl"
    path.write_text('{"prompt": 12, "answer": 3}\n{"prompt": "x=", "answer": 0.5}\n')
    assert [row[1:] for row in JsonlSource(path).rows] == [("12", "3"), ("x=", "0.5")]


@pytest.mark.parametrize("content", [b"", b"\n", b"\n  \n\t\n", b"\r\n\r\n"])
def test_jsonl_without_rows_says_so(tmp_path, content):
    path = tmp_path / "empty.jsonl"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=r"empty\.jsonl: the file has no rows"):
        JsonlSource(path)


def test_jsonl_bytes_and_sizes_name_the_line(tmp_path):
    from explorl.tasks.files import MAX_ROW_BYTES
    path = tmp_path / "raw.jsonl"
    good = b'{"prompt": "1+1=", "answer": "2"}\n'
    path.write_bytes(good + good + b'{"prompt": "caf\xe9=", "answer": "1"}\n')
    with pytest.raises(ValueError, match=r"raw\.jsonl: line 3: not UTF-8 \(byte b'\\xe9' at column 16"):
        JsonlSource(path)
    path.write_bytes(good + b'{"prompt": "' + b"1" * MAX_ROW_BYTES + b'", "answer": "1"}\n' + good)
    with pytest.raises(ValueError, match=rf"raw\.jsonl: line 2: the row is longer than {MAX_ROW_BYTES} bytes"):
        JsonlSource(path)
    path.write_bytes(b"\xef\xbb\xbf" + good)  # a byte-order mark is not a bad byte
    assert JsonlSource(path).rows == [(1, "1+1=", "2")]
    with pytest.raises(FileNotFoundError, match="JSONL file not found"):
        JsonlSource(tmp_path / "nope.jsonl")
    with pytest.raises(ValueError, match="is a directory"):
        JsonlSource(tmp_path)


class _Echo(Addition):
    """Addition with a configurable bug, to show check_task catches it."""

    def __init__(self, bug):
        super().__init__()
        self.bug = bug

    def generate(self, rng, params):
        prompt, answer = super().generate(rng, params)
        if self.bug == "nondeterministic":
            return prompt, str(random.random())
        if self.bug == "alphabet":
            return prompt.replace("+", "plus_"), answer
        return prompt, answer

    def score(self, problem, completion):
        if self.bug == "accepts_empty":
            return 1.0 if completion.strip() in (problem.answer, "") else 0.0
        if self.bug == "wrong_reference":
            return 0.0
        return super().score(problem, completion)


@pytest.mark.parametrize("bug, message", [
    ("nondeterministic", "not deterministic"),
    ("alphabet", "outside the alphabet"),
    ("accepts_empty", "scores 1.0"),
    ("wrong_reference", "reference answer"),
])
def test_check_task_catches_bugs(bug, message):
    with pytest.raises(AssertionError, match=message):
        check_task(_Echo(bug), n=5)
