"""Turn a RunConfig into the things a runtime drives: data, model, algorithm.

Both runtimes (embedded and Flower) call `build_world`, so a client process and the simulator
see the same partition, the same initial model and the same algorithm.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from fedfm.algorithms.base import Algorithm, build_algorithm
from fedfm.core.errors import ConfigError
from fedfm.core.schema import RunConfig
from fedfm.data import catalogue
from fedfm.data.federated import FederatedData, build_federated
from fedfm.data.images import check_modality
from fedfm.models.classifier import Classifier, freeze
from fedfm.models.loading import load_model


def current_device() -> torch.device:
    from fedfm.core.device import current

    return current().device


@dataclass
class World:
    cfg: RunConfig
    data: FederatedData
    model: Classifier
    algorithm: Algorithm


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, e.g. a container's cpuset)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


def set_threads(cfg: RunConfig) -> int:
    """Explicit torch threads: intra-op = `train.threads` or the available cores; inter-op = 1.

    fedfm runs one op at a time (no torch.jit.fork / parallel graph branches), so inter-op
    threads would only compete with the intra-op pool for the same cores. The inter-op pool can
    only be sized before its first use; later calls keep what is there (see `thread_settings`).
    """
    n = cfg.train.threads or available_cores()
    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set or already started in this process
        pass
    return n


def thread_settings() -> dict[str, int]:
    """What torch actually uses (logged in summary.json)."""
    return {"threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads(),
            "cores": available_cores()}


def build_data(cfg: RunConfig, tokenizer) -> FederatedData:
    d = cfg.data
    if d.tasks:
        from fedfm.data.tasks import build_multitask

        return build_multitask(cfg, tokenizer)
    ds, test = catalogue.load(d.name, d, cfg.seed)
    check_modality(ds, tokenizer, cfg.model.name, d.name)
    return build_federated(
        ds, tokenizer, d.num_clients, d.partition, cfg.seed, alpha=d.alpha,
        shards_per_client=d.shards_per_client, min_examples=d.min_examples,
        client_test_fraction=d.client_test_fraction,
        global_test_fraction=d.global_test_fraction, max_examples=d.max_examples,
        test_ds=test, max_test_examples=d.max_test_examples,
    )


def build_world(cfg: RunConfig) -> World:
    """Load the backbone (frozen), tokenise and partition the data, build the algorithm."""
    backbone, tokenizer = load_model(cfg)
    if getattr(cfg, "task", "classify") == "generate":  # prompt/response records (fedfm.algorithms.tasks)
        from fedfm.algorithms import tasks

        data = tasks.build_generate_data(cfg, tokenizer)
        return assemble_world(cfg, backbone, data, tokenizer)
    data = build_data(cfg, tokenizer)
    return assemble_world(cfg, backbone, data)


def assemble_world(cfg: RunConfig, backbone, data: FederatedData, tokenizer=None) -> World:
    """Backbone (frozen here) + tokenised data -> classifier + prepared algorithm. Cheap and
    deterministic from the seed, so a cached backbone/data (fedfm.flower.cache) gives the same
    world as `build_world`."""
    check_position_limit(cfg, backbone)
    freeze(backbone)
    if getattr(cfg, "task", "classify") == "generate":  # LM head, no classification head
        from fedfm.algorithms import tasks

        model = tasks.build_generate_model(cfg, backbone, tokenizer)
    else:
        model = Classifier(backbone, data.num_labels, cfg.model.pooling, cfg.seed)
    algorithm = build_algorithm(cfg, data.num_labels, data.num_clients)
    if data.task_tests:  # multi-task federation: one head per task (fedfm.algorithms.multitask)
        from fedfm.algorithms.multitask import MultiTask
        from fedfm.models.multihead import add_task_heads

        if getattr(cfg, "task", "classify") == "classify":
            add_task_heads(model, data.tasks, cfg.seed)
        algorithm = MultiTask(algorithm, [c.task for c in data.clients])
    algorithm.prepare_model(model)
    model.to(current_device())  # LoRA/heads created on the CPU join the backbone's device
    return World(cfg, data, model, algorithm)


def check_position_limit(cfg: RunConfig, backbone) -> None:
    """model.max_length must fit the model's position embeddings (else an index error later)."""
    limit = getattr(getattr(backbone, "spec", None), "max_position", None)
    if limit is None:
        limit = getattr(getattr(backbone, "config", None), "max_position_embeddings", None)
    if isinstance(limit, int) and cfg.model.max_length > limit:
        raise ConfigError(f"model.max_length = {cfg.model.max_length} exceeds the model's "
                          f"position limit of {limit} tokens (max_position_embeddings); set "
                          f"model.max_length <= {limit}.")
