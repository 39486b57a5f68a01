"""Turn a RunConfig into the things a runtime drives: data, model, algorithm.

Both runtimes (embedded and Flower) call `build_world`, so a client process and the simulator
see the same partition, the same initial model and the same algorithm.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from fedfm.algorithms.base import Algorithm, build_algorithm
from fedfm.config import RunConfig
from fedfm.data.datasets import load_dataset
from fedfm.data.federated import FederatedData, build_federated
from fedfm.models.classifier import Classifier, freeze
from fedfm.models.loading import load_backbone, load_tokenizer


@dataclass
class World:
    cfg: RunConfig
    data: FederatedData
    model: Classifier
    algorithm: Algorithm


def set_threads(cfg: RunConfig) -> int:
    """Explicit torch intra-op threads (default: the machine's cores)."""
    n = cfg.train.threads or os.cpu_count() or 1
    torch.set_num_threads(n)
    return n


def build_data(cfg: RunConfig, tokenizer) -> FederatedData:
    d = cfg.data
    ds = load_dataset(d.name, d.path, d.text_column, d.label_column, cfg.seed)
    return build_federated(
        ds, tokenizer, d.num_clients, d.partition, cfg.seed, alpha=d.alpha,
        shards_per_client=d.shards_per_client, min_examples=d.min_examples,
        client_test_fraction=d.client_test_fraction,
        global_test_fraction=d.global_test_fraction, max_examples=d.max_examples,
    )


def build_world(cfg: RunConfig) -> World:
    """Load the backbone (frozen), tokenise and partition the data, build the algorithm."""
    m = cfg.model
    backbone, folder = load_backbone(m.name, m.path, m.num_layers, cfg.seed, m.dropout)
    freeze(backbone)
    data = build_data(cfg, load_tokenizer(folder, m.max_length))
    model = Classifier(backbone, data.num_labels, m.pooling, cfg.seed)
    algorithm = build_algorithm(cfg, data.num_labels, data.num_clients)
    algorithm.prepare_model(model)
    return World(cfg, data, model, algorithm)
