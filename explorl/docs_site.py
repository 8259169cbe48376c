"""The documentation site's generated pages: one page per registered component, built from the
registry (its docstring, its parameters as ``explorl list`` knows them), the recipes that use
it and its rows on the board, so the code and its documentation cannot drift.

``explorl docs-pages`` writes them to ``docs/methods`` (``make docs`` does, before MkDocs builds
the site); they are committed so that links to them work in the repository too, and a test
fails when a committed page differs from what the registry gives now.
"""
from __future__ import annotations

import inspect
import re
import sys
import typing
from dataclasses import dataclass
from pathlib import Path

from explorl.registry import LEVELS, Entry, entries

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ROOT / "configs" / "recipes"
BOARD = ROOT / "docs" / "leaderboard.md"


@dataclass(frozen=True)
class Page:
    path: str      # relative to docs/, e.g. "methods/objective/ppo_clip.md"
    text: str


def page_path(entry: Entry) -> str:
    return f"methods/{entry.level}/{entry.name}.md"


def _type_name(hint) -> str:
    if hint is None:
        return ""
    if typing.get_origin(hint) is not None or not isinstance(hint, type):
        return str(hint).replace("typing.", "")
    return hint.__name__


def parameter_rows(entry: Entry) -> list[tuple[str, str, str]]:
    """(name, type, default) of each constructor parameter, as ``explorl list`` shows them."""
    try:
        hints = typing.get_type_hints(entry.cls.__init__)
    except Exception as err:  # the registry's own check names the broken hint; a page must not hide it
        raise ValueError(f"{entry.level} {entry.name!r}: unreadable type hints ({err})") from None
    rows = []
    for name, default in entry.parameters().items():
        shown = "required" if default is inspect.Parameter.empty else f"`{default!r}`"
        rows.append((name, _type_name(hints.get(name)), shown))
    return rows


def recipes_using(entry: Entry) -> list[Path]:
    """The recipes in ``configs/recipes`` that name this component at its level."""
    if entry.level in ("teacher", "verifier"):  # named in a config's teachers/tasks, not in a recipe
        return []
    name = re.escape(entry.name)
    pattern = re.compile(rf"(\{{\s*name:\s*{name}\b|^{entry.level}:\s*{name}\s*$|-\s*{name}\s*$)", re.M)
    own = RECIPES / f"{entry.name}.yaml"
    found = [p for p in sorted(RECIPES.glob("*.yaml")) if pattern.search(p.read_text())]
    return sorted(found, key=lambda p: (p != own, p.name))


def board_rows(recipe: str, board: str) -> list[tuple[str, str, str]]:
    """(regime, table header, row) of every board table row whose first cell is ``recipe``."""
    out, regime, header = [], "", ""
    for line in board.splitlines():
        if line.startswith("## ") or line.startswith("### "):
            regime, header = line.lstrip("#").strip(), ""
        elif line.startswith("| recipe"):
            header = line
        elif header and line.startswith(f"| `{recipe}` |"):
            out.append((regime, header, line))
    return out


def _docstrings(entry: Entry) -> str:
    module = sys.modules[entry.cls.__module__]
    parts = [inspect.cleandoc(module.__doc__ or "")]
    own = entry.cls.__dict__.get("__doc__")
    if own and inspect.cleandoc(own) not in parts[0]:
        parts.append(inspect.cleandoc(own))
    return "\n\n".join(p for p in parts if p)


def method_page(entry: Entry, board: str) -> Page:
    source = Path(sys.modules[entry.cls.__module__].__file__).resolve()
    try:
        where = source.relative_to(ROOT).as_posix()
    except ValueError:  # a plug-in registered from outside the package
        where = source.name
    lines = [f"# `{entry.name}` ({entry.level})", ""]
    if entry.paper:
        lines += [f"**Paper / source:** {entry.paper}", ""]
    kind = getattr(entry.cls, "kind", "")
    lines += [f"Level `{entry.level}`{f', kind `{kind}`' if kind and isinstance(kind, str) else ''}; "
              f"code: `{where}`, class `{entry.cls.__qualname__}`.", ""]
    doc = _docstrings(entry)
    if doc:
        lines += ["## What it computes", "", doc, ""]
    rows = parameter_rows(entry)
    lines += ["## Parameters", ""]
    if rows:
        lines += ["| parameter | type | default |", "|---|---|---|"]
        lines += [f"| `{n}` | {t.replace('|', '&#124;')} | {d.replace('|', '&#124;')} |" for n, t, d in rows]
        lines += ["", "A recipe sets them as `{name: " + entry.name + ", <parameter>: <value>}`; an unknown "
                  "parameter or a value of the wrong type is an error that names it."]
    else:
        lines += ["None."]
    lines.append("")
    recipes = recipes_using(entry)
    if recipes:
        lines += ["## Recipes", ""]
        for recipe in recipes:
            lines += [f"`configs/recipes/{recipe.name}`:", "", "```yaml", recipe.read_text().rstrip(), "```", ""]
    lines += ["## On the board", ""]
    shown = False
    for recipe in recipes:
        rows_by_regime = board_rows(recipe.stem, board)
        if not rows_by_regime:
            continue
        shown = True
        lines += [f"### `{recipe.stem}`", ""]
        for regime, header, row in rows_by_regime:
            lines += [f"**{regime}**", "", header, "|" + "---|" * (header.count("|") - 1), row, ""]
    if shown:
        lines += ["Read with the [leaderboard](../../leaderboard.md)'s legend and statistics."]
    else:
        lines += ["No row of the [leaderboard](../../leaderboard.md) names a recipe of this component."]
    lines.append("")
    return Page(page_path(entry), "\n".join(lines))


def index_page(all_entries: list[Entry]) -> Page:
    lines = ["# Methods reference", "",
             "One page per registered component, generated from the registry when the site is built: "
             "its docstring (paper, equations, the code it follows, the choices where code and paper "
             "differ), its parameters with their defaults, the recipes that use it and its rows on the "
             "board. `explorl list` prints the same registry in a terminal.", ""]
    for level in dict.fromkeys(e.level for e in all_entries):
        here = [e for e in all_entries if e.level == level]
        lines += [f"## {level}", "", "| name | paper / source |", "|---|---|"]
        lines += [f"| [`{e.name}`]({e.level}/{e.name}.md) | {e.paper.replace('|', '&#124;')} |" for e in here]
        lines.append("")
    return Page("methods/index.md", "\n".join(lines))


def shipped_entries() -> list[Entry]:
    """The components explorl ships; a plug-in registered from outside the package (a user's
    module, a test's stand-in) has no page here."""
    return [e for e in entries() if e.cls.__module__.split(".")[0] == "explorl"]


def method_pages() -> list[Page]:
    board = BOARD.read_text() if BOARD.exists() else ""
    every = shipped_entries()
    return [index_page(every)] + [method_page(e, board) for e in every]


def write_pages(out: Path) -> tuple[list[Path], list[Path]]:
    """Write every page under ``out`` (``docs/methods``) and remove the pages of components no
    longer registered (from ``out/<level>/`` only); returns ``(written, removed)``."""
    written = []
    for page in method_pages():
        path = out / Path(page.path).relative_to("methods")
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_text() != page.text:
            path.write_text(page.text)
        written.append(path)
    # only pages in the levels' folders: pointed at docs/ itself, this must not delete the guide
    removed = [p for level in LEVELS for p in (out / level).glob("*.md") if p not in written]
    for path in removed:
        path.unlink()
    return written, removed
