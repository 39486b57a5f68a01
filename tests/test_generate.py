"""task = generate: tokenisation (chat template, response-only labels, padding sides), the
response-only loss, exact-match normalisation, greedy generation, and end-to-end learning."""

from __future__ import annotations

import json

import pytest
import torch

from fedfm.core.errors import DataError
from fedfm.data.generation import IGNORE, PromptEncoder
from fedfm.data.records import GenerationDataset, from_pairs
from fedfm.models.causal_lm import CausalLM, evaluate_generation, exact_match, normalize_answer
from tests.gen_helpers import tiny_lm, tiny_tokenizer, write_jsonl

PAIRS = [("which fruit is red ?", "apple"), ("name the green fruit", "lime"),
         ("tell me the fruit of colour pink", "peach")]


def causal_lm(family="llama", tok=None):
    from fedfm.models.hf.backbone import HFBackbone

    lm = tiny_lm(family)
    bb = HFBackbone(lm.base_model)
    object.__setattr__(bb, "lm", lm)
    return CausalLM(bb, tok or tiny_tokenizer())


@pytest.mark.parametrize("chat", [True, False])
def test_labels_cover_the_response_only(chat):
    tok = tiny_tokenizer(chat)
    split = PromptEncoder(tok, 32)(from_pairs(PAIRS))
    for i, (_, response) in enumerate(PAIRS):
        real = split.attention_mask[i].bool()
        scored = split.labels[i] != IGNORE
        assert not (scored & ~real).any()  # padding never scored
        ids = split.input_ids[i][scored].tolist()
        # the response (plus the end-of-turn / eos token) and nothing of the prompt
        assert ids[0] == tok.convert_tokens_to_ids(response)
        assert ids[-1] == tok.eos_token_id and len(ids) == 2
        assert (split.labels[i][scored] == split.input_ids[i][scored]).all()


def test_chat_template_is_used_and_padding_sides():
    tok = tiny_tokenizer(chat=True)
    split = PromptEncoder(tok, 32)(from_pairs(PAIRS))
    user, assistant = tok.convert_tokens_to_ids(["<user>", "<assistant>"])
    # training rows: right-padded (real tokens first, so batches trim to the longest row)
    m = split.attention_mask
    assert (m[:, 0] == 1).all() and (m[:, :-1] >= m[:, 1:]).all()
    # prompts for generation: left-padded and ending with the assistant turn marker
    pm = split.prompt_mask
    assert (pm[:, -1] == 1).all() and (pm[:, :-1] <= pm[:, 1:]).all()
    assert (split.prompt_ids[:, -1] == assistant).all()
    first = split.prompt_ids[pm.bool()].tolist()
    assert first.count(user) == len(PAIRS)


def test_long_prompts_keep_template_and_response():
    tok = tiny_tokenizer(chat=True)
    long = " ".join(["which fruit is"] * 20) + " red ?"
    split = PromptEncoder(tok, 10)(from_pairs([(long, "apple")]))
    row = split.input_ids[0][split.attention_mask[0].bool()].tolist()
    assert len(row) <= 10
    assert row[0] == tok.convert_tokens_to_ids("<user>")  # template kept, content cut on the left
    assert tok.convert_tokens_to_ids("red") in row
    assert split.labels[0][split.labels[0] != IGNORE].tolist()[0] == tok.convert_tokens_to_ids("apple")


def test_response_loss_equals_hf_loss_on_response_tokens():
    model = causal_lm()
    split = PromptEncoder(model.tokenizer, 32)(from_pairs(PAIRS))
    ids, mask, labels = next(split.batches(8))
    ours = model.response_loss(ids, mask, labels)
    theirs = model.lm(input_ids=ids, attention_mask=mask, labels=labels).loss
    assert torch.allclose(ours, theirs, atol=1e-5)
    # the prompt carries no loss: scoring a prompt token too changes the value
    more = labels.clone()
    more[0, 2] = ids[0, 2]
    assert not torch.allclose(model.response_loss(ids, mask, more), ours)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_batched_left_padded_generation_equals_one_by_one(family):
    model = causal_lm(family)
    split = PromptEncoder(model.tokenizer, 32)(from_pairs(PAIRS))
    batched = model.generate_ids(split.prompt_ids, split.prompt_mask, 4)
    for i in range(len(PAIRS)):
        m = split.prompt_mask[i].bool()
        alone = model.generate_ids(split.prompt_ids[i][m][None], torch.ones(1, int(m.sum())), 4)
        n = alone.shape[1]
        assert batched[i, :n].tolist() == alone[0].tolist()


def test_exact_match_normalisation():
    assert normalize_answer("  The Eiffel-Tower!  ") == "eiffeltower"
    assert normalize_answer("an Apple, a day") == "apple day"
    assert exact_match("Yes.", "yes") and exact_match("the answer", "Answer")
    assert not exact_match("yes, it is", "yes")


def test_evaluation_counts_exact_matches():
    model = causal_lm()
    split = PromptEncoder(model.tokenizer, 32)(from_pairs(PAIRS))
    texts = model.decode(model.generate_ids(split.prompt_ids, split.prompt_mask, 3))
    m = evaluate_generation(model, split, 2, 3)
    assert m["total"] == len(PAIRS) and m["tokens"] == 2 * len(PAIRS)
    assert m["correct"] == sum(exact_match(t, r) for t, (_, r) in zip(texts, PAIRS))
    assert m["loss"] > 0


