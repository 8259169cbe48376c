"""A task source over a JSONL file of ``{"prompt": ..., "answer": ...}`` rows."""
from __future__ import annotations

import json
import random
import re
from decimal import Decimal
from pathlib import Path

from .problem import Problem, TaskSource

_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_MAX_NUMBER_CHARS = 64


def _as_number(text: str) -> Decimal | None:
    """A finite decimal if ``text`` is a plain number literal, else ``None``."""
    if len(text) > _MAX_NUMBER_CHARS or not _NUMBER.fullmatch(text):
        return None
    return Decimal(text)


class JsonlSource(TaskSource):
    """Problems read from a JSONL file; it has no difficulty parameters.

    Each non-blank line must be a JSON object with ``prompt_key`` and ``answer_key``
    (values are converted to ``str``). The last ``holdout`` rows are reserved for
    ``eval_set``; training problems (``problem``/``sample``) are drawn by index from the
    other rows with a seeded rng. With ``holdout=0`` both draw from all rows. Problem ids
    are ``"<name>/line<N>"``, so one row always has one id.

    A completion scores 1.0 if it equals the answer after stripping whitespace, or if both
    are number literals with the same value (``"3.0"`` matches ``"3"``).
    """

    param_ranges: dict[str, tuple[float, float]] = {}

    def __init__(self, path: str | Path, name: str | None = None, prompt_key: str = "prompt",
                 answer_key: str = "answer", holdout: int = 0):
        self.path = Path(path)
        self.name = name or self.path.stem
        super().__init__()
        self.rows: list[tuple[int, str, str]] = []  # (line number, prompt, answer)
        with open(self.path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{self.path}: line {lineno}: invalid JSON ({e.msg})") from None
                if not isinstance(row, dict):
                    raise ValueError(f"{self.path}: line {lineno}: expected a JSON object")
                for key in (prompt_key, answer_key):
                    if key not in row:
                        raise ValueError(f"{self.path}: line {lineno}: missing key {key!r}")
                self.rows.append((lineno, str(row[prompt_key]), str(row[answer_key])))
        if not 0 <= holdout < len(self.rows):
            raise ValueError(f"{self.path}: holdout={holdout} must be >= 0 and below the "
                             f"number of rows ({len(self.rows)})")
        self._train = range(len(self.rows) - holdout)
        self._eval = range(len(self.rows) - holdout, len(self.rows)) if holdout else range(len(self.rows))

    def _row_problem(self, index: int) -> Problem:
        lineno, prompt, answer = self.rows[index]
        return Problem(id=f"{self.name}/line{lineno}", prompt=prompt, answer=answer, source=self.name)

    def generate(self, rng: random.Random, params: dict[str, float]) -> tuple[str, str]:
        _, prompt, answer = self.rows[rng.choice(self._train)]
        return prompt, answer

    def problem(self, seed: int, params: dict[str, float] | None = None) -> Problem:
        """The training row drawn by the rng seeded with ``seed`` (``params`` is ignored)."""
        rng = random.Random(f"{self.name}:{seed}")
        return self._row_problem(rng.choice(self._train))

    def eval_set(self, n: int, seed: int = 0) -> list[Problem]:
        """Up to ``n`` distinct held-out rows, in an order fixed by ``seed``."""
        order = list(self._eval)
        random.Random(f"{self.name}:eval:{seed}").shuffle(order)
        return [self._row_problem(i) for i in order[:n]]

    def score(self, problem: Problem, completion: str) -> float:
        if len(completion) > 4 * len(problem.answer) + 1024:
            return 0.0
        got, want = completion.strip(), problem.answer.strip()
        if got == want:
            return 1.0
        a, b = _as_number(got), _as_number(want)
        return 1.0 if a is not None and b is not None and a == b else 0.0
