"""Task sources over tables read with ``datasets``: ``kind: parquet``, ``csv`` and ``hf_disk``.

    tasks:
      gsm8k:
        kind: parquet                 # or csv, or hf_disk (a folder written by save_to_disk)
        path: data/gsm8k_train.parquet
        prompt_key: question          # default prompt
        answer_key: answer            # default answer
        solution_key: solution        # optional: a reference solution, kept on the problem
        holdout: 200                  # the last rows, kept for evaluation
        split: train                  # hf_disk only: which split of a DatasetDict
        verifier: {name: math, extractor: boxed}

Rows are numbered from 0, as ``dataset[i]``: problem ids are ``<name>/row<N>`` and every error
about a value names the file and ``row N`` (and, for csv, the line the row starts on). A
missing column is named with the columns there are. CSV values are read as text, exactly as
written (``007`` stays ``007``; an empty cell is an empty value, an error). Before ``datasets``
reads a csv file, its lines are checked here (UTF-8, row size, the same number of fields as
the header), so that a bad line is named by its number. ``datasets`` writes its Arrow cache
into a temporary folder, removed once the rows are read: nothing is cached between runs, so
an edited file is always read anew.
"""
from __future__ import annotations

import csv
import logging
import tempfile
from contextlib import contextmanager
from pathlib import Path

from . import files
from .kinds import register_kind
from .rows import MAX_ROW_BYTES, RowSource, as_text


@contextmanager
def _quiet_datasets():
    """``datasets`` logs a reader's error before raising it; the error is reported here, once."""
    import datasets
    datasets.disable_progress_bars()
    logger = logging.getLogger("datasets")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield datasets
    finally:
        logger.setLevel(level)


def _root_cause(err: BaseException) -> str:
    while err.__cause__ is not None:
        err = err.__cause__
    return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"


def _check_file(path: Path, what: str) -> None:
    if path.is_dir():
        raise ValueError(f"{path}: is a directory, not a {what} file")
    if not path.exists():
        raise FileNotFoundError(f"{what} file not found: {path}")


def _load_file(builder: str, path: Path, **kwargs):
    with _quiet_datasets() as datasets, tempfile.TemporaryDirectory(prefix="explorl-datasets-") as cache:
        try:
            ds = datasets.load_dataset(builder, data_files=str(path), split="train", cache_dir=cache, **kwargs)
        except Exception as err:
            raise ValueError(f"{path}: cannot be read as {builder} ({_root_cause(err)})") from None
        return ds.column_names, ds.to_list()


def _read_parquet(path: Path):
    import pyarrow.parquet as pq
    _check_file(path, "parquet")
    try:
        rows = pq.ParquetFile(path).metadata.num_rows
    except Exception as err:
        raise ValueError(f"{path}: not a parquet file ({_root_cause(err)})") from None
    if rows == 0:  # datasets cannot read a file without a row batch
        raise ValueError(f"{path}: the file has no rows")
    return _load_file("parquet", path)


def _csv_records(path: Path) -> tuple[list[str], list[int]]:
    """The header and the line each row starts on, checking every line on the way."""
    def text_lines():
        for lineno, line in files._lines(path, "CSV"):
            if lineno == 1 and line.startswith(b"\xef\xbb\xbf"):
                line = line[3:]
            try:
                yield line.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}: line {lineno}: not UTF-8 (byte {line[e.start:e.start + 1]!r} at "
                                 f"column {e.start + 1}: {e.reason})") from None

    reader = csv.reader(text_lines())
    header, starts, line = None, [], 1
    try:
        for record in reader:
            if record and not (len(record) == 1 and not record[0].strip()):  # not a blank line
                if header is None:
                    header = record
                elif len(record) != len(header):
                    raise ValueError(f"{path}: line {line}: {len(record)} fields, but the header has "
                                     f"{len(header)} ({', '.join(map(repr, header))})")
                else:
                    starts.append(line)
            line = reader.line_num + 1
    except csv.Error as err:
        raise ValueError(f"{path}: line {reader.line_num}: not valid CSV ({err})") from None
    if header is None:
        raise ValueError(f"{path}: the file has no rows (it is empty or holds only blank lines)")
    duplicated = sorted({name for name in header if header.count(name) > 1})
    if duplicated:
        raise ValueError(f"{path}: the header names columns more than once: {', '.join(map(repr, duplicated))}")
    return header, starts


