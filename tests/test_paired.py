"""A held-out evaluation keeps the mean response length; two evaluations of the same problems
(start and end of a run) compare problem by problem with the board's paired bootstrap."""
import math

import pytest

from explorl.eval.evaluate import summarize
from explorl.compare.paired import format_start_end, paired_change


def _evaluation(correct, samples=8, ids=None, tokens=4.0, entropy=0.5):
    """An evaluation as ``summarize`` writes it, from per-problem correct counts (``tokens`` tokens
    a sample, ``entropy`` nats a token)."""
    ids = ids or [f"p{i}" for i in range(len(correct))]
    rows = [("add", c, min(c, 1), entropy * tokens * samples, tokens * samples, 0.0, samples - c, pid)
            for c, pid in zip(correct, ids)]
    return summarize(rows, samples, [1, 2])


def test_summarize_gives_the_mean_response_length_per_source():
    rows = [("add", 3, 1, 8.0, 40.0, 0.0, 1, "a"), ("add", 0, 0, 4.0, 24.0, 24.0, 4, "b"),
            ("mul", 4, 2, 2.0, 16.0, 0.0, 0, "c")]
    out = summarize(rows, 4, [1])
    # tokens per sampled response: (40 + 24) / (2 problems x 4 samples), 16 / 4, 80 / 12
    assert out["response_length"] == {"add": 8.0, "mul": 4.0, "all": pytest.approx(80 / 12)}
    assert out["per_problem"]["correct"] == [3, 0, 4] and out["per_problem"]["id"] == ["a", "b", "c"]


def test_paired_change_is_the_mean_of_per_problem_changes_of_the_unbiased_estimate():
    start, end = _evaluation([0, 2, 8]), _evaluation([4, 2, 7])
    one = paired_change(start, end, k=1)
    assert one.estimate == pytest.approx((4 / 8 + 0 - 1 / 8) / 3)
    assert one.values == (pytest.approx(end["pass@1"]["all"]), pytest.approx(start["pass@1"]["all"]))
    two = paired_change(start, end, k=2)  # pass@2 of c correct in 8: 1 - C(8-c, 2) / C(8, 2)
    p2 = lambda c: 1 - math.comb(8 - c, 2) / math.comb(8, 2)  # noqa: E731
    assert two.estimate == pytest.approx((p2(4) - p2(0) + p2(2) - p2(2) + p2(7) - p2(8)) / 3)
    assert one.low <= one.estimate <= one.high


def test_the_interval_has_the_width_of_the_mean_change_over_problems():
    """200 problems that start at 0 or 4 of 8 correct samples; half gain 2 correct, half none. The
    change of pass@1 is 0.125 and the differences' standard deviation 0.125, so a 95% interval
    paired over problems is about ±1.96 · 0.125 / √200 (resampling start and end apart would be
    about twice as wide: each alone has standard deviation 0.25)."""
    n = 200
    before = [0, 4] * (n // 2)
    start, end = _evaluation(before), _evaluation([c + 2 for c in before[:n // 2]] + before[n // 2:])
    c = paired_change(start, end, k=1)
    half = 1.96 * 0.125 / math.sqrt(n)
    assert c.estimate == pytest.approx(0.125)
    assert c.low == pytest.approx(0.125 - half, abs=0.003) and c.high == pytest.approx(0.125 + half, abs=0.003)
    assert paired_change(start, end, k=1) == c  # seeded


def test_a_constant_change_has_no_spread():
    """A gain of one correct sample on every problem: the interval is the point, though the two
    evaluations apart overlap widely."""
    start, end = _evaluation([0, 2, 4, 6]), _evaluation([1, 3, 5, 7])
    c = paired_change(start, end, k=1)
    assert c.estimate == pytest.approx(1 / 8) and c.low == pytest.approx(1 / 8) and c.high == pytest.approx(1 / 8)


def test_evaluations_of_other_problems_or_without_problems_are_refused():
    with pytest.raises(ValueError, match="not of the same problems .* differ first at problem 1"):
        paired_change(_evaluation([1, 2], ids=["a", "b"]), _evaluation([1, 2], ids=["a", "c"]))
    old = _evaluation([1, 2])
    del old["per_problem"]
    with pytest.raises(ValueError, match="the start evaluation holds no per-problem results"):
        paired_change(old, _evaluation([1, 2]))
    with pytest.raises(ValueError, match="pass@16 needs at least 16 samples per problem; the start evaluation has 8"):
        paired_change(_evaluation([1, 2]), _evaluation([1, 2], samples=16), k=16)


def test_the_table_of_start_against_end():
    start = _evaluation([0, 2, 8])
    end = _evaluation([4, 2, 7], tokens=6.0, entropy=0.25)
    table = format_start_end(start, end, [1, 2]).splitlines()
    assert table[0].split()[:4] == ["held-out", "start", "end", "change"]
    one = paired_change(start, end, 1)
    assert table[1].split()[:4] == ["pass@1", f"{one.values[1]:.3f}", f"{one.values[0]:.3f}", f"{one.estimate:+.3f}"]
    assert table[3].split() == ["token", "entropy", "0.500", "0.250", "-0.250", "[-0.250,", "-0.250]"]
    assert table[4].split() == ["response", "tokens", "4.000", "6.000", "+2.000", "[+2.000,", "+2.000]"]
    assert table[5].startswith("(3 problems x 8 samples")
