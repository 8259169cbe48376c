"""A task source over a JSONL file of ``{"prompt": ..., "answer": ...}`` rows (``kind: jsonl``).

The file is read line by line here rather than with ``datasets``: a bad line is named by its
number, and each value keeps its JSON meaning (``3`` and ``0.5`` stay ``"3"`` and ``"0.5"``;
``null`` is an error), where ``datasets``' JSON reader infers one type per column (``3``
becomes ``3.0`` next to a ``0.5``) and stops at a blank line. Tables (parquet, csv, saved
datasets) are read with ``datasets``: ``explorl.tasks.tables``.
"""
from __future__ import annotations

import json
from pathlib import Path

from . import rows as _rows
from .kinds import register_kind
from .rows import RowSource, as_text

#: The longest row (in bytes, newline included) a JSONL file may hold.
MAX_ROW_BYTES = _rows.MAX_ROW_BYTES


def _lines(path: Path, what: str = "JSONL"):
    """``(line number, raw bytes)`` of each line, read in binary so that a bad byte or an
    over-long row is named by its line; a row longer than ``MAX_ROW_BYTES`` is never read whole."""
    if path.is_dir():
        raise ValueError(f"{path}: is a directory, not a {what} file")
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} file not found: {path}") from None
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
    if key not in row:
        keys = ", ".join(map(repr, list(row)[:10])) + (", ..." if len(row) > 10 else "")
        raise ValueError(f"{where}: missing key {key!r} (the {what}; keys present: {keys or 'none'})")
    return as_text(where, key, what, row[key])


@register_kind("jsonl")
class JsonlSource(RowSource):
    """Problems read from a JSONL file; it has no difficulty parameters.

    Each non-blank line must be a UTF-8 JSON object of at most ``MAX_ROW_BYTES`` with a
    non-empty string (or finite number, converted to ``str``) under ``prompt_key`` and
    ``answer_key`` (and ``solution_key``, when given); anything else is a ``ValueError``
    naming the file and line, and so is a file without rows. The last ``holdout`` rows are
    reserved for ``eval_set``; training problems (``problem``/``sample``) are drawn by index
    from the other rows with a seeded rng. With ``holdout=0`` both draw from all rows. Problem
    ids are ``"<name>/line<N>"``, so one row always has one id.

    ``verifier`` names a registered verifier (``explorl list --level verifier``), by default
    ``numeric``: a completion scores 1.0 if it equals the answer after stripping whitespace,
    or if both are number literals with the same value (``"3.0"`` matches ``"3"``).
    """

    id_word = "line"

    def __init__(self, path: str | Path, name: str | None = None, prompt_key: str = "prompt",
                 answer_key: str = "answer", holdout: int = 0, solution_key: str | None = None,
                 verifier: str | dict = "numeric"):
        super().__init__(path, name, verifier)
        solutions = []
        for lineno, line in _lines(self.path):
            row = _parse_row(self.path, lineno, line)
            if row is None:
                continue
            where = f"{self.path}: line {lineno}"
            if not isinstance(row, dict):
                raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
            self.rows.append((lineno, _field(where, row, prompt_key, "prompt"),
                              _field(where, row, answer_key, "answer")))
            if solution_key is not None:
                solutions.append(_field(where, row, solution_key, "solution"))
        self.solutions = solutions if solution_key is not None else None
        self._finish(holdout)

    def locate(self, label: int) -> str:
        return f"{self.path}:{label}"
