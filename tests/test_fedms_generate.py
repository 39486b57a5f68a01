"""FedMS with task = "generate" (fedfm.algorithms.fedms_lm, fedfm.models.mofm_lm): the per-token
mixture at the gate's extremes, greedy mixture decoding (KV cache or not) against each expert's
own `generate`, response-only scoring, learning in both stages, and what stage 2 uploads."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from fedfm.algorithms.base import ClientContext, ClientMemory
from fedfm.data.generation import IGNORE, PromptEncoder
from fedfm.data.records import from_pairs
from fedfm.models.classifier import get_tensors, set_tensors
from fedfm.models.finetune import configure_finetune
from fedfm.models.lora import set_active_blocks
from fedfm.models.mofm import GateOutput
from fedfm.models.mofm_lm import LMStep, LMTail, mixture_generate, target_log_probs, token_mixture
from tests.test_generate import PAIRS, causal_lm, gen_raw


class FixedGate(torch.nn.Module):
    """g = (w, 1 - w) for every position."""

    def __init__(self, w: float):
        super().__init__()
        self.w = w

    def forward(self, h):
        g = torch.tensor([self.w, 1.0 - self.w]).expand(h.shape[0], 2)
        return GateOutput(g.clamp_min(1e-30).log(), g)


def two_experts(family):
    """A tiny causal LM with LoRA everywhere and two random LoRA sets (B != 0)."""
    model = causal_lm(family)
    configure_finetune(model, "lora", ("all-linear",), 4, 8.0, 0)
    gen = torch.Generator().manual_seed(1)

    def draw():
        return {k: torch.randn(v.shape, generator=gen) * 0.5 if k.endswith("lora_B") else v
                for k, v in get_tensors(model).items()}
    return model, draw(), draw()


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_mixture_decoding_is_each_expert_at_the_gate_extremes(family):
    model, glob, local = two_experts(family)
    split = PromptEncoder(model.tokenizer, 32)(from_pairs(PAIRS))
    step = LMStep(model.backbone, model.lm_head)
    outs = {}
    for w, ref in ((1.0, glob), (0.0, local)):
        set_tensors(model, ref)
        set_active_blocks(model.backbone, None)
        want = model.generate_ids(split.prompt_ids, split.prompt_mask, 5).tolist()
        for cache in (True, False):
            got = mixture_generate(step, [(glob, None), (local, None)], FixedGate(w), 0,
                                   split.prompt_ids, split.prompt_mask, 5,
                                   model.tokenizer.eos_token_id, 0, use_cache=cache)
            assert got.tolist() == want, (w, cache)
        outs[w] = want
    assert outs[1.0] != outs[0.0]  # the two experts really differ: the check can fail


def test_token_mixture_at_the_extremes_and_response_only_scoring():
    model, glob, local = two_experts("llama")
    split = PromptEncoder(model.tokenizer, 32)(from_pairs(PAIRS))
    ids, mask, labels = next(split.batches(8))
    tail = LMTail(model.backbone, model.lm_head)
    h0 = model.backbone.prefix(ids, mask, 0)  # embeddings: the whole model runs from the prefix
    lps = []
    for tensors in (glob, local):
        set_tensors(model, tensors)
        _, z, tgt = tail(h0, mask, 0, labels)
        assert tgt.tolist() == labels[:, 1:][labels[:, 1:] != IGNORE].tolist()  # response only
        lps.append(target_log_probs(z, tgt))
        # LMTail's mean target NLL is the CausalLM's response-only loss (prompt unscored)
        assert torch.allclose(-lps[-1].mean(), model.response_loss(ids, mask, labels), atol=1e-5)
    n = len(lps[0])
    for w, want in ((1.0, lps[0]), (0.0, lps[1])):
        g = FixedGate(w)(torch.zeros(n, 4))
        assert torch.allclose(token_mixture(g.log_weights, *lps), want, atol=1e-6)
    half = FixedGate(0.5)(torch.zeros(n, 4))
    mid = token_mixture(half.log_weights, *lps).exp()
    assert torch.allclose(mid, 0.5 * (lps[0].exp() + lps[1].exp()), atol=1e-6)


# ---------------------------------------------------------------- the algorithm, one client


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from fedfm.config import build_config
    from fedfm.sim.world import build_world

    raw = gen_raw(tmp_path_factory.mktemp("fmsgen"), "fedms", rounds=2)
    raw["fedms"] = {"k0": 2, "stage1_rounds": 1}
    raw["train"].update(lr=5e-3, local_epochs=10)
    return build_world(build_config(raw))


def train_nll(algo, data, memory, tensors, blocks):
    """Mean response-token NLL of one expert on the client's train split."""
    src = algo._source(data, "train", 0, memory)
    lp, _ = algo._expert_view(src, {**algo.init, **tensors}, blocks)
    keep = data.train.labels[:, 1:lp.shape[1] + 1] != IGNORE
    return float(-lp[keep].mean())


