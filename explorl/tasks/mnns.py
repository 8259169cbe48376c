"""MNNS, minimum non-negative sum: the search task of CoT2 (arXiv:2505.23648).

Given L digits d_1..d_L in [1, ``max_digit``], choose a sign for each so that Σ ±d_i is as
small as possible while non-negative; the answer is that sum. Solving it means tracking the
2^t partial sums reachable after t digits, which is what a continuous token can hold at once.

Follows the authors' ``data/generate_data.py`` (alperengozeten/CoT2 @ 11932cb):

- lines 33-74: every sign pattern of the L digits, the first signed too, from a partial sum of
  0; the best pattern is the first in ``itertools.product("+-")`` order with the least
  non-negative final sum; its partial sums after digits 1..L−1 are the discrete chain of
  thought (their line omits S0 and ends with the final sum, which is our answer);
- lines 174-217 (``permutation_train_val_split``): every permutation of a digit multiset lies
  on the same side of the split. Here a multiset is held out when a hash of it falls in the
  held-out fifth (the authors' 80/20): held-out problems (``eval_set``) draw only those, training
  problems never do;
- ``train/continuous_train.py:115-134`` (``_build_uniform_dists``, the "uniform" strategy): the
  target of continuous supervision at step t puts 1/2^t on each of the 2^t partial sums, with
  duplicates adding up; ``thought_traces`` gives the 2^L sign paths with equal weights, whose
  per-step empirical distributions are exactly those.

Text (our choice, for the testbed's character tokenizer): prompt ``mnns:3527=``; completion =
the L−1 partial sums, each ONE character, then ``>`` and the answer, e.g. ``P2J>1``. The
authors' vocabulary has one token per partial sum (S−36..S36), and a continuous token is a
mixture of those states; spelling a sum in several characters would mix characters
position by position instead. So partial sum s is the character ``STATES[CENTER + s]``,
``STATES`` being printable ASCII without digits, ``>``, ``=`` and ``:`` (81 characters, sums
−40..40: max_digit · (length − 1) must stay within 40). The verifier reads the text after the
last ``>`` (exact match), so a completion may drop or change the working.
"""
from __future__ import annotations

import itertools
import random
import zlib

from .problem import Problem, TaskSource
from .scratchpad import ANSWER_MARK, answer_after_mark

STATES = "".join(c for c in map(chr, range(33, 127)) if c not in "0123456789>=:")
CENTER = len(STATES) // 2
HELD_OUT_SHARE = 5  # one multiset in five is held out (the authors' 80/20 split)


def state_char(partial_sum: int) -> str:
    if abs(partial_sum) > CENTER:
        raise ValueError(f"mnns: partial sum {partial_sum} has no state character (|sum| <= {CENTER})")
    return STATES[CENTER + partial_sum]


def sign_paths(digits: list[int]) -> list[list[int]]:
    """The partial sums after each digit, for every sign pattern (``itertools.product`` order,
    ``+`` first), as in ``generate_data.py:48-58``."""
    paths = []
    for signs in itertools.product("+-", repeat=len(digits)):
        total, sums = 0, []
        for d, sign in zip(digits, signs):
            total = total + d if sign == "+" else total - d
            sums.append(total)
        paths.append(sums)
    return paths


def best_path(digits: list[int]) -> list[int]:
    """The partial sums of the first sign pattern with the least non-negative final sum."""
    best = None
    for sums in sign_paths(digits):
        if sums[-1] >= 0 and (best is None or sums[-1] < best[-1]):
            best = sums
    return best


def held_out(digits: list[int]) -> bool:
    """Whether the multiset of ``digits`` belongs to the held-out side of the split."""
    return zlib.crc32(",".join(map(str, sorted(digits))).encode()) % HELD_OUT_SHARE == 0


def parse_digits(prompt: str) -> list[int]:
    return [int(c) for c in prompt[len("mnns:"):-1]]


class MNNS(TaskSource):
    """``length`` digits in 1..``max_digit``; the answer is the least non-negative signed sum."""

    name = "mnns"
    param_ranges = {"length": (4, 4), "max_digit": (9, 9)}

    def __init__(self, **ranges):
        super().__init__(**ranges)
        length, digit = self.param_ranges["length"][1], self.param_ranges["max_digit"][1]
        if self.param_ranges["length"][0] < 2 or self.param_ranges["max_digit"][0] < 1:
            raise ValueError("task source 'mnns': length must be >= 2 and max_digit >= 1")
        if digit > 9:
            raise ValueError(f"task source 'mnns': max_digit must be <= 9 (one decimal digit each), got {digit:g}")
        if digit * (length - 1) > CENTER:
            raise ValueError(f"task source 'mnns': max_digit * (length - 1) = {digit * (length - 1):g} exceeds "
                             f"{CENTER}, the partial sums that have a state character")

    def problem(self, seed: int, params: dict[str, float] | None = None) -> Problem:
        """As ``TaskSource.problem``, the digits redrawn until their multiset is on the side of the
        split the seed is for (held out below 10**9, training above)."""
        rng = random.Random(f"{self.name}:{seed}")
        params = self.clip_params(params) if params is not None else self.sample_params(rng)
        want_held_out = seed < 10**9
        length, top = int(params["length"]), int(params["max_digit"])
        for _ in range(1000):  # a tiny digit range may have no multiset on this side: the last draw stays
            digits = [rng.randint(1, top) for _ in range(length)]
            if held_out(digits) == want_held_out:
                break
        prompt = f"mnns:{''.join(map(str, digits))}="
        tag = "-".join(f"{k}{params[k]:g}" for k in sorted(params))
        return Problem(id=f"{self.name}/{tag}/{seed}", prompt=prompt, answer=str(best_path(digits)[-1]),
                       source=self.name, params=dict(params))

    def generate(self, rng: random.Random, params: dict[str, float]) -> tuple[str, str]:
        digits = [rng.randint(1, int(params["max_digit"])) for _ in range(int(params["length"]))]
        return f"mnns:{''.join(map(str, digits))}=", str(best_path(digits)[-1])

    def reference_completion(self, problem: Problem) -> str:
        """The discrete chain of thought: the best pattern's partial sums, then the answer."""
        sums = best_path(parse_digits(problem.prompt))
        return "".join(state_char(s) for s in sums[:-1]) + ANSWER_MARK + problem.answer

    def thought_traces(self, problem: Problem) -> list[tuple[str, float]]:
        """Every sign path's partial sums after digits 1..L−1, weight 2^−L each: their
        per-step empirical distribution is CoT2's "uniform" continuous-supervision target."""
        paths = sign_paths(parse_digits(problem.prompt))
        return [("".join(state_char(s) for s in sums[:-1]), 1.0 / len(paths)) for sums in paths]

    def answer_completion(self, problem: Problem) -> str:
        """What follows the thought: the answer mark and the answer."""
        return ANSWER_MARK + problem.answer

    score = staticmethod(answer_after_mark)
