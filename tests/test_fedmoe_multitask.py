"""FedMoE / randomMoE in multi-task federations (issue #16, the paper's setting): stage 1
estimates a non-profiling client's p from the large clients OF ITS TASK (a task without one:
all large clients), per-task metrics and the expert-count summary fields."""

from __future__ import annotations

import json

import pytest
import torch

from fedfm.config import build_config
from tests.test_multitask import _raw

# 7 clients: synthetic 0-2, jsonl 3-4, three-way 5-6. Large (1.0): 0, 1 (synthetic) and 3
# (jsonl); no three-way client is large, so 5 and 6 fall back to all large clients' mean.
BUDGETS = [1.0, 1.0, 0.4, 1.0, 0.4, 0.4, 0.6]
FEDMOE = {"num_experts": 4, "top_k": 2, "profile_rounds": 1, "profile_all_large": True,
          "references": 2}


def _cfg(tmp_path, algorithm="fedmoe", **over):
    # lr 1e-2, not _raw's 2e-2: at 2e-2 FedMoE stage 2 (sub-MoEs of 1-2 experts per block)
    # diverges on some seeds (seed 0: personal mean 0.78 -> 0.31, below chance, recommendation
    # on or off, router frozen or not); 1e-2 and 5e-3 learn steadily on seeds 0-2
    raw = _raw(tmp_path, algorithm, **{"sampling.fraction": 0.3, "train.lr": 1e-2, **over})
    raw["model"]["lora_targets"] = ["query", "value", "intermediate.dense", "output.dense"]
    raw["resources"] = {"unit": "memory", "per_client": BUDGETS}
    opts = dict(FEDMOE) if algorithm == "fedmoe" else {"num_experts": 4, "top_k": 2}
    raw[algorithm] = opts
    return build_config(raw)


def _weighted(reports, ids):
    total = sum(reports[c][1] for c in ids)
    return sum(reports[c][0] * (reports[c][1] / total) for c in ids)


def test_stage1_estimates_p_from_the_clients_of_the_same_task(tmp_path):
    from fedfm.sim.runner import EmbeddedRunner
    from fedfm.sim.world import build_world

    world = build_world(_cfg(tmp_path))
    world.algorithm.init_server(world.model)
    runner = EmbeddedRunner(world)
    row = runner.train_round(0)  # stage 1: every large client trains, sampled or not
    algo = world.algorithm.inner
    assert row["stage"] == 1 and sorted(algo.reports) == [0, 1, 3]
    assert {c: t for c, (_, _, t) in algo.reports.items()} == {
        0: "synthetic", 1: "synthetic", 3: "jsonl"}
    algo.held_of(2, 1)  # stage 2 plans every client
    same = _weighted(algo.reports, [0, 1])
    everyone = _weighted(algo.reports, [0, 1, 3])
    # the test can fail: the tasks route differently, so "same task" and "all" differ
    assert (same - everyone).abs().max() > 1e-3
    torch.testing.assert_close(algo.latest_p[2], same)
    torch.testing.assert_close(algo.latest_p[4], algo.reports[3][0].double())
    for cid in (5, 6):  # no large client holds three-way: the mean over all large clients
        torch.testing.assert_close(algo.latest_p[cid], everyone)
    assert [algo.p_source[c] for c in range(7)] == ["own", "own", "task", "own", "task",
                                                    "all", "all"]
    for cid in range(7):  # rows of p sum to 1 and the plan fits alpha * M_k
        torch.testing.assert_close(algo.latest_p[cid].sum(1), torch.ones(algo.shape[0],
                                                                         dtype=torch.float64))
        assert algo.measured[cid] <= algo.limit(cid, algo.opts.alpha) + 1


@pytest.mark.parametrize("algorithm", ["fedmoe", pytest.param("randommoe",
                                                              marks=pytest.mark.slow)])
