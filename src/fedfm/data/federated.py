"""Encoded per-client data: train/test splits from each client's own distribution plus a pooled
global test set. Tokenisation (text) or image processing (images) happens once per run, here."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from fedfm.core.errors import DataError
from fedfm.data.datasets import TextDataset
from fedfm.data.partition import partition


@dataclass(frozen=True)
class Split:
    """Encoded examples and labels (N,).

    Text: input_ids (N, T) token ids, attention_mask (N, T).
    Images: input_ids holds pixel_values (N, C, H, W) float, attention_mask is all-ones (N, 1)
    (an image has no padding). Batches, subsets and every partitioner work the same on both.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, idx) -> Split:
        idx = torch.as_tensor(np.asarray(idx, dtype=np.int64))
        return Split(self.input_ids[idx], self.attention_mask[idx], self.labels[idx])

    @property
    def is_image(self) -> bool:
        return is_pixels(self.input_ids)

    def rows(self, i) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, mask) of rows `i`; text is trimmed to its longest real sequence."""
        mask = self.attention_mask[i]
        if self.is_image:
            return self.input_ids[i], mask  # (B, C, H, W), (B, 1)
        t = int(mask.sum(1).max()) if len(mask) else 1
        return self.input_ids[i, :t], mask[:, :t]  # (B, t), (B, t)

    def batches(self, batch_size: int, generator: torch.Generator | None = None):
        """Yield (inputs, mask, labels) batches, shuffled when a generator is given; text
        batches are trimmed to their longest real sequence."""
        n = len(self)
        order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
        for s in range(0, n, batch_size):
            i = order[s : s + batch_size]
            yield *self.rows(i), self.labels[i]


def is_pixels(x: torch.Tensor) -> bool:
    """Whether a batch holds images (pixel_values (B, C, H, W)) rather than token ids."""
    return x.dim() == 4 and x.is_floating_point()


@dataclass(frozen=True)
class ClientData:
    client_id: int
    train: Split
    test: Split
    task: str = "main"

    def label_counts(self, num_labels: int) -> list[int]:
        return torch.bincount(self.train.labels, minlength=num_labels).tolist()


@dataclass(frozen=True)
class FederatedData:
    clients: list[ClientData]
    global_test: Split
    label_names: list[str]
    tasks: dict[str, int] = field(default_factory=dict)  # task -> num_labels
    # multi-task federations ([[data.tasks]]): task -> that task's global test set
    task_tests: dict[str, Split] = field(default_factory=dict)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    @property
    def num_clients(self) -> int:
        return len(self.clients)


def _stratified_holdout(labels: np.ndarray, fraction: float, rng) -> tuple[np.ndarray, np.ndarray]:
    """Hold out `fraction` of every class; returns (kept, held_out) sorted index arrays."""
    held = []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        held += idx[: max(1, int(round(fraction * len(idx))))].tolist()
    held_arr = np.array(sorted(held))
    kept = np.setdiff1d(np.arange(len(labels)), held_arr)
    return kept, held_arr


def build_federated(ds: TextDataset, tokenizer, num_clients: int, scheme: str, seed: int,
                    alpha: float = 0.5, shards_per_client: int = 2, min_examples: int = 4,
                    client_test_fraction: float = 0.2, global_test_fraction: float = 0.2,
                    max_examples: int | None = None, test_ds: TextDataset | None = None,
                    max_test_examples: int | None = None) -> FederatedData:
    """Split `ds` into a global test set and `num_clients` clients (each with train/test).

    Without `test_ds`, a stratified `global_test_fraction` of `ds` is the global test set. With
    an official test split `test_ds` (same label space), the global test set is drawn from it:
    all of it, or a stratified sample of `max_test_examples` (default when `max_examples` is
    set: round(global_test_fraction · max_examples)); clients share out `ds` alone.
    """
    rng = np.random.default_rng(seed)
    labels = np.asarray(ds.labels)
    pool = np.arange(len(labels))
    if max_examples is not None and max_examples < len(labels):
        pool = np.sort(rng.choice(len(labels), size=max_examples, replace=False))
    if test_ds is None:
        kept, held = _stratified_holdout(labels[pool], global_test_fraction, rng)
        kept, held = pool[kept], pool[held]
        texts, all_labels = _items(ds), list(ds.labels)
    else:
        kept = pool
        held = len(labels) + _test_sample(test_ds, rng, max_test_examples, max_examples,
                                          global_test_fraction)
        texts = list(_items(ds)) + list(_items(test_ds))
        all_labels = list(ds.labels) + list(test_ds.labels)
    used = np.sort(np.concatenate([kept, held]))
    ids, mask = tokenizer([texts[i] for i in used])  # encode only what the run uses
    full = Split(ids, mask, torch.tensor([all_labels[i] for i in used], dtype=torch.long))
    at = np.full(len(texts), -1, dtype=np.int64)
    at[used] = np.arange(len(used))
    keys = labels if scheme != "column" else np.asarray(_groups(ds))
    parts = partition(keys[kept], num_clients, scheme, seed, alpha=alpha,
                      shards_per_client=shards_per_client, min_size=min_examples)
    clients = client_splits(full, kept, parts, rng, client_test_fraction, lambda i: at[i])
    return FederatedData(clients, full.subset(at[held]), list(ds.label_names),
                         {"main": ds.num_labels})


def client_splits(full, kept: np.ndarray, parts, rng, client_test_fraction: float,
                  rows) -> list[ClientData]:
    """Each client's shuffled share of `kept` (dataset indices), cut into its own train and test
    splits of `full`; `rows` maps dataset indices to rows of `full`. Shared by the classification
    and generation builders (the same rng draws in the same order)."""
    clients = []
    for cid, part in enumerate(parts):
        idx = kept[part][rng.permutation(len(part))]
        n_test = int(round(client_test_fraction * len(idx)))
        if client_test_fraction > 0:
            n_test = min(max(1, n_test), len(idx) - 1)
        if len(idx) - n_test < 1:
            raise DataError(f"client {cid} has no training example; lower data.num_clients.")
        clients.append(ClientData(cid, full.subset(rows(np.sort(idx[n_test:]))),
                                  full.subset(rows(np.sort(idx[:n_test])))))
    return clients


def _items(ds):
    """What the encoder reads: texts (tokenizer) or images (the model's image processor)."""
    return ds.images if hasattr(ds, "images") else ds.texts


def _test_sample(test_ds: TextDataset, rng, max_test: int | None, max_examples: int | None,
                 fraction: float) -> np.ndarray:
    """Indices into `test_ds`: all, or a stratified sample of the capped size."""
    n = len(test_ds.labels)
    cap = max_test if max_test is not None else (
        int(round(fraction * max_examples)) if max_examples is not None else None)
    if cap is None or cap >= n:
        return np.arange(n)
    _, held = _stratified_holdout(np.asarray(test_ds.labels), cap / n, rng)
    return held


def _groups(ds: TextDataset) -> list[int]:
    if ds.groups is None:
        raise DataError("data.partition = 'column' needs data.client_column = the column whose "
                        "values name the clients (for data.name = 'hf', 'csv' or 'jsonl').")
    return ds.groups
