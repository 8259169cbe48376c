"""Verifiers as registered components: extractors, exact/numeric/math equality, the format
reward, and Math-Verify's time limits inside and outside the verifier process."""
import signal
import threading
import time

import pytest

from explorl.cli import main
from explorl.registry import build
from explorl.tasks import TaskMix
from explorl.tasks import math_verifier
from explorl.tasks.checker import check_task
from explorl.tasks.deadline import Expired, deadline
from explorl.tasks.extractors import Extractor
from explorl.tasks.files import JsonlSource
from explorl.tasks.guard import GuardedVerifier

NESTED = "\\boxed{" + "(" * 30 + "1" + ")" * 30 + "}"  # Math-Verify's parser takes seconds on this


@pytest.mark.parametrize("name, completion, expected", [
    ("boxed", "so \\boxed{\\frac{1}{2}} it is", "\\frac{1}{2}"),
    ("boxed", "\\boxed{1} first, then \\boxed{ 2 } last", "2"),
    ("boxed", "\\boxed{\\begin{pmatrix}1&{2}\\end{pmatrix}}", "\\begin{pmatrix}1&{2}\\end{pmatrix}"),
    ("boxed", "\\boxed{\\boxed{3}}", "\\boxed{3}"),
    ("boxed", "\\boxed {4}", "4"),
    ("boxed", "the answer \\boxed{5} and an open \\boxed{6", "5"),
    ("boxed", "no box here: 7", None),
    ("boxed", "\\boxed{ }", None),
    ("boxed", "{" * 10_000 + "\\boxed{" * 10_000, None),
    ("gsm8k", "She sold 48 + 24 = 72 clips.\n#### 72", "72"),
    ("gsm8k", "#### 1\n#### 1,234 \nthanks", "1,234"),
    ("gsm8k", "72", None),
    ("answer_tags", "<think>hmm</think><answer> 10 </answer>", "10"),
    ("answer_tags", "<answer>1</answer><answer>\n2\n</answer>", "2"),
    ("answer_tags", "<answer>3", None),
    ("last_number", "48/2 = 24, total 1,234.5 clips", "1234.5"),
    ("last_number", "it drops to -7.", "-7"),
    ("last_number", "none at all", None),
    ("none", "  42 \n", "42"),
    ("none", " \n\t", None),
])
def test_extractors(name, completion, expected):
    assert Extractor(name).extract(completion) == expected


def test_regex_extractor_and_its_errors():
    ex = Extractor("regex", r"Final answer: (\S+)")
    assert ex.extract("Final answer: 3\nFinal answer: 4.") == "4."
    assert ex.extract("no answer") is None
    assert ex.reference("12") == "Final answer: 12"
    assert Extractor("regex", r"\[\[(.+?)\]\]$").reference("7") == "[[7]]"
    assert Extractor("regex", r"(?:ans|res)=(\d+)").reference("7") == "7"  # nothing it reads back: the answer
    with pytest.raises(ValueError, match="no group"):
        Extractor("regex", r"\d+")
    with pytest.raises(ValueError, match="not a valid regular expression"):
        Extractor("regex", r"(\d+")
    with pytest.raises(ValueError, match="needs a pattern"):
        Extractor("regex")
    with pytest.raises(ValueError, match="only used by the regex extractor"):
        Extractor("boxed", r"(\d)")


@pytest.mark.parametrize("name", ["boxed", "gsm8k", "answer_tags", "last_number", "none"])
def test_reference_completions_are_read_back(name):
    ex = Extractor(name)
    for answer in ["72", "-3.5", "\\frac{1}{2}"] if name != "last_number" else ["72", "-3.5"]:
        assert ex.extract(ex.reference(answer)) == answer


@pytest.mark.parametrize("gold, completion, reward", [
    ("\\frac{1}{2}", "\\boxed{0.5}", 1.0),
    ("0.5", "we get \\boxed{\\frac{1}{2}}", 1.0),
    ("2", "\\boxed{2.0}", 1.0),
    ("\\boxed{2}", "\\boxed{2.0}", 1.0),
    ("72", "\\boxed{72}", 1.0),
    ("\\sqrt{2}", "\\boxed{\\sqrt{2}}", 1.0),
    ("2\\pi", "\\boxed{2\\pi}", 1.0),
    ("2\\pi", "\\boxed{2}", 0.0),
    ("3", "\\boxed{4}", 0.0),
    ("\\frac{1}{2}", "\\boxed{0.51}", 0.0),
    ("72", "72", 0.0),  # no box: no answer
])
def test_math_verify_equivalences(gold, completion, reward):
    assert build("verifier", "math").score(gold, completion) == reward


def test_math_with_other_extractors_and_plain_numbers():
    assert build("verifier", {"name": "math", "extractor": "gsm8k"}).score("1/2", "so\n#### 0.5") == 1.0
    assert build("verifier", {"name": "math", "extractor": "none"}).score("\\frac{1}{2}", "The answer is $0.5$.") == 1.0
    assert build("verifier", {"name": "math", "extractor": "none"}).score("3", "I think it is 4") == 0.0


def test_exact_and_numeric():
    exact, numeric = build("verifier", "exact"), build("verifier", "numeric")
    assert exact.score("72", " 72\n") == 1.0 and exact.score("72", "72.0") == 0.0
    assert numeric.score("72", "72.0") == 1.0 and numeric.score("1200", "1,200") == 1.0
    assert numeric.score("0.5", ".5") == 1.0 and numeric.score("0.5", "1/2") == 0.0
    gsm = build("verifier", {"name": "numeric", "extractor": "gsm8k"})
    assert gsm.score("72", "48 + 24 = 72\n#### 72") == 1.0 and gsm.score("72", "the answer is 72") == 0.0


