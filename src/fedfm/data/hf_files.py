"""`data.name = "hf"`: the user's data the Hugging Face way, from local files only.

`data.path` is either a folder written by `datasets.save_to_disk` (a Dataset or a DatasetDict),
or parquet / arrow / JSON-lines / CSV files (one file, or a folder of them), read with the
`datasets` library (`pip install "fedfm[data]"`); nothing is fetched from the Hub.

Columns: `data.text_column` + `data.label_column` (task = "classify"; a ClassLabel feature keeps
its names) or `data.prompt_column` + `data.response_column` (task = "generate"; Alpaca's
instruction / input / output are recognised too). The test set, in order of precedence:
`data.test_path` (another file/folder), rows whose `data.split_column` value is "test", a
DatasetDict's "test" split; otherwise the run holds out a seeded, stratified share.
`data.client_column` gives each row its client for `data.partition = "column"`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from fedfm.core.errors import DataError
from fedfm.data.datasets import TextDataset
from fedfm.data.records import GenerationDataset, from_pairs

BUILDERS = {".parquet": "parquet", ".arrow": "arrow", ".jsonl": "json", ".json": "json",
            ".csv": "csv"}
TEST_VALUES = ("test",)


def _datasets():
    try:
        import datasets
    except ImportError:
        raise DataError("data.name = 'hf' reads files with the `datasets` library: "
                        "pip install \"fedfm[data]\" (or pip install datasets).") from None
    datasets.disable_progress_bars()
    return datasets


def _is_saved(p: Path) -> bool:
    return p.is_dir() and any((p / f).is_file() for f in
                              ("dataset_dict.json", "state.json", "dataset_info.json"))


def read_table(path: str | None, what: str = "data.path") -> dict[str, list[dict]]:
    """split name -> rows (dicts) of a save_to_disk folder or data files."""
    if not path:
        raise DataError(f"data.name = 'hf' needs {what} = a datasets folder or data file(s).")
    p = Path(path)
    if not p.exists():
        raise DataError(f"{what} '{p}' does not exist.")
    ds = _datasets()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    try:
        if _is_saved(p):
            obj = ds.load_from_disk(str(p))
        else:
            files = sorted(f for f in (p.iterdir() if p.is_dir() else [p])
                           if f.suffix in BUILDERS)
            kinds = {BUILDERS[f.suffix] for f in files}
            if len(kinds) != 1:
                raise DataError(f"{what} '{p}' must hold files of one kind ({', '.join(BUILDERS)})"
                                f" or a save_to_disk folder; found {sorted(kinds) or 'none'}.")
            obj = ds.load_dataset(kinds.pop(), data_files=[str(f) for f in files], split="train")
    except DataError:
        raise
    except Exception as e:  # corrupt files, wrong formats: one clear paragraph
        raise DataError(f"{what} '{p}' could not be read by datasets: {e}") from None
    splits = dict(obj) if isinstance(obj, ds.DatasetDict) else {"train": obj}
    return {name: _rows(split) for name, split in splits.items()}


def _rows(split) -> list[dict]:
    names = {}
    for col, feat in split.features.items():
        if type(feat).__name__ == "ClassLabel":
            names[col] = feat.names
    rows = split.to_list()
    for col, label_names in names.items():
        for r in rows:
            if r[col] is not None and r[col] >= 0:
                r[col] = label_names[r[col]]
    return rows


def _partition_rows(d: Any, tables: dict[str, list[dict]], test_rows: list[dict] | None = None
                    ) -> tuple[list[dict], list[dict] | None]:
    train = tables.get("train") or next(iter(tables.values()))
    if test_rows is not None:
        return train, test_rows
    if d.test_path:
        return train, next(iter(read_table(d.test_path, "data.test_path").values()))
    if d.split_column:
        if train and d.split_column not in train[0]:
            raise DataError(f"data.split_column '{d.split_column}' is not a column of "
                            f"data.path; columns: {', '.join(train[0])}.")
        test = [r for r in train if str(r[d.split_column]).lower() in TEST_VALUES]
        return [r for r in train if str(r[d.split_column]).lower() not in TEST_VALUES], test or None
    return train, tables.get("test")


def _column(rows: list[dict], col: str, key: str) -> list:
    if rows and col not in rows[0]:
        raise DataError(f"data.{key} = '{col}' is not a column of the data; columns: "
                        f"{', '.join(rows[0])}.")
    return [r[col] for r in rows]


def _classify(d: Any, train: list[dict], test: list[dict] | None):
    from fedfm.data.text_sets import labelled

    if train and d.image_column in train[0] and d.text_column not in train[0]:
        from fedfm.data.images import from_rows as image_rows  # an image data set

        return image_rows(d, train, test)

    def pairs(rows):
        texts = _column(rows, d.text_column, "text_column")
        labels = _column(rows, d.label_column, "label_column")
        return [(str(t), str(y)) for t, y in zip(texts, labels) if t is not None and y is not None]
    tr, te = labelled(pairs(train), pairs(test) if test else None, "data.path")
    if d.client_column:
        keys = [str(v) for v in _column(train, d.client_column, "client_column")]
        names = sorted(set(keys))
        index = {n: i for i, n in enumerate(names)}
        tr = TextDataset(tr.texts, tr.labels, tr.label_names, [index[k] for k in keys], names)
    return tr, te


def generation_pairs(rows: list[dict], prompt_col: str, response_col: str) -> list[tuple[str, str]]:
    """(prompt, response) per row: the named columns, else Alpaca's instruction/input/output."""
    out = []
    for i, r in enumerate(rows, 1):
        if prompt_col in r and response_col in r:
            out.append((str(r[prompt_col]), str(r[response_col])))
        elif "instruction" in r and "output" in r:
            extra = str(r.get("input") or "").strip()
            out.append((str(r["instruction"]) + (f"\n\n{extra}" if extra else ""), str(r["output"])))
        else:
            raise DataError(f"row {i} has neither the columns '{prompt_col}' and '{response_col}'"
                            " (set data.prompt_column / data.response_column) nor Alpaca's "
                            "instruction / input / output.")
    return out


