"""Verifiers of file-backed task sources: registered components (``explorl list --level verifier``).

A task entry names one with ``verifier: numeric`` or ``verifier: {name: math, extractor: boxed}``.
Each takes the answer out of the completion with its ``extractor`` (``explorl.tasks.extractors``)
and compares it with the reference answer. The reward is 1 when they are equal,
``format_reward`` when the extractor finds an answer that is not equal (a small reward for
stating an answer in the asked-for form; 0 by default), and 0 when it finds none. So the
reward stays in [0, 1], and a completion without an answer never earns the format reward.
"""
from __future__ import annotations

import re
from decimal import Decimal

from explorl.registry import register

from .extractors import Extractor

_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_THOUSANDS = re.compile(r"[+-]?\d{1,3}(?:,\d{3})+(?:\.\d*)?")
_MAX_NUMBER_CHARS = 64


def as_number(text: str) -> Decimal | None:
    """A finite decimal if ``text`` is a plain number literal (``1,234.5`` included), else ``None``."""
    if len(text) > _MAX_NUMBER_CHARS:
        return None
    if _THOUSANDS.fullmatch(text):
        text = text.replace(",", "")
    return Decimal(text) if _NUMBER.fullmatch(text) else None


class Verifier:
    """Extract, then compare. Subclasses implement ``equal(answer, extracted)``."""

    def __init__(self, extractor: str = "none", pattern: str = "", format_reward: float = 0.0):
        if not 0.0 <= format_reward < 1.0:
            raise ValueError(f"format_reward must be in [0, 1): it is what a wrong answer earns, got {format_reward}")
        if format_reward and extractor == "none":
            raise ValueError("format_reward needs an extractor that can find no answer: with extractor none "
                             "every non-empty completion would earn it")
        self.extractor = Extractor(extractor, pattern)
        self.format_reward = float(format_reward)

    def equal(self, answer: str, extracted: str) -> bool:
        raise NotImplementedError

    def score(self, answer: str, completion: str) -> float:
        extracted = self.extractor.extract(completion)
        if extracted is None:
            return 0.0
        return 1.0 if self.equal(answer, extracted) else self.format_reward

    def reference_completion(self, answer: str) -> str:
        """The completion ``check_task`` expects to score 1: ``answer`` as the extractor reads it."""
        return self.extractor.reference(answer)


def too_long(answer: str, extracted: str) -> bool:
    """No model states a short answer in megabytes: compare nothing that long."""
    return len(extracted) > 4 * len(answer) + 1024


@register("verifier", "exact", paper="exact match after stripping whitespace (the testbed's verifier)")
class Exact(Verifier):
    def equal(self, answer: str, extracted: str) -> bool:
        return not too_long(answer, extracted) and extracted == answer.strip()


@register("verifier", "numeric", paper="exact match, or equal values of plain number literals (3.0 = 3, 1,200 = 1200)")
class Numeric(Verifier):
    def equal(self, answer: str, extracted: str) -> bool:
        if too_long(answer, extracted):
            return False
        want = answer.strip()
        if extracted == want:
            return True
        a, b = as_number(extracted), as_number(want)
        return a is not None and b is not None and a == b

