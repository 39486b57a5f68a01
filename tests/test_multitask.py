"""Multi-task federations: one head per task, per-task aggregation, enforced sampling, acc_by_task,
refusals; partitioners' seeds for the natural (column) partition."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fedfm.algorithms.aggregation import masked_mean
from fedfm.config import build_config
from fedfm.core.errors import ConfigError
from fedfm.core.seeds import sample_by_task
from tests.conftest import tiny_raw

WORDS = {"a": ["goal", "match", "team"], "b": ["market", "shares", "profit"],
         "c": ["election", "minister", "vote"]}


def _write_tasks(tmp_path) -> tuple[str, str]:
    """A 2-class jsonl task and a 3-class csv task, keyword-separable."""
    rng = np.random.default_rng(0)
    jl = tmp_path / "t1.jsonl"
    jl.write_text("\n".join(json.dumps({"text": " ".join(rng.choice(WORDS[y], 3)) + " the of",
                                        "label": y}) for y in ["a", "b"] * 60))
    cs = tmp_path / "t2.csv"
    rows = ["text,label"] + [" ".join(rng.choice(WORDS[y], 3)) + f" x y,{y}"
                             for y in ["a", "b", "c"] * 40]
    cs.write_text("\n".join(rows))
    return str(jl), str(cs)


def _raw(tmp_path, algorithm="fedavg", **over):
    jl, cs = _write_tasks(tmp_path)
    # lr / local_epochs are defaults: a caller's "train.lr" override wins
    raw = tiny_raw(algorithm=algorithm, rounds=5, out=str(tmp_path / "run"),
                   **{"train.lr": 2e-2, "train.local_epochs": 2, **over})
    raw["data"] = {"num_clients": 7, "partition": "iid", "tasks": [
        {"name": "synthetic", "num_clients": 3},
        {"name": "jsonl", "path": jl, "num_clients": 2},
        {"name": "csv", "id": "three-way", "path": cs, "num_clients": 2, "partition": "dirichlet",
         "alpha": 1.0}]}
    return raw


@pytest.mark.parametrize("algorithm", [
    "fedavg", "fedper", pytest.param("fedprox", marks=pytest.mark.slow),
    pytest.param("local", marks=pytest.mark.slow)])
def test_three_tasks_train_with_own_heads_and_report_acc_by_task(tmp_path, algorithm):
    from fedfm.run import run

    cfg = build_config(_raw(tmp_path, algorithm, **{"sampling.fraction": 0.5,
                                                    "sampling.enforce_tasks": True}))
    s = run(cfg, quiet=True)
    by_task = s["acc_by_task"]
    assert set(by_task) == {"synthetic", "jsonl", "three-way"}
    assert [c["task"] for c in s["clients"]] == ["synthetic"] * 3 + ["jsonl"] * 2 + ["three-way"] * 2
    for t, accs in by_task.items():
        assert accs["personal"] > 0.7, (t, accs)  # chance: 0.25 / 0.5 / 0.33
        assert (accs["global"] is None) == (algorithm in ("fedper", "local"))
    rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert "acc_by_task" in rows[-1]
    pe = [v["personal"] for v in by_task.values()]
    assert s["acc_personal_mean"] == pytest.approx(sum(pe) / 3)


def test_world_has_one_head_per_task_and_clients_get_only_their_head(tmp_path):
    from fedfm.sim.world import build_world

    world = build_world(build_config(_raw(tmp_path)))
    heads = world.model.head.heads
    assert {t: heads[t].out_features for t in heads} == {"synthetic": 4, "jsonl": 2,
                                                        "three-way": 3}
    world.algorithm.init_server(world.model)
    tasks = world.algorithm.configure_train(0, list(range(7)))
    for task in tasks:
        own = world.data.clients[task.client_id].task
        head_keys = {k.split(".")[2] for k in task.tensors if k.startswith("head.")}
        assert head_keys == {own}
        assert any("lora" in k for k in task.tensors)


def test_heads_average_over_their_own_clients_only():
    a = {"body": torch.tensor([1.0]), "head.heads.x.w": torch.tensor([2.0])}
    b = {"body": torch.tensor([3.0]), "head.heads.y.w": torch.tensor([10.0])}
    c = {"body": torch.tensor([5.0]), "head.heads.x.w": torch.tensor([4.0])}
    out = masked_mean([a, b, c], [1, 1, 2])
    assert out["body"].item() == pytest.approx((1 + 3 + 10) / 4)
    assert out["head.heads.x.w"].item() == pytest.approx((2 + 8) / 3)
    assert out["head.heads.y.w"].item() == pytest.approx(10.0)


def test_enforced_sampling_covers_every_task_and_is_seeded():
    tasks = ["a"] * 6 + ["b"] * 3 + ["c"] * 1
    for rnd in range(5):
        picked = sample_by_task(tasks, 0.2, seed=0, rnd=rnd)
        assert {tasks[c] for c in picked} == {"a", "b", "c"}
        assert picked == sample_by_task(tasks, 0.2, seed=0, rnd=rnd)
    assert any(sample_by_task(tasks, 0.5, 0, r) != sample_by_task(tasks, 0.5, 1, r)
               for r in range(5))


@pytest.mark.parametrize("over,match", [
    ({"algorithm": "fedms"}, "Algorithms that can: fedavg, fedmoe, fedper, fedprox, local, randommoe"),
    ({"data.num_clients": 10}, "data.num_clients = 7"),
    ({"aggregation.method": "median"}, "robust aggregation"),
])
def test_refusals(tmp_path, over, match):
    raw = _raw(tmp_path)
    for k, v in over.items():
        node = raw
        *path, last = k.split(".")
        for p in path:
            node = node.setdefault(p, {})
        node[last] = v
    with pytest.raises(ConfigError, match=match):
        build_config(raw)


def test_enforce_tasks_without_tasks_is_refused():
    with pytest.raises(ConfigError, match="enforce_tasks"):
        build_config(tiny_raw(**{"sampling.enforce_tasks": True}))


def test_generate_task_table_is_refused_until_available(tmp_path):
    raw = _raw(tmp_path)
    raw["data"]["tasks"][0]["task"] = "generate"
    with pytest.raises(ConfigError, match="generate"):
        build_config(raw)


def test_column_partition_is_deterministic_and_natural():
    from fedfm.data.partition import partition

    keys = np.array([2, 0, 1, 2, 0, 1, 1, 2, 0, 0, 1, 2])
    a = partition(keys, 3, "column", seed=0)
    b = partition(keys, 3, "column", seed=123)
    assert all((x == y).all() for x, y in zip(a, b))  # no randomness in a natural partition
    assert [sorted(set(keys[p])) for p in a] == [[0], [1], [2]]
    assert sorted(np.concatenate(a).tolist()) == list(range(12))


@pytest.mark.slow
def test_generation_tasks_federate_and_report_loss_by_task(tmp_path):
    """Two prompt/response tasks on a tiny LM: per-task EM and response loss, macro means."""
    from fedfm.run import run
    from tests.gen_helpers import colour_records, write_jsonl
    from tests.test_generate import gen_raw

    raw = gen_raw(tmp_path, rounds=4)
    rows = colour_records(160, seed=1)
    other = write_jsonl(tmp_path / "shouted.jsonl",
                        [{"q": r["prompt"].upper(), "a": r["response"]} for r in rows])
    raw["data"] = {"num_clients": 4, "partition": "iid", "tasks": [
        {"name": "jsonl", "path": raw["data"]["path"], "num_clients": 2, "id": "colours"},
        {"name": "jsonl", "path": str(other), "num_clients": 2, "id": "shouted"}],
        "prompt_column": "prompt", "response_column": "response"}
    raw["data"]["tasks"][1].update(path=str(other))
    with pytest.raises(ConfigError, match="prompt_column|task"):
        raw_bad = json.loads(json.dumps(raw))
        raw_bad["data"]["tasks"][0]["task"] = "classify"
        build_config(raw_bad)
    # per-task columns are not options of a task table: give the second file the same keys
    write_jsonl(other, [{"prompt": r["prompt"].upper(), "response": r["response"]} for r in rows])
    s = run(build_config(raw), quiet=True)
    assert set(s["acc_by_task"]) == set(s["loss_by_task"]) == {"colours", "shouted"}
    rows = [json.loads(line) for line in open(tmp_path / "run-fedavg" / "metrics.jsonl")]
    for t in ("colours", "shouted"):  # each task's response loss falls round over round
        first, last = rows[0]["loss_by_task"][t], rows[-1]["loss_by_task"][t]
        assert last["global"] < first["global"] - 0.3 and last["personal"] < first["personal"]
        assert 0.0 <= s["acc_by_task"][t]["global"] <= 1.0
    assert s["loss_global"] == pytest.approx(
        sum(v["global"] for v in s["loss_by_task"].values()) / 2)
    assert {c["task"] for c in s["clients"]} == {"colours", "shouted"}
