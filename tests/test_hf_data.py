"""data.name = "hf": datasets folders and files made in the test, split/client columns, and the
natural (column) partition end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedfm.config import DataConfig
from fedfm.core.errors import DataError
from fedfm.data import catalogue
from fedfm.data.partition import partition

datasets = pytest.importorskip("datasets")

ROWS = [{"text": f"{w} {i} words about {w}", "label": w, "user": f"u{i % 3}",
         "part": "test" if i % 5 == 0 else "train"}
        for i, w in enumerate(["sport", "money", "film", "music"] * 10)]


def _cfg(**kw) -> DataConfig:
    return DataConfig(name="hf", **kw)


def test_save_to_disk_folder_with_classlabel_and_test_split(tmp_path):
    feats = datasets.Features({"text": datasets.Value("string"),
                               "label": datasets.ClassLabel(names=["neg", "pos"])})
    make = lambda n, off: datasets.Dataset.from_dict(  # noqa: E731
        {"text": [f"t{i}" for i in range(off, off + n)], "label": [i % 2 for i in range(n)]}, feats)
    datasets.DatasetDict({"train": make(12, 0), "test": make(6, 100)}).save_to_disk(tmp_path / "dd")
    train, test = catalogue.load("hf", _cfg(path=str(tmp_path / "dd")), 0)
    assert train.label_names == ["neg", "pos"] and len(train.texts) == 12 and len(test.texts) == 6
    assert train.label_names[train.labels[1]] == "pos" and test.texts[0] == "t100"
    make(8, 0).save_to_disk(tmp_path / "single")
    train, test = catalogue.load("hf", _cfg(path=str(tmp_path / "single")), 0)
    assert len(train.texts) == 8 and test is None


def test_parquet_file_split_column_and_clients(tmp_path):
    datasets.Dataset.from_list(ROWS).to_parquet(str(tmp_path / "d.parquet"))
    d = _cfg(path=str(tmp_path / "d.parquet"), split_column="part", client_column="user")
    train, test = catalogue.load("hf", d, 0)
    assert len(test.texts) == 8 and len(train.texts) == 32
    assert train.group_names == ["u0", "u1", "u2"] and len(train.groups) == 32
    parts = partition(train.groups, 3, "column", seed=0)
    for k, p in enumerate(parts):
        assert {train.groups[i] for i in p} == {k}
    with pytest.raises(DataError, match="num_clients = 3"):
        partition(train.groups, 4, "column", seed=0)


def test_jsonl_and_csv_files_and_separate_test_file(tmp_path):
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r) for r in ROWS[:20]))
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps(r) for r in ROWS[20:]))
    train, test = catalogue.load("hf", _cfg(path=str(tmp_path / "a.jsonl"),
                                           test_path=str(tmp_path / "b.jsonl")), 0)
    assert (len(train.texts), len(test.texts)) == (20, 20) and train.label_names == test.label_names
    folder = tmp_path / "csvs"
    folder.mkdir()
    datasets.Dataset.from_list(ROWS[:10]).to_csv(str(folder / "x.csv"))
    datasets.Dataset.from_list(ROWS[10:]).to_csv(str(folder / "y.csv"))
    train, _ = catalogue.load("hf", _cfg(path=str(folder)), 0)
    assert len(train.texts) == 40
    # the plain csv/jsonl loaders take the same options without `datasets`
    tr, te = catalogue.load("jsonl", DataConfig(name="jsonl", path=str(tmp_path / "a.jsonl"),
                                                split_column="part"), 0)
    assert len(te.texts) == 4 and len(tr.texts) == 16


def test_generation_columns_and_errors(tmp_path):
    rows = [{"q": f"question {i}", "a": f"answer {i}"} for i in range(10)]
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "g.parquet"))
    d = _cfg(path=str(tmp_path / "g.parquet"), prompt_column="q", response_column="a")
    train, test = catalogue.load("hf", d, 0, task="generate")
    assert train.prompts[3] == "question 3" and train.responses[3] == "answer 3" and test is None
    with pytest.raises(DataError, match="prompt_column"):
        catalogue.load("hf", _cfg(path=str(tmp_path / "g.parquet")), 0, task="generate")
    with pytest.raises(DataError, match="text_column"):
        catalogue.load("hf", _cfg(path=str(tmp_path / "g.parquet")), 0)
    with pytest.raises(DataError, match="does not exist"):
        catalogue.load("hf", _cfg(path=str(tmp_path / "nope")), 0)
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    with pytest.raises(DataError, match="could not be read"):
        catalogue.load("hf", _cfg(path=str(tmp_path / "bad.parquet")), 0)


def test_run_on_a_saved_folder_with_column_partition(tmp_path, tiny_cfg):
    from fedfm.run import run

    rng = np.random.default_rng(0)
    topics = {"sport": "goal match team", "money": "bank shares profit"}
    rows = [{"text": f"{topics[y]} {rng.integers(100)}", "label": y, "user": f"u{i % 4}"}
            for i, y in enumerate(["sport", "money"] * 40)]
    datasets.Dataset.from_list(rows).save_to_disk(tmp_path / "ds")
    cfg = tiny_cfg(**{"data.name": "hf", "data.path": str(tmp_path / "ds"),
                      "data.partition": "column", "data.client_column": "user",
                      "data.num_clients": 4, "rounds": 1})
    s = run(cfg, quiet=True)
    assert len(s["clients"]) == 4 and s["acc_global"] is not None
    assert sum(c["n_train"] + c["n_test"] for c in s["clients"]) == 64  # 80 - 16 global test