def test_jsonl_records_named_columns_and_alpaca(tmp_path):
    """task = generate reads the user's records through the data catalogue's loaders."""
    from fedfm.config import DataConfig
    from fedfm.data import catalogue

    def load(path, **kw):
        return catalogue.load("jsonl", DataConfig(name="jsonl", path=str(path), **kw), 0,
                              "generate").train

    ds = load(write_jsonl(tmp_path / "a.jsonl", [{"q": "2+2", "a": "4"}]),
              prompt_column="q", response_column="a")
    assert (ds.prompts, ds.responses) == (["2+2"], ["4"])
    ds = load(write_jsonl(tmp_path / "b.jsonl", [
        {"instruction": "Add", "input": "2 and 2", "output": "4"},
        {"instruction": "Say hi", "input": "", "output": "hi"}]))
    assert ds.prompts == ["Add\n\n2 and 2", "Say hi"] and ds.responses == ["4", "hi"]
    (tmp_path / "c.jsonl").write_text(json.dumps({"text": "x"}) + "\n")
    with pytest.raises(DataError, match="prompt_column"):
        load(tmp_path / "c.jsonl")


def test_generation_dataset_checks_its_columns():
    with pytest.raises(DataError):
        GenerationDataset(["a"], ["b", "c"], [0], ["all"])
    with pytest.raises(DataError):
        GenerationDataset(["a"], ["b"], [1], ["all"])


# ---------------------------------------------------------------- end to end (embedded runtime)

def gen_raw(tmp_path, algorithm="fedavg", rounds=5, **over) -> dict:
    from tests.gen_helpers import colour_records, save_tiny_lm

    folder = tmp_path / "lm"
    if not folder.exists():
        save_tiny_lm(folder)
    data = write_jsonl(tmp_path / "colours.jsonl", colour_records(160))
    raw = {"algorithm": algorithm, "rounds": rounds, "seed": 0, "task": "generate",
           "out": str(tmp_path / f"run-{algorithm}"),
           "model": {"name": "hf", "path": str(folder), "max_length": 24, "lora_rank": 8,
                     "lora_targets": ["all-linear"]},
           "data": {"name": "jsonl", "path": str(data), "partition": "iid", "num_clients": 3},
           "train": {"batch_size": 8, "lr": 2e-2, "threads": 1, "local_epochs": 4},
           "eval": {"max_new_tokens": 3}}
    raw.update(over)
    return raw


def test_fedavg_generate_learns_a_mapping(tmp_path):
    """EM of greedy answers rises well above the untrained model's on a colour -> fruit map."""
    from fedfm.algorithms import tasks
    from fedfm.config import build_config
    from fedfm.run import run
    from fedfm.sim.world import build_world

    cfg = build_config(gen_raw(tmp_path))
    world = build_world(cfg)
    before = tasks.evaluate(world.model, world.data.global_test, cfg)
    summary = run(cfg, quiet=True)
    rows = [json.loads(line) for line in (tmp_path / "run-fedavg" / "metrics.jsonl").open()]
    assert all("loss_global" in r and "loss_personal_mean" in r for r in rows)
    em_before = before["correct"] / before["total"]
    assert summary["acc_global"] >= 0.5 and summary["acc_global"] >= em_before + 0.3
    assert summary["loss_global"] < before["loss"] - 0.5
    assert summary["acc_personal_mean"] is not None and summary["loss_personal_mean"] is not None


@pytest.mark.parametrize("algorithm", ["fedprox", "fedper", "local"])
def test_other_algorithms_run_generate(tmp_path, algorithm):
    from fedfm.config import build_config
    from fedfm.run import run

    summary = run(build_config(gen_raw(tmp_path, algorithm, rounds=1)), quiet=True)
    assert summary["acc_personal_mean"] is not None and summary["loss_personal_mean"] > 0
    if algorithm == "fedper":  # the last block's LoRA stays on the client
        from fedfm.sim.world import build_world

        world = build_world(build_config(gen_raw(tmp_path, algorithm, rounds=1)))
        world.algorithm.init_server(world.model)
        sent = set(world.algorithm.global_tensors())
        assert any(world.model.backbone.block_of(n) == 0 for n in sent)
        assert not any(world.model.backbone.block_of(n) == 1 for n in sent)


@pytest.mark.parametrize("over, match", [
    ({"algorithm": "fedms", "fedms": {"k0": 0}}, "k0"), ({"algorithm": "raffm"}, "fedavg, fedprox"),
    ({"model": {"name": "hf", "finetune": "head"}}, "finetune"),
    ({"runtime": "flower"}, "embedded"),
])
def test_generate_refuses_what_it_cannot_honour(tmp_path, capsys, over, match):
    from fedfm.cli import main

    raw = gen_raw(tmp_path)
    raw.update(over)
    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text(_toml(raw))
    assert main(["run", str(cfg_file), "--quiet"]) == 2
    assert match in capsys.readouterr().err


def _toml(raw: dict, prefix: str = "") -> str:
    top = [f"{k} = {json.dumps(v)}" for k, v in raw.items() if not isinstance(v, dict)]
    tables = [f"\n[{k}]\n" + _toml(v) for k, v in raw.items() if isinstance(v, dict)]
    return "\n".join(top) + "\n" + "".join(tables)