def test_both_stages_learn_and_stage2_uploads_only_the_gate(world):
    from fedfm.transport.validation import expected_schema, validate_update

    algo, data, memory = world.algorithm, world.data.clients[0], ClientMemory()
    algo.init_server(world.model)
    every = set(range(algo.num_layers))
    before = train_nll(algo, data, memory, algo.global_, every)
    task = algo.configure_train(0, [0])[0]
    up = algo.client_update(task, world.model, data, memory, ClientContext(1, 0, 0))
    assert validate_update(up, task, expected=expected_schema(algo, task)).rejection is None
    algo.aggregate_train(0, [up])
    after = train_nll(algo, data, memory, algo.global_, every)
    assert after < before - 1.0, (before, after)  # stage 1: the global expert learns

    task = algo.configure_train(1, [0])[0]
    glob = dict(algo.global_)
    up = algo.client_update(task, world.model, data, memory, ClientContext(2, 1, 0))
    assert set(up.tensors) == {k for k in algo._gate_tensors()}  # the gate, nothing else
    assert validate_update(up, task, expected=expected_schema(algo, task)).rejection is None
    assert any(k.startswith("local.") for k in memory.tensors)  # the local expert stays home
    gate_before = {k: v.clone() for k, v in algo.gate_.items()}
    algo.aggregate_train(1, [up])
    assert all(torch.equal(algo.global_[k], glob[k]) for k in glob)  # global expert frozen
    assert all(torch.equal(algo.gate_[k], up.tensors[k]) for k in up.tensors)  # one sender
    assert any(not torch.equal(gate_before[k], algo.gate_[k]) for k in gate_before)
    # stage 2 fits the client: the mixture's response NLL on its own data beats the global's
    ev = algo.configure_evaluate(1, [0])[0]
    own = dataclasses.replace(data, test=data.train)
    m = algo.client_evaluate(ev, world.model, own, memory, ClientContext(3, 1, 0)).metrics
    assert m["loss"] < m["loss_global_expert"] - 0.05, m
    assert abs(m["loss_global_expert"] - after) < 1e-4
    assert 0 <= m["correct"] <= m["total"] == len(data.train) and 0 < m["gate_local"] < 1


def test_stage2_average_of_two_gates_is_the_weighted_mean(world):
    from fedfm.transport.messages import ClientUpdate

    algo = world.algorithm
    algo.init_server(world.model)
    keys = list(algo._gate_tensors())
    a = {k: torch.ones_like(v) for k, v in algo.gate_.items()}
    b = {k: 4 * torch.ones_like(v) for k, v in algo.gate_.items()}
    stage2 = algo.stage1_rounds
    algo.aggregate_train(stage2, [ClientUpdate(stage2, 0, 30, a, {}),
                                  ClientUpdate(stage2, 1, 10, b, {})])
    assert all(torch.allclose(algo.gate_[k], torch.full_like(a[k], 1.75)) for k in keys)


@pytest.mark.parametrize("opts", [
    {"gate_type": "network", "stage2_average": "adapter", "gate_input": "global"},
    {"inactive": "frozen", "order": "bottom-up", "k0": 1, "global_in_stage2": True,
     "local_ce_weight": 0.5, "cache": False},
], ids=["gate-network-adapter-global", "sal-frozen-bottom-up-global-in-stage2"])
def test_option_combinations_run_generate(tmp_path, opts):
    from fedfm.config import build_config
    from fedfm.run import run

    raw = gen_raw(tmp_path, "fedms", rounds=2)
    raw["fedms"] = opts
    raw["train"].update(local_epochs=1)
    s = run(build_config(raw), quiet=True)
    assert 0 <= s["acc_personal_mean"] <= 1 and s["loss_personal_mean"] > 0


def test_encoder_decoder_models_are_refused(world):
    from types import SimpleNamespace

    from fedfm.core.errors import ConfigError

    config = SimpleNamespace(is_encoder_decoder=True, model_type="switch_transformers")
    with pytest.raises(ConfigError, match="decoder-only"):
        world.algorithm.prepare_model(SimpleNamespace(backbone=SimpleNamespace(config=config)))
