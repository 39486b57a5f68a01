"""The data catalogue: registry, real files from the shipped packages (skipped where a package is
not installed; CI installs them with `fedfm data install`), official splits, generation records."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from fedfm.cli import main
from fedfm.core.errors import DataError
from fedfm.data import catalogue
from fedfm.data.datasets import TextDataset
from fedfm.data.packaged import install_command, installed, package_path
from fedfm.data.records import GenerationDataset

NEEDS = {e.name: e.package.split()[-1] for e in catalogue.CATALOGUE.values()
         if e.package and e.kind in ("classify", "generate")}


def _need(name: str) -> None:
    if not installed(NEEDS[name]):
        pytest.skip(f"{NEEDS[name]} not installed (fedfm data install)")


def test_list_shows_catalogue_with_size_and_licence(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("20news", "r52", "r8", "medmcqa-subject", "rotten-tomatoes", "tweet-sentiment",
                 "bbc", "boolq", "nq-open", "asdiv", "xsum", "commonsenseqa", "piqa", "siqa",
                 "openbookqa", "mmlu", "pubmedqa", "hf"):
        assert f"  {name} " in out
    assert "licence:" in out and "official" in out


def test_unknown_name_and_missing_package_are_clear_errors(monkeypatch):
    with pytest.raises(DataError, match="Valid data sets"):
        catalogue.get("imagenet")
    with pytest.raises(DataError, match="fedfm data install"):
        package_path("no-such-dist-fedfm", "x/y.tab", "20news")
    assert install_command()[3:5] == ["install", "--no-deps"]


def test_generation_set_refused_for_classification():
    with pytest.raises(DataError, match='task = "generate"'):
        catalogue.load("boolq", SimpleNamespace(), 0, task="classify")


@pytest.mark.parametrize("name,classes,n_train,n_test", [
    ("20news", 20, 11293, 7528), ("r8", 8, 5485, 2189), ("r52", 52, 6532, 2568)])
def test_orange_sets_have_official_splits(name, classes, n_train, n_test):
    _need(name)
    train, test = catalogue.load(name, SimpleNamespace(), 0)
    assert isinstance(train, TextDataset) and (len(train.texts), len(test.texts)) == (n_train, n_test)
    assert train.num_labels == test.num_labels == classes
    assert train.label_names == test.label_names
    if name == "20news":
        assert "rec.sport.hockey" in train.label_names
        assert train.label_names[train.labels[0]] == "alt.atheism"


@pytest.mark.parametrize("name,classes,n", [
    ("medmcqa-subject", 20, 9649), ("rotten-tomatoes", 3, 13891), ("tweet-sentiment", 3, 38158)])
def test_seeded_split_sets(name, classes, n):
    _need(name)
    train, test = catalogue.load(name, SimpleNamespace(), 0)
    assert test is None and train.num_labels == classes and len(train.texts) == n
    assert all(isinstance(t, str) and t for t in train.texts[:50])


@pytest.mark.parametrize("name,answers", [
    ("boolq", {"yes", "no"}), ("commonsenseqa", set("ABCDE")), ("piqa", set("AB")),
    ("siqa", set("ABC")), ("openbookqa", set("ABCD")), ("mmlu", set("ABCD")),
    ("pubmedqa", {"yes", "no", "maybe"})])
def test_closed_answer_generation_sets(name, answers):
    _need(name)
    train, _ = catalogue.load(name, SimpleNamespace(), 0, task="generate")
    assert isinstance(train, GenerationDataset)
    assert set(train.responses) <= answers and set(train.group_names) == answers
    assert len(set(train.responses)) >= 2
    assert all(train.group_names[g] == r for g, r in zip(train.groups, train.responses))
    if len(answers) <= 5 and name not in ("boolq", "pubmedqa"):
        assert "Options:\nA." in train.prompts[0]


def test_official_generation_splits():
    _need("boolq")
    train, test = catalogue.load("boolq", SimpleNamespace(), 0, task="generate")
    assert (len(train), len(test)) == (9427, 3270)
    assert not set(train.prompts) & set(test.prompts)
    nq_train, nq_test = catalogue.load("nq-open", SimpleNamespace(), 0, task="generate")
    assert (len(nq_train), len(nq_test)) == (1800, 1769)
    assert all(isinstance(r, str) and not r.startswith("[") for r in nq_train.responses)
    asdiv, none = catalogue.load("asdiv", SimpleNamespace(), 0, task="generate")
    assert none is None and asdiv.responses[0] == "9 apples"
    xsum, _ = catalogue.load("xsum", SimpleNamespace(), 0, task="generate")
    assert len(xsum) == 1000 and xsum.prompts[0].startswith("Summarise")


def test_classification_as_generation():
    ds = TextDataset(["goal scored", "shares fell"], [0, 1], ["sport", "business"])
    gen = catalogue.as_generation(ds)
    assert gen.responses == ["sport", "business"] and "Options: sport, business" in gen.prompts[0]


def test_friends_seasons_are_a_natural_partition():
    _need("friends")
    from fedfm.data.partition import partition

    train, test = catalogue.load("friends", SimpleNamespace(), 0)
    assert test is None and train.num_labels == 6 and len(train.group_names) == 10
    sub = list(range(0, len(train.texts), 50))  # a slice: every 50th line
    parts = partition([train.groups[i] for i in sub], 10, "column", seed=0)
    assert [len({train.groups[sub[j]] for j in p}) for p in parts] == [1] * 10


def test_column_partition_needs_a_client_key():
    from fedfm.config import DataConfig

    with pytest.raises(DataError, match="no client column"):
        catalogue.load("bbc", DataConfig(name="bbc", partition="column"), 0)
    with pytest.raises(DataError, match="client_column"):
        catalogue.load("csv", DataConfig(name="csv", partition="column", path="x.csv"), 0)
