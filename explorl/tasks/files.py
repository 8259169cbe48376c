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
#: The longest row (in bytes, newline included) a JSONL file may hold.
MAX_ROW_BYTES = 1 << 20


def _as_number(text: str) -> Decimal | None:
    """A finite decimal if ``text`` is a plain number literal, else ``None``."""
    if len(text) > _MAX_NUMBER_CHARS or not _NUMBER.fullmatch(text):
        return None
    return Decimal(text)


def _lines(path: Path):
    """``(line number, raw bytes)`` of each line, read in binary so that a bad byte or an
    over-long row is named by its line; a row longer than ``MAX_ROW_BYTES`` is never read whole."""
    if path.is_dir():
        raise ValueError(f"{path}: is a directory, not a JSONL file")
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise FileNotFoundError(f"JSONL file not found: {path}") from None
    except OSError as err:
        raise ValueError(f"{path}: cannot be read ({err.strerror or err})") from None
    with f:
        lineno = 0
        while True:
            line = f.readline(MAX_ROW_BYTES + 1)
            if not line:
                return
            lineno += 1
            if len(line) > MAX_ROW_BYTES:
                raise ValueError(f"{path}: line {lineno}: the row is longer than {MAX_ROW_BYTES} bytes")
            yield lineno, line


def _parse_row(path: Path, lineno: int, line: bytes):
    """The JSON value of one line, ``None`` for a blank one."""
    if lineno == 1 and line.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte-order mark
        line = line[3:]
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: line {lineno}: not UTF-8 (byte {line[e.start:e.start + 1]!r} at "
                         f"column {e.start + 1}: {e.reason})") from None
    if not text.strip():
        return None
    try:
        return json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: line {lineno}: invalid JSON ({e.msg}, column {e.colno})") from None
    except ValueError as e:
        raise ValueError(f"{path}: line {lineno}: invalid JSON ({e})") from None
    except RecursionError:
        raise ValueError(f"{path}: line {lineno}: invalid JSON (nested too deeply)") from None


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _field(where: str, row: dict, key: str, what: str) -> str:
    """``row[key]`` as a non-empty string: strings as they are, finite numbers converted."""
    if key not in row:
        keys = ", ".join(map(repr, list(row)[:10])) + (", ..." if len(row) > 10 else "")
        raise ValueError(f"{where}: missing key {key!r} (the {what}; keys present: {keys or 'none'})")
    value = row[key]
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        shown = "null" if value is None else f"{type(value).__name__} {json.dumps(value)[:60]}"
        raise ValueError(f"{where}: {key!r} (the {what}) must be a string or a number, got {shown}")
    text = value if isinstance(value, str) else str(value)
    if not text.strip():
        raise ValueError(f"{where}: {key!r} (the {what}) is empty")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"{where}: {key!r} (the {what}) holds {text[e.start]!r}, which is not a "
                         f"character (an unpaired surrogate escape)") from None
    return text


class JsonlSource(TaskSource):
    """Problems read from a JSONL file; it has no difficulty parameters.

    Each non-blank line must be a UTF-8 JSON object of at most ``MAX_ROW_BYTES`` with a
    non-empty string (or finite number, converted to ``str``) under ``prompt_key`` and
    ``answer_key``; anything else is a ``ValueError`` naming the file and line, and so is a
    file without rows. The last ``holdout`` rows are reserved for ``eval_set``; training
    problems (``problem``/``sample``) are drawn by index from the other rows with a seeded
    rng. With ``holdout=0`` both draw from all rows. Problem ids are ``"<name>/line<N>"``, so
    one row always has one id.

    A completion scores 1.0 if it equals the answer after stripping whitespace, or if both
    are number literals with the same value (``"3.0"`` matches ``"3"``).
    """

    param_ranges: dict[str, tuple[float, float]] = {}

    def __init__(self, path: str | Path, name: str | None = None, prompt_key: str = "prompt",
                 answer_key: str = "answer", holdout: int = 0):
        self.path = Path(path)
        self.name = name or self.path.stem
        super().__init__()
        if isinstance(holdout, bool) or not isinstance(holdout, int):
            raise ValueError(f"{self.path}: holdout must be an integer, got {holdout!r}")
        self.rows: list[tuple[int, str, str]] = []  # (line number, prompt, answer)
        for lineno, line in _lines(self.path):
            row = _parse_row(self.path, lineno, line)
            if row is None:
                continue
            where = f"{self.path}: line {lineno}"
            if not isinstance(row, dict):
                raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
            self.rows.append((lineno, _field(where, row, prompt_key, "prompt"),
                              _field(where, row, answer_key, "answer")))
        if not self.rows:
            raise ValueError(f"{self.path}: the file has no rows (it is empty or holds only blank lines)")
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
