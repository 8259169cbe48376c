"""``explorl check-task`` on every kind of source: a report per source, exit 0 when all pass,
1 when one fails (with the reason), 2 for a config it cannot read."""
import json

import pytest
import yaml

from chat_model import save_chat_model
from explorl.cli import main

ROWS = [("Natalia sold 48 clips in April and half as many in May. How many in all?", "72"),
        ("Weng earns $12 an hour. How much for 50 minutes?", "10"),
        ("A pizza is cut into 8 slices; Tom eats 2. What fraction is left?", "\\frac{3}{4}")]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from datasets import Dataset
    folder = tmp_path_factory.mktemp("check")
    jsonl = folder / "gsm.jsonl"
    jsonl.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in ROWS))
    ds = Dataset.from_json(str(jsonl), cache_dir=str(folder / "cache"))
    ds.to_parquet(str(folder / "gsm.parquet"))
    ds.to_csv(str(folder / "gsm.csv"), index=False)
    ds.save_to_disk(str(folder / "gsm_disk"))
    return {"jsonl": jsonl, "parquet": folder / "gsm.parquet", "csv": folder / "gsm.csv",
            "hf_disk": folder / "gsm_disk", "folder": folder}


def every_kind(files, verifier):
    tasks = {"addition": {"digits": [1, 2]}, "parity": {"kind": "user_sources:Parity"}}
    for kind in ("jsonl", "parquet", "csv", "hf_disk"):
        tasks[f"gsm_{kind}"] = {"kind": kind, "path": str(files[kind]), "prompt_key": "question",
                                "verifier": verifier}
    return tasks


def run(tmp_path, capsys, tasks, *sets, name="cfg.yaml"):
    config = tmp_path / name
    config.write_text(yaml.safe_dump({"tasks": tasks, "model": {"tiny": {"max_positions": 256}}}, sort_keys=False))
    code = main(["check-task", "--config", str(config), "--problems", "3", *[x for s in sets for x in ("--set", s)]])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_every_kind_passes(files, tmp_path, capsys):
    code, out, _ = run(tmp_path, capsys, every_kind(files, {"name": "math", "extractor": "boxed"}))
    assert code == 0, out
    for name, kind in [("addition", "built-in"), ("parity", "user_sources:Parity"), ("gsm_jsonl", "jsonl"),
                       ("gsm_parquet", "parquet"), ("gsm_csv", "csv"), ("gsm_hf_disk", "hf_disk")]:
        assert f"task source {name!r} ({kind}): pass" in out
    assert out.count("slowest verification: ") == 6 and out.count("problems checked: ") == 6
    assert "survive the testbed tokenizer and fit its context" in out
    assert out.strip().endswith("6 task sources: 6 pass")


def test_a_failing_source_is_reported_with_its_reason(files, tmp_path, capsys):
    tasks = {"addition": {},
             "fractions": {"kind": "parquet", "path": str(files["parquet"]), "prompt_key": "question",
                           "verifier": {"name": "numeric", "extractor": "last_number"}},  # cannot state 3/4
             "missing": {"kind": "csv", "path": str(files["folder"] / "nope.csv")},
             "badrow": {"kind": "jsonl", "path": str(files["jsonl"]), "prompt_key": "q"}}
    code, out, _ = run(tmp_path, capsys, tasks, "verify.isolate=false")
    assert code == 1
    assert "task source 'addition' (built-in): pass" in out
    assert "task source 'fractions' (parquet): FAIL" in out
    assert "reason: check_task: task source 'fractions' fails its checks: check_task('fractions'): reference " \
           "answer '\\\\frac{3}{4}' scores 0.0" in out
    assert "task source 'missing' (csv): FAIL\n  reason: building the source: tasks.missing: CSV file not found" in out
    assert f"{files['jsonl']}: line 1: missing key 'q'" in out
    assert out.strip().endswith("4 task sources: 1 pass, 3 fail (fractions, missing, badrow)")


def test_tokenizer_and_context_are_checked(files, tmp_path, capsys):
    tasks = {"gsm": {"kind": "jsonl", "path": str(files["jsonl"]), "prompt_key": "question"}}
    code, out, _ = run(tmp_path, capsys, tasks, "model.tiny.max_positions=48")
    assert code == 1 and "reason: the tokenizer: task source 'gsm': " in out and "more than the model's context" in out


def test_a_saved_model_with_a_chat_template(files, tmp_path, capsys):
    save_chat_model(tmp_path / "model")
    tasks = {"gsm": {"kind": "parquet", "path": str(files["parquet"]), "prompt_key": "question",
                     "verifier": {"name": "math", "extractor": "boxed"}}}
    sets = [f"model.path={tmp_path / 'model'}", "prompt.template=chat", "prompt.system=Solve it."]
    code, out, _ = run(tmp_path, capsys, tasks, *sets)
    assert code == 0, out
    assert "prompts (prompt.template: chat) and reference answers survive the tokenizer of model.path=" in out
    code, out, _ = run(tmp_path, capsys, tasks, *sets, "model.max_new_tokens=1", name="bad.yaml")
    assert code == 2  # a config it cannot read is an error, not a report


def test_chat_without_a_template_fails_every_source(files, tmp_path, capsys):
    code, out, _ = run(tmp_path, capsys, {"addition": {}}, "prompt.template=chat")
    assert code == 1 and "reason: the tokenizer: ValueError: prompt.template: chat, but the tokenizer of the " \
                         "testbed model has no chat template" in out
