"""File task sources by kind (jsonl, parquet, csv, hf_disk): the same rows from every kind, bad
rows named by file and row, verifiers per entry, and kinds mixed in one run's tasks."""
import json
import random

import pytest

from explorl.config import load_config
from explorl.tasks import TaskMix
from explorl.tasks.checker import check_task
from explorl.tasks.kinds import make_task_source
from explorl.tasks.rows import MAX_ROW_BYTES

#: GSM8K-style word problems: question, final answer, and a worked solution ending in ``#### n``.
ROWS = [
    ("Natalia sold 48 clips in April and half as many in May. How many in all?", "72", "48/2 = 24\n48+24 = 72\n#### 72"),
    ("Weng earns $12 an hour. How much for 50 minutes?", "10", "12/60 = 0.2\n0.2*50 = 10\n#### 10"),
    ("Betty needs $100 and has half of it. How much more does she need?", "50", "100/2 = 50\n#### 50"),
    ("A pizza is cut into 8 slices; Tom eats 2. What fraction is left?", "\\frac{3}{4}", "6/8 = 3/4\n#### 3/4"),
    ("James writes 3 pages to 2 friends twice a week. Pages a year?", "624", "3*2*2*52 = 624\n#### 624"),
    ("Mark has 10 yellow flowers and 80% more purple. How many purple?", "18", "10*1.8 = 18\n#### 18"),
    ("Albert buys 2 large pizzas of 16 slices. How many slices?", "32", "2*16 = 32\n#### 32"),
    ("Ken has 007 marbles and finds 0 more. Marbles?", "007", "#### 007"),
]
KINDS = ["jsonl", "parquet", "csv", "hf_disk"]