def _generate(d: Any, train: list[dict], test: list[dict] | None):
    tr = from_pairs(generation_pairs(train, d.prompt_column, d.response_column))
    if d.client_column:
        keys = [str(v) for v in _column(train, d.client_column, "client_column")]
        names = sorted(set(keys))
        index = {n: i for i, n in enumerate(names)}
        tr = GenerationDataset(tr.prompts, tr.responses, [index[k] for k in keys], names)
    te = from_pairs(generation_pairs(test, d.prompt_column, d.response_column)) if test else None
    return tr, te


def from_rows(d: Any, tables: dict[str, list[dict]], task: str,
              test_rows: list[dict] | None = None):
    train, test = _partition_rows(d, tables, test_rows)
    if not train:
        raise DataError(f"data.path '{d.path}' holds no training rows.")
    bad = next((i for i, r in enumerate(train, 1) if not isinstance(r, dict)), None)
    if bad is not None:
        raise DataError(f"data.path '{d.path}' row {bad} is not a table of columns.")
    return (_generate if task == "generate" else _classify)(d, train, test)


def load_hf(d: Any, seed: int, task: str = "classify"):
    """(train, test | None) from data.path (see the module docstring)."""
    return from_rows(d, read_table(d.path), task)


def load_rows_file(d: Any, kind: str, task: str):
    """data.name = "csv" / "jsonl" with the same column, split and client options (no
    `datasets` needed)."""
    from fedfm.data.datasets import read_rows

    test = read_rows(d.test_path, kind, "data.test_path") if d.test_path else None
    return from_rows(d, {"train": read_rows(d.path, kind)}, task, test)
