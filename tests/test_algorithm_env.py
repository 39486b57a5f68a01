"""Every registered algorithm is built from its options and flat handles alone (no RunConfig)
and runs one round on a tiny world: tasks cross the wire, every upload matches the algorithm's
declared `upload_schema` and passes validation, the server aggregates, every evaluation reply
carries a typed `EvalResult`. The world's model and data come from the usual builders; the
algorithm never sees a config (its factory's signature is `(options, env)`).
"""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch

from fedfm.algorithms import registry
from fedfm.algorithms.base import ClientContext, ClientMemory
from fedfm.algorithms.env import Env, Finetune
from fedfm.config import TrainConfig, build_config
from fedfm.core.resources import ResourcesConfig
from fedfm.models.classifier import Classifier, freeze
from fedfm.models.loading import load_model
from fedfm.sim.world import build_data
from fedfm.transport.messages import EvalResult, decode, encode
from fedfm.transport.validation import validate_update
from tests.conftest import tiny_raw

MOE = ResourcesConfig(unit="memory", tiers={"small": 0.5, "large": 1.0},
                      proportions={"small": 0.5, "large": 0.5})
ENV = {"fedmoe": {"resources": MOE}, "randommoe": {"resources": MOE}}
OPTIONS = {"fedmoe": {"num_experts": 4, "top_k": 2}, "randommoe": {"num_experts": 4, "top_k": 2}}
_DATA: dict[str, object] = {}


def tiny_world(algo: str):
    """(fresh frozen model, federated data) as `fedfm run` would build them for `algo`."""
    cfg = build_config(tiny_raw(algorithm=algo, **{"model.lora_rank": 4}))
    backbone, tokenizer = load_model(cfg)
    key = type(tokenizer).__name__
    if key not in _DATA:
        _DATA[key] = build_data(cfg, tokenizer)
    data = _DATA[key]
    freeze(backbone)
    return Classifier(backbone, data.num_labels, "auto", 0), data


def test_no_algorithm_module_reads_the_run_config():
    """The registered modules (and the helpers they share) never see a RunConfig: only the
    builder (env.from_config) and the registry read it."""
    import fedfm.algorithms as pkg

    folder = Path(pkg.__file__).parent
    shared = ["fedms", "lowrank", "moe_backend", "moe_validate", "training", "adapter", "server"]
    for mod in registry.MODULES + shared:
        path = folder / f"{mod}.py"
        if not path.exists():
            continue
        src = path.read_text()
        assert "RunConfig" not in src and "self.cfg" not in src and "alg.cfg" not in src, mod


def test_factories_take_options_and_env_only():
    for name in registry.names():
        params = list(inspect.signature(registry.get(name).factory).parameters)
        assert len(params) == 2, (name, params)


@pytest.mark.parametrize("algo", registry.names())
def test_built_without_a_config_runs_one_round(algo):
    model, data = tiny_world(algo)
    entry = registry.get(algo)
    opts = entry.options(**OPTIONS.get(algo, {})) if entry.options else None
    env = Env(num_labels=data.num_labels, num_clients=data.num_clients,
              train=TrainConfig(batch_size=16, lr=5e-3, max_steps=2),
              finetune=Finetune(rank=4), **ENV.get(algo, {}))
    algorithm = entry.build(opts, env)
    algorithm.prepare_model(model)
    algorithm.init_server(model)
    clients = list(range(data.num_clients))
    updates = []
    for task in algorithm.configure_train(0, clients):
        task = decode(encode(task))  # what a client receives
        up = algorithm.client_update(task, model, data.clients[task.client_id], ClientMemory(),
                                     ClientContext(task.client_id, 0, task.client_id))
        assert set(up.tensors) == set(algorithm.upload_schema(task)), algo
        verdict = validate_update(encode(up), task, expected=algorithm.upload_schema(task))
        assert verdict.ok, (algo, verdict.rejection)
        updates.append(verdict.update)
    before = {k: v.clone() for k, v in algorithm.global_tensors().items()}
    algorithm.aggregate_train(0, updates)
    after = algorithm.global_tensors()
    if any(u.tensors for u in updates):  # something travelled: the server state moved
        assert any(k not in before or not torch.equal(before[k], v) for k, v in after.items())
    for task in algorithm.configure_evaluate(0, clients[:2]):
        res = algorithm.client_evaluate(decode(encode(task)), model, data.clients[task.client_id],
                                        ClientMemory(), ClientContext(7, 0, task.client_id))
        r = decode(encode(res)).read(EvalResult)
        assert 0 <= r.correct <= r.total == len(data.clients[task.client_id].test)