def write_jsonl(path, rows=ROWS):
    path.write_text("".join(json.dumps({"question": q, "answer": a, "solution": s}) + "\n" for q, a, s in rows))
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The JSONL file, converted with ``datasets`` to parquet, csv and a save_to_disk folder."""
    from datasets import Dataset
    folder = tmp_path_factory.mktemp("data")
    jsonl = write_jsonl(folder / "gsm.jsonl")
    ds = Dataset.from_json(str(jsonl), cache_dir=str(folder / "cache"))
    ds.to_parquet(str(folder / "gsm.parquet"))
    ds.to_csv(str(folder / "gsm.csv"), index=False)
    ds.save_to_disk(str(folder / "gsm_disk"))
    return {"jsonl": jsonl, "parquet": folder / "gsm.parquet", "csv": folder / "gsm.csv",
            "hf_disk": folder / "gsm_disk"}


def source(kind, path, **options):
    options = {"prompt_key": "question", "solution_key": "solution", **options}
    return make_task_source("gsm", {"kind": kind, "path": str(path), **options})


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_reads_the_same_rows(kind, data):
    src = source(kind, data[kind], holdout=2)
    assert [row[1:] for row in src.rows] == [(q, a) for q, a, _ in ROWS]
    assert src.solutions == [s for _, _, s in ROWS]
    held_out = src.eval_set(10)
    assert sorted(p.answer for p in held_out) == ["007", "32"]  # the last two rows
    word = "line" if kind == "jsonl" else "row"
    first = 1 if kind == "jsonl" else 0
    assert {p.id for p in held_out} == {f"gsm/{word}{first + 6}", f"gsm/{word}{first + 7}"}
    train = {src.sample(random.Random(i)).id for i in range(40)}
    assert not train & {p.id for p in held_out} and len(train) == 6
    p = src.problem(3)
    assert p == source(kind, data[kind], holdout=2).problem(3)  # stable across loads
    assert p.solution == dict((q, s) for q, _, s in ROWS)[p.prompt]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("verifier", ["exact", "numeric", {"name": "math", "extractor": "boxed"},
                                      {"name": "numeric", "extractor": "gsm8k", "format_reward": 0.1}])
def test_check_task_passes_for_every_kind_and_verifier(kind, verifier, data):
    report = check_task(source(kind, data[kind], verifier=verifier), n=4, alphabet="")
    assert report["problems"] > 0 and report["slowest_verify_s"] < 0.5


def test_the_verifier_reads_the_reference_as_its_extractor_writes_it(data):
    src = source("parquet", data["parquet"], verifier={"name": "math", "extractor": "boxed"})
    p = next(p for p in src.eval_set(8) if p.answer == "\\frac{3}{4}")
    assert src.reference_completion(p) == "\\boxed{\\frac{3}{4}}"
    assert src.verify(p, "6 of 8 slices: \\boxed{0.75}") == 1.0 and src.verify(p, "0.75") == 0.0


# ---- bad input ---------------------------------------------------------------------------------

def write_parquet(path, table):
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.table(table), path)
    return path


@pytest.mark.parametrize("table, message", [
    ({"prompt": ["a=", "b=", "c="], "answer": ["1", None, "3"]},
     r"x\.parquet: row 1: 'answer' \(the answer\) must be a string or a number, got null"),
    ({"prompt": ["a=", " "], "answer": ["1", "2"]}, r"x\.parquet: row 1: 'prompt' \(the prompt\) is empty"),
    ({"prompt": ["a=", "b="], "answer": [1.5, float("nan")]}, r"x\.parquet: row 1: 'answer' .* finite number, got nan"),
    ({"prompt": ["a=", "b="], "answer": [[1], [2]]}, r"x\.parquet: row 0: 'answer' .* got list"),
    ({"prompt": ["a=", "b="], "answer": [b"1", b"2"]}, r"x\.parquet: row 0: 'answer' .* got bytes"),
    ({"prompt": ["a=", "9" * (MAX_ROW_BYTES + 1)], "answer": ["1", "2"]},
     rf"x\.parquet: row 1: the row is longer than {MAX_ROW_BYTES} bytes"),
    ({"q": ["a="], "a": ["1"]}, r"x\.parquet: missing column 'prompt' \(the prompt; columns present: 'q', 'a'\)"),
])
def test_bad_parquet_rows_name_file_and_row(tmp_path, table, message):
    path = write_parquet(tmp_path / "x.parquet", table)
    with pytest.raises(ValueError, match=r"tasks\.gsm: .*" + message):
        make_task_source("gsm", {"kind": "parquet", "path": str(path)})


def test_numbers_in_tables_become_text(tmp_path):
    path = write_parquet(tmp_path / "n.parquet", {"prompt": ["a=", "b="], "answer": [3, 12]})
    assert [row[1:] for row in make_task_source("n", {"kind": "parquet", "path": str(path)}).rows] == \
        [("a=", "3"), ("b=", "12")]


@pytest.mark.parametrize("content, message", [
    (b"", r"the file has no rows"),
    (b"\n\n", r"the file has no rows"),
    (b"prompt,answer\n", r"the file has no rows \(it holds only a header\)"),
    (b"prompt,answer\na=,1\nb=,\n", r"c\.csv: row 1 \(line 3\): 'answer' \(the answer\) is empty"),
    (b"prompt,answer\na=,1\n\"b\nc=\",2\nd=,x,9\n", r"c\.csv: line 5: 3 fields, but the header has 2"),
    (b"prompt,answer\na=,1\ncaf\xe9=,2\n", r"c\.csv: line 3: not UTF-8 \(byte b'\\xe9' at column 4"),
    (b"prompt,prompt\na,b\n", r"names columns more than once: 'prompt'"),
    (b"q,answer\na=,1\n", r"missing column 'prompt' \(the prompt; columns present: 'q', 'answer'\)"),
])
def test_bad_csv_names_file_and_line(tmp_path, content, message):
    path = tmp_path / "c.csv"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=r"tasks\.c: .*" + message):
        make_task_source("c", {"kind": "csv", "path": str(path)})


def test_csv_values_are_read_as_written(tmp_path):
    path = tmp_path / "c.csv"
    path.write_bytes(b'\xef\xbb\xbfprompt,answer\n"a, b=",007\n\nNA=,NA\n"multi\nline=",0.50\n')
    src = make_task_source("c", {"kind": "csv", "path": str(path)})
    assert [row[1:] for row in src.rows] == [("a, b=", "007"), ("NA=", "NA"), ("multi\nline=", "0.50")]
    assert src.locate(2).endswith("c.csv: row 2 (line 5)")


def test_saved_dataset_splits(tmp_path):
    from datasets import Dataset, DatasetDict
    rows = {"prompt": ["a=", "b="], "answer": ["1", "2"]}
    DatasetDict({"train": Dataset.from_dict(rows), "test": Dataset.from_dict({"prompt": ["c="], "answer": ["3"]})}
                ).save_to_disk(str(tmp_path / "dd"))
    at = str(tmp_path / "dd")
    assert [r[1] for r in make_task_source("t", {"kind": "hf_disk", "path": at, "split": "test"}).rows] == ["c="]
    with pytest.raises(ValueError, match=r"tasks\.t: .*dd: holds the splits train, test: choose one with split"):
        make_task_source("t", {"kind": "hf_disk", "path": at})
    with pytest.raises(ValueError, match=r"no split 'dev' \(splits: train, test\)"):
        make_task_source("t", {"kind": "hf_disk", "path": at, "split": "dev"})
    with pytest.raises(ValueError, match=r"not a dataset written by save_to_disk"):
        make_task_source("t", {"kind": "hf_disk", "path": str(tmp_path)})
    with pytest.raises(FileNotFoundError, match=r"tasks\.t: hf_disk folder not found"):
        make_task_source("t", {"kind": "hf_disk", "path": str(tmp_path / "nope")})
    with pytest.raises(ValueError, match=r"split is an option of kind hf_disk only"):
        make_task_source("t", {"kind": "parquet", "path": str(tmp_path / "x.parquet"), "split": "train"})


def test_unreadable_files_are_named(tmp_path):
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not a parquet file")
    with pytest.raises(ValueError, match=r"bad\.parquet: not a parquet file"):
        make_task_source("b", {"kind": "parquet", "path": str(bad)})
    empty = write_parquet(tmp_path / "empty.parquet", {"prompt": [], "answer": []})
    with pytest.raises(ValueError, match=r"empty\.parquet: the file has no rows"):
        make_task_source("b", {"kind": "parquet", "path": str(empty)})
    with pytest.raises(FileNotFoundError, match=r"tasks\.b: CSV file not found"):
        make_task_source("b", {"kind": "csv", "path": str(tmp_path / "nope.csv")})
    with pytest.raises(ValueError, match=r"tasks\.b: .*unexpected keyword argument 'prompt_kye'.*options: path"):
        make_task_source("b", {"kind": "csv", "path": str(tmp_path / "nope.csv"), "prompt_kye": "q"})
    with pytest.raises(ValueError, match=r"tasks\.b: unknown verifier component 'mathh'"):
        make_task_source("b", {"kind": "parquet", "path": str(empty), "verifier": "mathh"})


# ---- in a run's configuration --------------------------------------------------------------------

def test_kinds_mix_in_one_run(data):
    tasks = {"addition": {"digits": [1, 2], "weight": 2},
             "gsm_jsonl": {"kind": "jsonl", "path": str(data["jsonl"]), "prompt_key": "question", "holdout": 2},
             "gsm_parquet": {"kind": "parquet", "path": str(data["parquet"]), "prompt_key": "question",
                             "verifier": {"name": "math", "extractor": "boxed"}},
             "parity": {"kind": "user_sources:Parity", "length": [2, 3]}}
    cfg = load_config(overrides=[f"tasks={json.dumps(tasks)}", "model.tiny.max_positions=256"])
    mix = TaskMix.from_config(cfg.tasks)
    assert mix.names == list(tasks) and mix.weights["addition"] == 2.0
    rng = random.Random(0)
    seen = {mix.sample(rng).source for _ in range(60)}
    assert seen == set(tasks)
    p = mix.sample(random.Random(1), source="gsm_parquet")
    assert mix.verify(p, f"\\boxed{{{p.answer}}}") == 1.0 and mix.verify(p, p.answer) == 0.0
    assert mix.sample(random.Random(1), source="parity").prompt.startswith("parity:")
    assert all(len(problems) == 2 for problems in mix.eval_sets(2).values())


@pytest.mark.parametrize("entry, message", [
    ({"kind": "jsonl"}, r"tasks\.bad: .*missing 1 required positional argument: 'path'"),
    ({"kind": "jsonl", "path": "/no/such.jsonl"}, r"tasks\.bad: JSONL file not found: /no/such\.jsonl"),
    ({"kind": "parquet", "path": "PARQUET", "verifier": {"name": "math", "extractor": "boxxed"}},
     r"tasks\.bad: .*unknown extractor 'boxxed'"),
    ({"kind": "parquet", "path": "PARQUET", "weight": -1}, r"tasks\.bad\.weight: must be >= 0"),
    ({"kind": "parquet", "path": "PARQUET", "prompt_key": "q"}, r"tasks\.bad: .*missing column 'q'"),
    ({"kind": "nosuch"}, r"tasks\.bad\.kind: unknown task kind 'nosuch'"),
    ({"kind": "user_sources:Nope"}, r"tasks\.bad: 'user_sources:Nope' is not a TaskSource subclass"),
    ({"kind": "user_sources:Parity", "length": [3, 1]}, r"tasks\.bad: .*range for 'length' has low > high"),
])
def test_config_errors_name_the_entry(data, entry, message):
    entry = {k: (str(data["parquet"]) if v == "PARQUET" else v) for k, v in entry.items()}
    with pytest.raises(ValueError, match=message):
        load_config(overrides=[f"tasks={json.dumps({'addition': {}, 'bad': entry})}"])
