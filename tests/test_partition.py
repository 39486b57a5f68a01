import numpy as np
import pytest

from fedfm.core.errors import DataError
from fedfm.data.partition import partition

LABELS = np.repeat(np.arange(5), 200)


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "shards", "quantity"])
def test_disjoint_covering_seeded(scheme):
    a = partition(LABELS, 10, scheme, seed=1, alpha=0.5)
    b = partition(LABELS, 10, scheme, seed=1, alpha=0.5)
    c = partition(LABELS, 10, scheme, seed=2, alpha=0.5)
    flat = np.concatenate(a)
    assert len(flat) == len(LABELS) and len(np.unique(flat)) == len(LABELS)
    assert all((x == y).all() for x, y in zip(a, b))
    assert any(len(x) != len(y) or (x != y).any() for x, y in zip(a, c))


def _mean_classes(parts, share=0.05):
    counts = [np.bincount(LABELS[p], minlength=5) / len(p) for p in parts]
    return np.mean([(c > share).sum() for c in counts])


def test_label_skew_is_real():
    skewed = partition(LABELS, 10, "dirichlet", seed=0, alpha=0.1)
    iid = partition(LABELS, 10, "iid", seed=0)
    shards = partition(LABELS, 10, "shards", seed=0, shards_per_client=2)
    assert _mean_classes(iid) == 5
    assert _mean_classes(skewed) < 3.0
    assert _mean_classes(shards) <= 2.5


def test_quantity_skew_sizes_vary():
    parts = partition(LABELS, 10, "quantity", seed=0, alpha=0.5)
    sizes = [len(p) for p in parts]
    assert max(sizes) > 3 * min(sizes) and min(sizes) >= 4


def test_impossible_requests():
    with pytest.raises(DataError, match="Valid partitions"):
        partition(LABELS, 10, "zipf", seed=0)
    with pytest.raises(DataError, match="clients"):
        partition(LABELS[:20], 10, "iid", seed=0)
