"""Partitioners, named by scheme. Each maps labels (N,) to one index array per client, seeded.

- iid: a random permutation cut into equal parts.
- dirichlet: label skew. For class c, proportions q_c ~ Dir(alpha · 1_K) over the K clients;
  class c's examples are dealt out by q_c. Small alpha -> each client sees few classes.
- shards: sort by label, cut into K·s shards, give each client s random shards (≈ s classes).
- quantity: sizes ~ Dir(alpha · 1_K) (label distribution iid), each client >= min_size.
- column: a natural federation (LEAF-style): `labels` are the values of data.client_column and
  client k holds every example of the k-th value (sorted); needs num_clients = #values.
Every client gets at least `min_size` examples (Dirichlet draws are repeated until it holds).
"""

from __future__ import annotations

import numpy as np

from fedfm.core.errors import DataError, choices

PARTITIONS = {
    "iid": "uniform random split",
    "dirichlet": "label skew, class proportions ~ Dir(alpha) (smaller alpha = more skew)",
    "shards": "each client gets shards_per_client label-sorted shards (~that many classes)",
    "quantity": "client sizes ~ Dir(alpha), labels iid",
    "column": "one client per value of data.client_column (natural partition)",
}


def _iid(labels, k, rng, **_):
    return np.array_split(rng.permutation(len(labels)), k)


def _dirichlet(labels, k, rng, alpha, min_size, **_):
    classes = np.unique(labels)
    for _attempt in range(1000):
        parts: list[list[int]] = [[] for _ in range(k)]
        for c in classes:
            idx = rng.permutation(np.flatnonzero(labels == c))
            q = rng.dirichlet(alpha * np.ones(k))
            cuts = (np.cumsum(q) * len(idx)).astype(int)[:-1]
            for client, chunk in enumerate(np.split(idx, cuts)):
                parts[client] += chunk.tolist()
        if min(len(p) for p in parts) >= min_size:
            return [np.array(sorted(p)) for p in parts]
    raise DataError(
        f"Dirichlet(alpha={alpha}) could not give all {k} clients >= {min_size} examples in "
        "1000 draws; use fewer clients, a larger alpha, or a smaller data.min_examples."
    )


def _shards(labels, k, rng, shards_per_client, **_):
    n_shards = k * shards_per_client
    if n_shards > len(labels):
        raise DataError(f"{n_shards} shards need >= {n_shards} examples, have {len(labels)}.")
    order = np.argsort(labels, kind="stable")
    shards = np.array_split(order, n_shards)
    perm = rng.permutation(n_shards)
    return [np.sort(np.concatenate([shards[s] for s in perm[i::k]])) for i in range(k)]


def _quantity(labels, k, rng, alpha, min_size, **_):
    n = len(labels)
    q = rng.dirichlet(alpha * np.ones(k))
    sizes = np.maximum(min_size, np.floor(q * (n - k * min_size)).astype(int) + min_size)
    sizes[np.argmax(sizes)] -= sizes.sum() - n
    cuts = np.cumsum(sizes)[:-1]
    return [np.sort(p) for p in np.split(rng.permutation(n), cuts)]


def _column(keys, k, rng, min_size, **_):
    values = np.unique(keys)
    if len(values) != k:
        raise DataError(f"data.partition = 'column': data.client_column has {len(values)} "
                        f"distinct values, so set data.num_clients = {len(values)} (got {k}).")
    parts = [np.flatnonzero(keys == v) for v in values]
    small = [int(v) for v, p in zip(values, parts) if len(p) < min_size]
    if small:
        raise DataError(f"data.partition = 'column': {len(small)} client(s) hold fewer than "
                        f"data.min_examples = {min_size} training examples; lower it.")
    return parts


_SCHEMES = {"column": _column, "iid": _iid, "dirichlet": _dirichlet, "shards": _shards, "quantity": _quantity}


def partition(labels, num_clients: int, scheme: str, seed: int, alpha: float = 0.5,
              shards_per_client: int = 2, min_size: int = 4) -> list[np.ndarray]:
    """Split example indices over `num_clients` clients; disjoint, covering, deterministic."""
    labels = np.asarray(labels)
    if scheme not in _SCHEMES:
        raise DataError(f"Unknown partition '{scheme}'. Valid partitions: {choices(PARTITIONS)}.")
    if num_clients * min_size > len(labels):
        raise DataError(
            f"{num_clients} clients x {min_size} examples each need {num_clients * min_size} "
            f"examples, but only {len(labels)} are available for training clients; lower "
            "data.num_clients or data.min_examples."
        )
    rng = np.random.default_rng(seed)
    return _SCHEMES[scheme](labels, num_clients, rng, alpha=alpha,
                            shards_per_client=shards_per_client, min_size=min_size)