def test_multitask_moe_run_reports_tasks_and_experts(tmp_path, algorithm):
    from fedfm.run import run

    s = run(_cfg(tmp_path, algorithm, **{"sampling.enforce_tasks": True,
                                         "sampling.fraction": 0.5}), quiet=True)
    assert set(s["acc_by_task"]) == {"synthetic", "jsonl", "three-way"}
    for accs in s["acc_by_task"].values():
        assert accs["global"] is None  # personalised sub-MoEs: no global model
    # learning (5 short rounds of a tiny random MoE): the macro mean beats the macro chance
    assert s["acc_personal_mean"] > (1 / 4 + 1 / 2 + 1 / 3) / 3 + 0.05, s["acc_by_task"]
    assert s["experts_total"] == 2 * 4  # tiny-bert: 2 blocks x 4 experts
    held = [sum(map(len, c["experts_held"])) for c in s["clients"]]
    assert s["experts_held_mean"] == pytest.approx(sum(held) / 7)
    assert all(len(c["experts_held"]) == 2 for c in s["clients"])
    assert held[0] > held[2]  # a large client holds more experts than a 0.4 one
    rows = [json.loads(x) for x in open(tmp_path / "run" / "metrics.jsonl")]
    assert "acc_by_task" in rows[-1]
    if algorithm == "fedmoe":
        assert [c["p_source"] for c in s["clients"]][5:] == ["all", "all"]


def test_text_scores_f1_by_hand_rouge_from_the_library():
    from fedfm.models.text_metrics import rouge_l, token_f1

    assert token_f1("The cat sat.", "the cat sat") == 1.0
    # "a" is dropped: P = 1/2 (red apple), R = 1/3 (green apple pie)
    assert token_f1("a red apple", "green apple pie") == pytest.approx(2 / 6 / (1 / 2 + 1 / 3))
    assert token_f1("", "") == 1.0 and token_f1("x", "") == 0.0
    # LCS("police killed the gunman", "police kill the gunman") with stemming = 4 of 4 tokens
    assert rouge_l("police kill the gunman", "police killed the gunman") == pytest.approx(1.0)
    assert rouge_l("the gunman police", "police killed the gunman") == pytest.approx(
        2 * (2 / 3) * (2 / 4) / (2 / 3 + 2 / 4))


@pytest.mark.slow
def test_fedmoe_generation_tasks_report_em_f1_rouge_by_task(tmp_path):
    """The generation variant on a tiny MoE causal LM: two prompt/response tasks, FedMoE with
    same-task profiling; per task EM (acc), token F1 and ROUGE-L, global = null, personal set."""
    from fedfm.run import run
    from tests.gen_helpers import colour_records, write_jsonl
    from tests.test_hf_moe_generate import moe_gen_raw

    raw = moe_gen_raw(tmp_path, rounds=4)
    rows = colour_records(160, seed=1)
    other = write_jsonl(tmp_path / "shouted.jsonl",
                        [{"prompt": r["prompt"].upper(), "response": r["response"]} for r in rows])
    raw["data"] = {"num_clients": 4, "partition": "iid", "tasks": [
        {"name": "jsonl", "path": raw["data"]["path"], "num_clients": 2, "id": "colours"},
        {"name": "jsonl", "path": str(other), "num_clients": 2, "id": "shouted"}]}
    raw["sampling"] = {"fraction": 0.5, "enforce_tasks": True}
    raw["resources"] = {"unit": "memory", "per_client": [1.0, 0.5, 0.5, 0.5]}
    raw["fedmoe"] = {"top_k": 2, "profile_all_large": True}
    s = run(build_config(raw), quiet=True)
    for key in ("acc_by_task", "loss_by_task", "f1_by_task", "rougeL_by_task"):
        assert set(s[key]) == {"colours", "shouted"}, key
        for v in s[key].values():
            assert v["global"] is None and 0.0 <= v["personal"], (key, v)
    for v in s["f1_by_task"].values():
        assert v["personal"] <= 1.0
    lines = [json.loads(x) for x in open(f"{raw['out']}/metrics.jsonl")]
    evals = [r for r in lines if r.get("loss_by_task")]
    assert evals[-1]["loss_personal_mean"] < evals[0]["loss_personal_mean"] - 0.3
    assert [c["p_source"] for c in s["clients"]] == ["own", "task", "all", "all"]
    assert s["experts_total"] > 0 and len(s["clients"][0]["experts_held"]) == 2