def test_format_reward():
    v = build("verifier", {"name": "math", "extractor": "boxed", "format_reward": 0.1})
    assert v.score("72", "\\boxed{72}") == 1.0        # right: 1, not 1.1
    assert v.score("72", "\\boxed{71}") == 0.1        # an answer in the asked-for form, but wrong
    assert v.score("72", "\\boxed{x^{}}") == 0.1      # unparseable but boxed
    assert v.score("72", "72") == 0.0                 # no answer found: nothing
    with pytest.raises(ValueError, match=r"verifier: format_reward must be in \[0, 1\)"):
        build("verifier", {"name": "exact", "format_reward": 1.0}, "verifier")
    with pytest.raises(ValueError, match="format_reward needs an extractor that can find no answer"):
        build("verifier", {"name": "numeric", "format_reward": 0.1})
    with pytest.raises(ValueError, match="unknown parameter of verifier 'math'"):
        build("verifier", {"name": "math", "extracter": "boxed"}, "verifier")


def test_check_task_holds_garbage_to_the_format_reward(tmp_path):
    path = tmp_path / "gsm.jsonl"
    path.write_text('{"prompt": "Natalia sold 48 clips and half as many more. How many?", "answer": "72"}\n'
                    '{"prompt": "What is 1/2 of 1?", "answer": "\\\\frac{1}{2}"}\n')
    for verifier in ({"name": "numeric", "extractor": "last_number", "format_reward": 0.2},
                     {"name": "math", "extractor": "boxed", "format_reward": 0.2}):
        source = JsonlSource(path, verifier=verifier)
        if verifier["extractor"] == "last_number":  # the fraction cannot be stated as one number
            with pytest.raises(AssertionError, match=r"reference answer '\\\\frac\{1\}\{2\}' scores 0\.2"):
                check_task(source, n=4, alphabet="")
            continue
        assert check_task(source, n=4, alphabet="")["slowest_verify_s"] < 0.5


def test_list_level_verifier(capsys):
    assert main(["list", "--level", "verifier"]) == 0
    out = capsys.readouterr().out
    for name in ("exact", "numeric", "math"):
        assert f"verifier    {name}" in out
    assert "Math-Verify" in out and "params: extractor='boxed', pattern='', format_reward=0.0, timeout_s=2.0" in out


# ---- time limits -------------------------------------------------------------------------------

def test_pathological_answer_is_wrong_within_the_deadline():
    v = build("verifier", {"name": "math", "timeout_s": 0.3})
    start = time.perf_counter()
    assert v.score("72", NESTED) == 0.0
    assert time.perf_counter() - start < 2.0


def test_deadline_nests_inside_an_outer_timer():
    fired = []
    previous = signal.signal(signal.SIGALRM, lambda *a: fired.append(True))
    try:
        signal.setitimer(signal.ITIMER_REAL, 5.0)
        with pytest.raises(Expired):
            with deadline(0.05):
                time.sleep(1)
        remaining = signal.getitimer(signal.ITIMER_REAL)[0]
        assert 3.0 < remaining <= 5.0 and not fired     # the outer timer runs on, less the time spent
        with deadline(10.0):                           # the outer timer fires first: left alone
            assert signal.getitimer(signal.ITIMER_REAL)[0] == pytest.approx(remaining, abs=0.5)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_math_off_the_main_thread_has_no_signal_errors():
    """Math-Verify's own SIGALRM timers raise ValueError off the main thread; ours are off there."""
    v, result = build("verifier", "math"), []
    thread = threading.Thread(target=lambda: result.append((v.score("\\frac{1}{2}", "\\boxed{0.5}"),
                                                            v.score("3", "\\boxed{4}"))))
    thread.start()
    thread.join(60)
    assert result == [(1.0, 0.0)]


@pytest.fixture
def math_mix(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"prompt": "What is 70 + 2?", "answer": "72"}\n')
    return TaskMix({"m": JsonlSource(path, name="m", verifier={"name": "math", "timeout_s": 0.5})})


@pytest.mark.parametrize("isolate", [True, False])
def test_pathological_completion_scores_zero_in_the_guard_without_a_fault(math_mix, isolate):
    problem = math_mix.eval_sets(1)["m"][0]
    guard = GuardedVerifier(math_mix, timeout=5.0, isolate=isolate)
    try:
        rewards, faults = guard.score([problem] * 3, [NESTED, "\\boxed{72}", "\\boxed{x"])
    finally:
        guard.close()
    assert rewards == [0.0, 1.0, 0.0] and faults == []
    if not isolate:
        assert signal.getitimer(signal.ITIMER_REAL)[0] == 0  # no timer left behind


def test_a_bug_in_explorl_code_still_surfaces(math_mix, monkeypatch):
    """Math-Verify's own parse failures are wrong answers; an exception of ours is a verifier error."""
    def broken(text):
        raise ZeroDivisionError("a bug")
    monkeypatch.setattr(math_verifier, "_parse", broken)
    math_verifier._parse_gold.cache_clear()
    problem = math_mix.eval_sets(1)["m"][0]
    with pytest.raises(ZeroDivisionError):
        math_mix.verify(problem, "\\boxed{72}")
    guard = GuardedVerifier(math_mix, timeout=5.0, isolate=False)
    rewards, faults = guard.score([problem], ["\\boxed{72}"])
    assert rewards == [0.0] and faults[0].kind == "error" and "ZeroDivisionError" in faults[0].detail
    math_verifier._parse_gold.cache_clear()