def _read_csv(path: Path):
    from datasets import Features, Value
    _check_file(path, "CSV")
    header, starts = _csv_records(path)
    if not starts:
        raise ValueError(f"{path}: the file has no rows (it holds only a header)")
    columns, rows = _load_file("csv", path, features=Features({name: Value("string") for name in header}),
                               keep_default_na=False)
    if len(rows) != len(starts):
        raise ValueError(f"{path}: datasets read {len(rows)} rows where the file has {len(starts)}")
    return columns, rows, starts


def _read_saved(path: Path, split: str | None):
    if not path.exists():
        raise FileNotFoundError(f"hf_disk folder not found: {path}")
    if not path.is_dir():
        raise ValueError(f"{path}: is a file; hf_disk reads a folder written by datasets' save_to_disk")
    with _quiet_datasets() as datasets:
        try:
            ds = datasets.load_from_disk(str(path))
        except Exception as err:
            raise ValueError(f"{path}: not a dataset written by save_to_disk ({_root_cause(err)})") from None
        if isinstance(ds, datasets.DatasetDict):
            splits = list(ds)
            if split is None and len(splits) != 1:
                raise ValueError(f"{path}: holds the splits {', '.join(splits)}: choose one with split")
            split = splits[0] if split is None else split
            if split not in ds:
                raise ValueError(f"{path}: no split {split!r} (splits: {', '.join(splits)})")
            ds = ds[split]
        elif split is not None:
            raise ValueError(f"{path}: holds one dataset without splits; leave split out")
        return ds.column_names, ds.to_list()


class TableSource(RowSource):
    """Problems from the rows of a table read with ``datasets`` (see the module docstring)."""

    kind = ""

    def __init__(self, path: str | Path, name: str | None = None, prompt_key: str = "prompt",
                 answer_key: str = "answer", holdout: int = 0, solution_key: str | None = None,
                 verifier: str | dict = "numeric", split: str | None = None):
        super().__init__(path, name, verifier)
        if split is not None and self.kind != "hf_disk":
            raise ValueError(f"{self.path}: split is an option of kind hf_disk only")
        starts = None
        if self.kind == "parquet":
            columns, records = _read_parquet(self.path)
        elif self.kind == "csv":
            columns, records, starts = _read_csv(self.path)
        else:
            columns, records = _read_saved(self.path, split)
        keys = {"prompt": prompt_key, "answer": answer_key}
        if solution_key is not None:
            keys["solution"] = solution_key
        for what, key in keys.items():
            if key not in columns:
                shown = ", ".join(map(repr, columns[:10])) + (", ..." if len(columns) > 10 else "")
                raise ValueError(f"{self.path}: missing column {key!r} (the {what}; columns present: {shown or 'none'})")
        self._starts = starts
        solutions = []
        for index, record in enumerate(records):
            where = self.locate(index)
            values = {what: as_text(where, key, what, record[key]) for what, key in keys.items()}
            if sum(len(v.encode("utf-8")) for v in values.values()) > MAX_ROW_BYTES:
                raise ValueError(f"{where}: the row is longer than {MAX_ROW_BYTES} bytes")
            self.rows.append((index, values["prompt"], values["answer"]))
            solutions.append(values.get("solution", ""))
        self.solutions = solutions if solution_key is not None else None
        self._finish(holdout)

    def locate(self, label: int) -> str:
        starts = getattr(self, "_starts", None)
        return f"{self.path}: row {label}" + (f" (line {starts[label]})" if starts else "")


@register_kind("parquet")
class ParquetSource(TableSource):
    kind = "parquet"


@register_kind("csv")
class CsvSource(TableSource):
    kind = "csv"


@register_kind("hf_disk")
class SavedDatasetSource(TableSource):
    kind = "hf_disk"
