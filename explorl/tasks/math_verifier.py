"""The ``math`` verifier: Math-Verify compares the extracted answer with the reference in SymPy.

Both sides are parsed with ``math_verify.parse``: the reference answer and an extracted
answer as LaTeX math (``$...$`` added unless the text has ``$`` or ``\\boxed``), so that
``\\frac{1}{2}``, ``1/2`` and ``0.5`` are one value and ``2\\pi`` is not ``2``; with the
``none`` extractor the completion goes to Math-Verify, which finds its answer itself (the
last ``TAIL_CHARS`` characters of it: the answer of a long completion is at its end).

Time limits. Math-Verify's own limits are SIGALRM timers of whole seconds per parse and per
comparison, which fail off the main thread and would cancel the guard's in-process timer;
they are switched off, and one ``explorl.tasks.deadline`` of ``timeout_s`` covers the whole
check instead (main thread only: the verifier worker's, or the trainer's with
``verify.isolate: false``). A check that runs past it is a wrong answer, as Math-Verify itself
treats its time-outs, and so is anything Math-Verify reports as unparseable (it returns no
parse, or ``False``, for those; exceptions of explorl's own code still propagate and count as
verifier errors). Off the main thread there is no such limit; the guard's ``verify.timeout``
(and in the worker, killing it) still stops a hang. Keep ``timeout_s`` below ``verify.timeout``.
"""
from __future__ import annotations

import logging
from functools import lru_cache

from explorl.registry import register

from .deadline import Expired, deadline
from .verifiers import Verifier, too_long

#: With the ``none`` extractor, how much of the end of a completion Math-Verify reads.
TAIL_CHARS = 100_000


class _QuietDisabledTimeout(logging.Filter):
    """Math-Verify warns once that its timers are off; here they are off on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Timeout is disabled")


_quiet = _QuietDisabledTimeout()


@lru_cache(maxsize=1)
def _math_verify():
    import math_verify
    for name in ("math_verify.parser", "math_verify.grader"):
        logging.getLogger(name).addFilter(_quiet)
    return math_verify


def _as_latex(text: str) -> str:
    return text if "$" in text or "\\boxed" in text else f"${text}$"


def _parse(text: str) -> list:
    return _math_verify().parse(text, parsing_timeout=None)


@lru_cache(maxsize=4096)
def _parse_gold(answer: str) -> list:
    return _parse(_as_latex(answer))


@register("verifier", "math", paper="Math-Verify (github.com/huggingface/Math-Verify): LaTeX and plain "
                                    "answers compared as SymPy expressions")
class MathVerifier(Verifier):
    def __init__(self, extractor: str = "boxed", pattern: str = "", format_reward: float = 0.0,
                 timeout_s: float = 2.0):
        super().__init__(extractor, pattern, format_reward)
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0 seconds, got {timeout_s}")
        self.timeout_s = float(timeout_s)

    def equal(self, answer: str, extracted: str) -> bool:
        if self.extractor.name == "none":
            text = extracted[-TAIL_CHARS:]
        elif too_long(answer, extracted):
            return False
        else:
            text = _as_latex(extracted)
        try:
            with deadline(self.timeout_s):
                gold, pred = _parse_gold(answer), _parse(text)
                return bool(gold and pred) and bool(_math_verify().verify(gold, pred, timeout_seconds=None))
        except Expired:
            return False
