"""Where the answer is in a completion: the part of the text a verifier compares with the reference.

``extract(completion)`` returns the answer text, or ``None`` when the completion holds none
(no ``\\boxed{}``, no ``####`` line, ...). ``reference(answer)`` is the completion that states
``answer`` the way the extractor reads it (``check_task`` scores it and expects 1).

- ``boxed``: the last ``\\boxed{...}`` (nested braces matched; a box inside a box counts as its outer one)
- ``gsm8k``: what follows the last ``####`` on its line
- ``answer_tags``: the last ``<answer>...</answer>``
- ``last_number``: the last number (``-3``, ``1,234.5``; thousands separators dropped)
- ``regex``: group 1 of the last match of ``pattern``
- ``none``: the whole completion
Every answer is stripped of surrounding whitespace; an empty one counts as none.
"""
from __future__ import annotations

import re

NAMES = ("boxed", "gsm8k", "answer_tags", "last_number", "regex", "none")

_BOXED = re.compile(r"\\boxed\s*\{|\{|\}")
_GSM8K = re.compile(r"####([^\n]*)")
_TAGS = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[-+]?\.\d+")


def _last(matches):
    last = None
    for last in matches:
        pass
    return last


def _text(answer: str | None) -> str | None:
    answer = None if answer is None else answer.strip()
    return answer or None


def _boxed(text: str) -> str | None:
    """One pass over the braces: a stack of open braces, each marked when it opens a box."""
    stack, best = [], None
    for m in _BOXED.finditer(text):
        token = m.group()
        if token == "}":
            if not stack:
                continue
            is_box, start = stack.pop()
            if is_box and (best is None or m.start() > best[1]):
                best = (start, m.start())
        else:
            stack.append((token != "{", m.end()))
    return None if best is None else text[best[0]:best[1]]


class Extractor:
    def __init__(self, name: str = "none", pattern: str = ""):
        if name not in NAMES:
            raise ValueError(f"unknown extractor {name!r} (valid: {', '.join(NAMES)})")
        self.name, self.pattern = name, pattern
        self._regex = None
        if name == "regex":
            if not pattern:
                raise ValueError("extractor 'regex' needs a pattern with one group, e.g. 'Answer: (.+)'")
            try:
                self._regex = re.compile(pattern)
            except re.error as err:
                raise ValueError(f"pattern {pattern!r} is not a valid regular expression ({err})") from None
            if self._regex.groups < 1:
                raise ValueError(f"pattern {pattern!r} has no group: the answer is group 1")
        elif pattern:
            raise ValueError(f"pattern is only used by the regex extractor, not by {name!r}")

    def extract(self, completion: str) -> str | None:
        if self.name == "none":
            return _text(completion)
        if self.name == "boxed":
            return _text(_boxed(completion))
        if self.name == "gsm8k":
            m = _last(_GSM8K.finditer(completion))
            return _text(m and m.group(1))
        if self.name == "answer_tags":
            m = _last(_TAGS.finditer(completion))
            return _text(m and m.group(1))
        if self.name == "last_number":
            m = _last(_NUMBER.finditer(completion))
            return _text(m and m.group().replace(",", ""))
        m = _last(self._regex.finditer(completion))
        return _text(m and m.group(1))

    def reference(self, answer: str) -> str:
        """A completion that states ``answer`` as this extractor reads it. For ``regex``: the answer
        between the pattern's literal text around its group (``Final answer: (.+)`` gives
        ``Final answer: 42``), else the first of a few common forms the pattern reads the answer
        back from, else the answer itself."""
        forms = {"boxed": f"\\boxed{{{answer}}}", "gsm8k": f"#### {answer}",
                 "answer_tags": f"<answer>{answer}</answer>"}
        if self.name in forms:
            return forms[self.name]
        if self.name == "regex":
            candidates = [*_around_group(self.pattern, answer), answer, *forms.values(), f"Answer: {answer}",
                          f"The answer is {answer}"]
            return next((c for c in candidates if self.extract(c) == answer.strip()), answer)
        return answer


_LITERAL = re.compile(r"(?:[^\\()\[\]{}.*+?|^$]|\\[^A-Za-z0-9])*")


def _around_group(pattern: str, answer: str) -> list[str]:
    """``prefix + answer + suffix`` when the pattern is literal text around one plain group."""
    start, end = pattern.find("("), pattern.rfind(")")
    if start < 0 or pattern.startswith("(?", start):
        return []
    before, after = pattern[:start].lstrip("^"), pattern[end + 1:].rstrip("$")
    if not (_LITERAL.fullmatch(before) and _LITERAL.fullmatch(after)):
        return []
    return [_unescape(before) + answer + _unescape(after)]


def _unescape(literal: str) -> str:
    return re.sub(r"\\(.)", r"\1", literal)
