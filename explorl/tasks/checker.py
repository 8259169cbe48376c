"""Sanity checks every task source must pass before it is used for training."""
from __future__ import annotations

import random
import time

from .problem import Problem, TaskSource

#: Completions that must score 0 unless they happen to equal the reference answer.
NEVER_CORRECT = [
    "", " ", "\n\t \r\n", "\x00\x01\x7f\x1b[2J\ufffd garbage \\x00", "😀🔥👍🏽", "\u202e\u200f\u200b",
    "مرحبا", "x" * 1_000_000, "(" * 10_000, "(" * 5_000 + "1" + ")" * 5_000, "1/0", "9" * 5_000,
    "-" + "9" * 100, "1e999999", "None", "nan", "NaN", "inf", "-inf", "null",
]


def _answer_variants(answer: str) -> list[str]:
    """Completions built from the answer; only range-checked (a few may be legitimately right)."""
    return [answer * 2, answer + " junk", answer + "=", "\u200f" + answer, answer + "\x00",
            f" {answer}\n", answer * 10_000]


def check_task(source: TaskSource, n: int = 20, seed: int = 0, *,
               alphabet: str | None = None, max_verify_s: float = 0.5) -> dict:
    """Raise ``AssertionError`` with a clear message unless ``source`` is well behaved.

    Checks, on ``n`` problems: generation is deterministic for a seed (``problem``,
    ``sample`` and ``eval_set``); one id never names two different problems; each problem
    has a non-empty prompt and its ``source`` field is ``source.name``; prompts/answers use
    only ``alphabet`` (default: the tokenizer's ``ALPHABET``; pass ``""`` to skip); the
    reference answer, written as ``source.reference_completion(problem)`` (e.g. ``\\boxed{42}``
    for a verifier that reads boxed answers), scores 1.0; adversarial completions return a
    float in [0, 1] within ``max_verify_s`` each without raising, and the ``NEVER_CORRECT``
    ones score 0.0 (at most ``source.max_wrong_reward``, a verifier's format reward).
    Returns a report dict (counts, prompt/answer lengths, slowest verify call).
    """
    if alphabet is None:
        from . import ALPHABET as alphabet
    name = source.name or type(source).__name__

    def fail(msg: str) -> None:
        raise AssertionError(f"check_task({name!r}): {msg}")

    seeds = [10**9 + seed * 100_000 + i for i in range(n)]  # training-range seeds
    first = [source.problem(s) for s in seeds]
    again = [source.problem(s) for s in seeds]
    for a, b in zip(first, again):
        if (a.id, a.prompt, a.answer) != (b.id, b.prompt, b.answer):
            fail(f"problem(seed) is not deterministic: {a!r} vs {b!r}")
    sampled = [source.sample(random.Random(seed)) for _ in range(2)]
    if sampled[0] != sampled[1]:
        fail(f"sample(Random({seed})) is not deterministic: {sampled[0]!r} vs {sampled[1]!r}")
    evals = source.eval_set(n, seed)
    if evals != source.eval_set(n, seed):
        fail("eval_set(n, seed) is not deterministic")

    problems: list[Problem] = first + sampled[:1] + evals
    by_id: dict[str, Problem] = {}
    for p in problems:
        if by_id.setdefault(p.id, p) != p:
            fail(f"id {p.id!r} names two problems: {by_id[p.id]!r} and {p!r}")
        if p.source != source.name:
            fail(f"problem.source is {p.source!r}, expected {source.name!r}")
        if not isinstance(p.prompt, str) or not isinstance(p.answer, str) or not p.prompt:
            fail(f"prompt and answer must be strings and the prompt non-empty: {p!r}")
        if alphabet:
            bad = set(p.prompt + p.answer) - set(alphabet)
            if bad:
                fail(f"characters {sorted(bad)!r} outside the alphabet in {p!r}")

    def verify(p: Problem, completion: str):
        try:
            return source.verify(p, completion)
        except Exception as err:
            shown = repr(completion[:40]) + ("..." if len(completion) > 40 else "")
            fail(f"verify raised {type(err).__name__}: {err} for completion {shown} on {p.prompt!r} "
                 f"(a verifier must return 0 for a malformed completion)")

    slowest = 0.0
    for p in problems:
        reference = source.reference_completion(p)
        reward = verify(p, reference)
        if reward != 1.0:
            written = f" written as {reference!r}" if reference != p.answer else ""
            fail(f"reference answer {p.answer!r}{written} scores {reward} on {p.prompt!r}")
        for completion, must_be_zero in ([(c, True) for c in NEVER_CORRECT]
                                         + [(c, False) for c in _answer_variants(p.answer)]):
            start = time.perf_counter()
            reward = verify(p, completion)
            elapsed = time.perf_counter() - start
            slowest = max(slowest, elapsed)
            shown = repr(completion[:40]) + ("..." if len(completion) > 40 else "")
            if type(reward) is not float or not 0.0 <= reward <= 1.0:
                fail(f"verify returned {reward!r} for completion {shown}")
            if elapsed > max_verify_s:
                fail(f"verify took {elapsed:.3f}s (> {max_verify_s}s) for completion {shown}")
            if must_be_zero and reward > source.max_wrong_reward and completion.strip() != p.answer.strip():
                allowed = f" (more than its format reward {source.max_wrong_reward:g})" if source.max_wrong_reward else ""
                fail(f"completion {shown} scores {reward}{allowed} on {p.prompt!r} (answer {p.answer!r})")

    return {
        "source": source.name,
        "problems": len(problems),
        "unique_ids": len(by_id),
        "max_prompt_chars": max(len(p.prompt) for p in problems),
        "max_answer_chars": max(len(p.answer) for p in problems),
        "mean_prompt_chars": sum(len(p.prompt) for p in problems) / len(problems),
        "slowest_verify_s": slowest,
    }
