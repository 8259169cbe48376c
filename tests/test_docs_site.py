"""The methods reference is generated from the registry: every registered component gets a
page with its docstring, its parameters and defaults, its recipes and its board rows."""
from explorl.docs_site import board_rows, method_pages, page_path, parameter_rows, recipes_using, shipped_entries
from explorl.registry import lookup

BOARD = """# Leaderboard
## default
| recipe | seeds | pass@1 |
|---|---|---|
| `clip_cov` | 5 | 0.480 |
| `clip_cov_extra` | 5 | 0.470 |
## collapse
text
| recipe | seeds | pass@1 |
|---|---|---|
| `grpo` | 10 | 0.430 |
| `clip_cov` | 5 | 0.440 |
"""


def test_every_registered_component_has_a_page_with_its_parameters():
    pages = {p.path: p.text for p in method_pages()}
    for entry in shipped_entries():
        text = pages[page_path(entry)]
        assert f"# `{entry.name}` ({entry.level})" in text
        for name, _, default in parameter_rows(entry):
            assert f"| `{name}` |" in text and default.replace("|", "&#124;") in text
        assert f"({entry.level}/{entry.name}.md)" in pages["methods/index.md"]


def test_a_page_carries_the_docstring_and_the_recipe():
    entry = lookup("objective", "ppo_clip")
    text = next(p.text for p in method_pages() if p.path == page_path(entry))
    assert "PPO clipped surrogate with decoupled clip range" in text  # the module docstring
    assert "| `clip_ratio_high` | float | `0.2` |" in text
    assert "`configs/recipes/clip_higher.yaml`" in text


def test_board_rows_are_found_by_recipe_in_each_regime():
    rows = board_rows("clip_cov", BOARD)
    assert [(regime, row.split("|")[3].strip()) for regime, _, row in rows] == [("default", "0.480"),
                                                                                ("collapse", "0.440")]
    assert board_rows("clip", BOARD) == []  # a prefix of a recipe name is not that recipe


def test_recipes_using_lists_the_methods_own_recipe_first():
    found = [p.stem for p in recipes_using(lookup("objective", "clip_cov"))]
    assert found[0] == "clip_cov" and "stack_dump_knapsack_clip_cov" in found
    assert recipes_using(lookup("verifier", "exact")) == []


def test_the_committed_pages_are_what_the_registry_gives_now():
    """docs/methods is generated (`explorl docs-pages`, run by `make docs`) and committed so that
    links to it work in the repository: a page that differs from the code is stale."""
    from pathlib import Path
    root = Path(__file__).resolve().parent.parent / "docs"
    stale = [p.path for p in method_pages() if not (root / p.path).exists() or (root / p.path).read_text() != p.text]
    pages = {p.path for p in method_pages()}
    extra = [str(f.relative_to(root)) for f in (root / "methods").rglob("*.md") if str(f.relative_to(root)) not in pages]
    assert not stale and not extra, (f"run `explorl docs-pages`: stale or missing {stale}, no longer registered "
                                     f"{extra}")


def test_the_readme_links_every_method_and_only_to_files_that_exist():
    import re
    from pathlib import Path
    root = Path(__file__).resolve().parent.parent
    readme = (root / "README.md").read_text()
    targets = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", readme)
    missing = [t for t in targets if not t.startswith("http") and not (root / t).exists()]
    assert not missing, f"README.md links to files that do not exist: {missing}"
    unlinked = [f"{e.level}/{e.name}" for e in shipped_entries() if e.level not in ("teacher", "verifier")
                and f"(docs/{page_path(e)})" not in readme]
    assert not unlinked, f"README.md's methods at a glance misses {unlinked}"
    assert len(readme.splitlines()) <= 250, "the README is the front door: keep it short, move detail to docs/"


def test_a_plugin_registered_outside_the_package_gets_no_page():
    """Tests and users register their own components; the site documents what explorl ships, so
    the committed pages do not depend on which test modules ran first."""
    from explorl.registry import REGISTRY, register

    @register("budget", "docs_site_outsider", paper="test only")
    class Outsider:
        pass
    try:
        assert "budget/docs_site_outsider" not in {f"{e.level}/{e.name}" for e in shipped_entries()}
        assert all("docs_site_outsider" not in p.path for p in method_pages())
    finally:
        del REGISTRY["budget"]["docs_site_outsider"]


def test_writing_the_pages_removes_only_stale_method_pages(tmp_path):
    """A stale page of an unregistered method goes; anything else in the folder stays (pointed at
    docs/ itself by mistake, the command must not delete the guide)."""
    from explorl.docs_site import write_pages
    (tmp_path / "budget").mkdir()
    stale = tmp_path / "budget" / "gone_method.md"
    stale.write_text("old")
    guide = tmp_path / "getting-started.md"
    guide.write_text("keep me")
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "note.md").write_text("keep me too")
    written, removed = write_pages(tmp_path)
    assert removed == [stale] and not stale.exists()
    assert guide.read_text() == "keep me" and (tmp_path / "img" / "note.md").exists()
    assert (tmp_path / "index.md").exists() and len(written) == len(method_pages())
