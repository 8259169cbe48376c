"""Reading and writing a comparison's JSON files: a missing file is "not yet", a damaged one
is an error (``CorruptFile``), never the same thing."""
from __future__ import annotations

import json
import sys
from pathlib import Path


class CorruptFile(ValueError):
    """A result file that exists but does not parse (never the same as a missing one)."""

    def __init__(self, path: Path, error: str):
        super().__init__(f"{path} does not parse ({error})")
        self.path, self.error = Path(path), error


# ---- files ---------------------------------------------------------------------------------
def _read_json(path: Path) -> dict:
    """A JSON object file: ``{}`` when it does not exist (not written yet), ``CorruptFile`` when it
    exists but does not parse or is not an object."""
    data, error = _load_json(path)
    if error is not None:
        raise CorruptFile(path, error)
    return {} if data is None else data


def _parse_error(path: Path) -> str | None:
    """Why an existing file is not a JSON object, or None (also when it does not exist)."""
    return _load_json(path)[1]


def _load_json(path: Path) -> tuple[dict | None, str | None]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None, None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        return None, str(err)
    return (data, None) if isinstance(data, dict) else (None, f"a JSON {type(data).__name__}, not an object")


_warned: set[str] = set()


def _warn(message: str, once: bool = False) -> None:
    """A warning line on stderr (``once``: not repeated in this process, for readers that run often)."""
    if once and message in _warned:
        return
    _warned.add(message)
    print(f"explorl compare: warning: {message}", file=sys.stderr, flush=True)
