"""Scores of a generated answer against its reference, per example (means are reported):

- exact match: SQuAD normalisation (lower-case, no punctuation, no articles a/an/the, single
  spaces), then equality (causal_lm.exact_match);
- token F1 (SQuAD v1.1's official definition): on the normalised whitespace tokens,
      P = |pred ∩ ref| / |pred|,  R = |pred ∩ ref| / |ref|,  F1 = 2PR / (P + R)
  (∩ = multiset intersection; both empty: 1, one empty: 0);
- ROUGE-L F-measure (Lin 2004: longest common subsequence) from Google's `rouge-score` package
  (PyPI rouge-score, the reference implementation), Porter stemming on: `pip install
  fedfm[generate]`. Never hand-written here.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from functools import lru_cache

from fedfm.core.errors import ConfigError

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize_answer(s: str) -> str:
    """SQuAD's normalisation: lower-case, strip punctuation and articles, collapse spaces."""
    s = _ARTICLES.sub(" ", s.lower().translate(_PUNCT))
    return " ".join(s.split())

ROUGE_HINT = ("task = \"generate\" reports ROUGE-L through the rouge-score package: "
              "pip install \"fedfm[generate]\" (or pip install rouge-score)")


def token_f1(prediction: str, reference: str) -> float:
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    p, r = common / len(pred), common / len(ref)
    return 2 * p * r / (p + r)


@lru_cache(maxsize=1)
def _scorer():
    try:
        from rouge_score import rouge_scorer
    except ImportError as e:  # checked at config time (tasks.check); kept for library users
        raise ConfigError(ROUGE_HINT + ".") from e
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(prediction: str, reference: str) -> float:
    return float(_scorer().score(reference, prediction)["rougeL"].fmeasure)


def check_available() -> None:
    """Exit-2 refusal (ConfigError) when rouge-score is not installed (found, not imported:
    it imports nltk, which is slow)."""
    import importlib.util

    if importlib.util.find_spec("rouge_score") is None:
        raise ConfigError(ROUGE_HINT + ".")
