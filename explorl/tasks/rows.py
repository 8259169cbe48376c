"""What every file-backed task source shares: rows, a held-out tail, stable ids, a verifier.

A row is ``(label, prompt, answer)``: ``label`` is the JSONL line number or the table row
index (from 0, as ``dataset[i]``), so an error, and a problem id (``<name>/line<N>`` or
``<name>/row<N>``), always points at one row of the file. The last ``holdout`` rows are kept
for ``eval_set``; training problems are drawn from the others by a seeded rng (with
``holdout: 0`` both draw from every row). Completions are scored by a registered verifier
(``explorl.tasks.verifiers``; default ``numeric``: exact match or equal number literals).
"""
from __future__ import annotations

import json
import math
import random
from pathlib import Path

from .problem import Problem, TaskSource

#: The longest row (in bytes) a data file may hold.
MAX_ROW_BYTES = 1 << 20


def as_text(where: str, key: str, what: str, value) -> str:
    """A row's value as a non-empty string: strings as they are, finite numbers converted."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"{where}: {key!r} (the {what}) must be a string or a number, got {_shown(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where}: {key!r} (the {what}) must be a finite number, got {value}")
    text = value if isinstance(value, str) else str(value)
    if not text.strip():
        raise ValueError(f"{where}: {key!r} (the {what}) is empty")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"{where}: {key!r} (the {what}) holds {text[e.start]!r}, which is not a "
                         f"character (an unpaired surrogate escape)") from None
    return text


def _shown(value) -> str:
    if value is None:
        return "null"
    try:
        body = json.dumps(value)
    except (TypeError, ValueError):
        body = repr(value)
    return f"{type(value).__name__} {body[:60]}"


def build_verifier(spec):
    from explorl.registry import build
    return build("verifier", spec, "verifier")


class RowSource(TaskSource):
    """Base of the file-backed sources: subclasses read ``self.rows`` (and ``self.solutions``)
    in ``__init__`` and then call ``self._finish(holdout)``."""

    param_ranges: dict[str, tuple[float, float]] = {}
    id_word = "row"  # problem ids are ``<name>/<id_word><label>``

    def __init__(self, path: str | Path, name: str | None, verifier):
        self.path = Path(path)
        self.name = name or self.path.stem
        super().__init__()
        self.verifier = build_verifier(verifier)
        self.max_wrong_reward = self.verifier.format_reward
        self.rows: list[tuple[int, str, str]] = []
        self.solutions: list[str] | None = None

    def _finish(self, holdout: int) -> None:
        if isinstance(holdout, bool) or not isinstance(holdout, int):
            raise ValueError(f"{self.path}: holdout must be an integer, got {holdout!r}")
        if not self.rows:
            raise ValueError(f"{self.path}: the file has no rows (it is empty or holds only blank lines)")
        if not 0 <= holdout < len(self.rows):
            raise ValueError(f"{self.path}: holdout={holdout} must be >= 0 and below the "
                             f"number of rows ({len(self.rows)})")
        self._train = range(len(self.rows) - holdout)
        self._eval = range(len(self.rows) - holdout, len(self.rows)) if holdout else range(len(self.rows))

    def locate(self, label: int) -> str:
        """Where a row is, for messages."""
        return f"{self.path}: row {label}"

    def _row_problem(self, index: int) -> Problem:
        label, prompt, answer = self.rows[index]
        return Problem(id=f"{self.name}/{self.id_word}{label}", prompt=prompt, answer=answer, source=self.name,
                       solution=self.solutions[index] if self.solutions is not None else "")

    def row_problems(self):
        """``(where, problem)`` for every row (the tokenizer check reads them all)."""
        for index, (label, _, _) in enumerate(self.rows):
            yield self.locate(label), self._row_problem(index)

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
        return self.verifier.score(problem.answer, completion)

    def extract_answer(self, completion: str) -> str | None:
        return self.verifier.extractor.extract(completion)

    def reference_completion(self, problem: Problem) -> str:
        return self.verifier.reference_completion(problem.answer)
