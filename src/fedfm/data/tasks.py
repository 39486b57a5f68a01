"""Multi-task federations: `[[data.tasks]]` tables -> one FederatedData whose clients each hold
one task. Task i's clients get the ids after task i-1's; each task keeps its own global test set
(`FederatedData.task_tests`), its label space (`tasks`: name -> num_labels) and its own partition
options (a table's unset options inherit [data]'s)."""

from __future__ import annotations

import dataclasses

from fedfm.core.schema import DataConfig, RunConfig, TaskConfig
from fedfm.data import catalogue
from fedfm.data.federated import ClientData, FederatedData, Split, build_federated

INHERITED = ("partition", "alpha", "shards_per_client", "min_examples", "max_examples",
             "max_test_examples", "client_column", "path", "test_path", "text_column",
             "label_column")


def task_data_config(d: DataConfig, t: TaskConfig) -> DataConfig:
    """[data] with the task's own options (those it sets) and its name / num_clients."""
    over = {k: getattr(t, k) for k in INHERITED if getattr(t, k) is not None}
    return dataclasses.replace(d, name=t.name, num_clients=t.num_clients, tasks=(), **over)


def _build_one(cfg: RunConfig, d: DataConfig, task: str, tokenizer) -> FederatedData:
    """One task's clients and global test set, as a single-task run of that data set."""
    ds, test = catalogue.load(d.name, d, cfg.seed, task)
    kw = dict(alpha=d.alpha, shards_per_client=d.shards_per_client, min_examples=d.min_examples,
              client_test_fraction=d.client_test_fraction,
              global_test_fraction=d.global_test_fraction, max_examples=d.max_examples,
              max_test_examples=d.max_test_examples)
    if task == "generate":
        from fedfm.data.generation import PromptEncoder, build_federated_generation

        encoder = PromptEncoder(getattr(tokenizer, "inner", tokenizer), cfg.model.max_length)
        return build_federated_generation(ds, encoder, d.num_clients, d.partition, cfg.seed,
                                          test=test, **kw)
    return build_federated(ds, tokenizer, d.num_clients, d.partition, cfg.seed, test_ds=test,
                           **kw)


def build_multitask(cfg: RunConfig, tokenizer) -> FederatedData:
    clients: list[ClientData] = []
    tests: dict[str, Split] = {}
    num_labels: dict[str, int] = {}
    label_names: list[str] = []
    for t in cfg.data.tasks:
        fed = _build_one(cfg, task_data_config(cfg.data, t), t.task or cfg.task, tokenizer)
        key, offset = t.id or t.name, len(clients)
        clients += [ClientData(offset + c.client_id, c.train, c.test, task=key)
                    for c in fed.clients]
        tests[key] = fed.global_test
        num_labels[key] = fed.num_labels
        label_names += [f"{key}:{n}" for n in fed.label_names]
    first = next(iter(tests.values()))
    return FederatedData(clients, first, label_names, num_labels, task_tests=tests)
