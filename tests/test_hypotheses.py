"""docs/hypotheses.md and configs/studies/hypotheses.yaml say the same thing: every id of one is
in the other, with the same recipe, hypothesis and engagement criterion word for word; the file's
tests are well formed."""
import pytest

from explorl.compare.hypotheses import doc_rows, load


def test_every_id_of_the_doc_is_in_the_file_and_back_with_the_same_words():
    doc, file = doc_rows(), {h.id: h for h in load()}
    assert len(doc) == 46 and set(doc) == set(file)
    for hid, row in doc.items():
        h = file[hid]
        assert (h.recipe, h.hypothesis, h.engaged_when) == (row["recipe"], row["hypothesis"], row["engaged_when"]), hid


def test_every_hypothesis_is_judged_or_says_why_not():
    for h in load():
        assert h.tests or h.not_evaluated or h.control, h.id
        for test in h.tests:
            assert test.regime in ("default", "collapse", "exploration-limited", "forking"), (h.id, test.regime)


@pytest.mark.parametrize("entry, message", [
    ("{id: X1, recipe: dump, hypothesis: h, engaged_when: e, tests: [{regime: default, metric: pass@1, "
     "against: grpo}]}", "one of at_least"),
    ("{id: X1, recipe: dump, hypothesis: h, engaged_when: e, tests: [{regime: default, metric: pass@0.5, "
     "against: grpo, at_least: 0.01}]}", "unknown metric 'pass@0.5'"),
    ("{id: X1, recipe: dump, hypothesis: h, engaged_when: e}", "give tests, or not_evaluated"),
    ("{id: X1, recipe: dump, hypothesis: h, engaged_when: e, size: 3, control: true}", "unknown key(s) size"),
])
def test_a_malformed_entry_is_refused_naming_it(tmp_path, entry, message):
    path = tmp_path / "h.yaml"
    path.write_text(f"hypotheses:\n  - {entry}\n")
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load(path)


def test_the_board_runs_the_declared_regimes_with_their_k_max(monkeypatch):
    """configs/studies/board.yaml runs every regime a hypothesis is tested in, each with the k_max
    docs/hypotheses.md declares, n >= 2·k_max samples and pass@k_max evaluated."""
    import re

    from explorl.compare.hypotheses import DOC
    from explorl.compare.studyfile import load_study
    from explorl.config import load_config
    root = DOC.parent.parent
    text = " ".join(DOC.read_text().split())
    declared = re.search(r"k_max, declared per regime before the runs:\*\* (.*?) \(evaluation", text).group(1)
    declared = {name: int(k) for name, k in (part.rsplit(" ", 1) for part in declared.split(", "))}
    assert declared == {"default": 16, "collapse": 16, "exploration-limited": 32, "forking": 16}
    monkeypatch.chdir(root)  # the study file names its configs from the repository root
    board = dict(load_study(root / "configs" / "studies" / "board.yaml"))
    configs = {name: load_config(s["config"], s["set"], "grpo") for name, s in board.items()}
    assert {name: board[name]["k_max"] for name in declared} == declared
    assert {t.regime for h in load() for t in h.tests} <= set(board)
    for name, cfg in configs.items():
        k_max = board[name]["k_max"]
        assert cfg.eval.samples >= 2 * k_max and k_max in cfg.eval.ks, name
        assert cfg.eval.problems_per_source * len(cfg.tasks) >= board[name]["heldout_problems"], name
