"""The HF model layer on tiny random models of every registry family (+ phi3, held back from the
registry): forward parity, LoRA B=0 identity, SAL prefix equality, pooling and padding."""

from __future__ import annotations

import pytest
import torch

from fedfm.core.errors import ConfigError
from fedfm.models.classifier import last_token_pool
from fedfm.models.hf.family import FAMILIES
from fedfm.models.hf.loading import ensure_pad, load_hf_backbone, load_hf_tokenizer
from fedfm.models.lora import inject_lora, lora_modules, set_active_blocks
from tests.hf_tiny import configs, tiny_folder

FAMS = list(configs())


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf_tiny")
    return {f: tiny_folder(root, f) for f in FAMS}


def batch(seed: int = 0, b: int = 3, t: int = 9):
    """Right-padded ids/mask with different real lengths (the pipeline's layout)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 2000, (b, t), generator=g)
    lengths = torch.tensor([t, t - 3, 4])[:b]
    mask = (torch.arange(t)[None] < lengths[:, None]).long()
    return ids * mask, mask


def test_registry_has_the_issue_families():
    for mt in ("bert", "roberta", "distilbert", "llama", "qwen2", "qwen3", "mistral",
               "gemma3_text", "gpt2"):
        assert mt in FAMILIES
    assert "phi3" not in FAMILIES  # held back: exercised through the auto path


@pytest.mark.parametrize("fam", FAMS)
def test_forward_parity_with_the_hf_model(folders, fam):
    from transformers import AutoModel

    bb = load_hf_backbone(folders[fam]).eval()
    ref = AutoModel.from_pretrained(str(folders[fam]), use_safetensors=True,
                                    local_files_only=True).eval()
    ids, mask = batch()
    with torch.no_grad():
        want = ref(input_ids=ids, attention_mask=mask).last_hidden_state
        got = bb(ids, mask)
    assert torch.allclose(got, want, atol=1e-5)
    assert bb.spec.num_layers == 2 and bb.spec.hidden == 32
    assert bb.family.registered == (fam != "phi3")
    names = [n for n, _ in bb.named_parameters()]
    assert names == [n for n, _ in bb.base.named_parameters()]  # the HF model's own names


@pytest.mark.parametrize("fam", FAMS)
def test_lora_b_zero_is_identity_and_b_nonzero_is_not(folders, fam):
    bb = load_hf_backbone(folders[fam]).eval()
    ids, mask = batch()
    with torch.no_grad():
        before = bb(ids, mask)
    replaced = inject_lora(bb, ("query", "value"), 4, 8.0, seed=0)
    assert replaced and all(bb.block_of(n) is not None for n in replaced)
    if fam == "phi3":  # unregistered: default targets = every linear inside the blocks
        assert {n.rsplit(".", 1)[-1] for n in replaced} >= {"qkv_proj", "gate_up_proj"}
    with torch.no_grad():
        assert torch.equal(bb(ids, mask), before)
        for m in lora_modules(bb).values():
            m.lora_B.normal_(0, 0.5)
        assert not torch.allclose(bb(ids, mask), before, atol=1e-4)


@pytest.mark.parametrize("fam", FAMS)
def test_sal_prefix_then_tail_equals_full_forward(folders, fam):
    """run_from(prefix(x, s), s) == forward(x) for every s, with LoRA active above s."""
    bb = load_hf_backbone(folders[fam]).eval()
    inject_lora(bb, ("all-linear",), 4, 8.0, seed=1)
    with torch.no_grad():
        for m in lora_modules(bb).values():
            m.lora_B.normal_(0, 0.3)
    ids, mask = batch(2)
    L = bb.spec.num_layers
    for s in range(L + 1):
        set_active_blocks(bb, set(range(s, L)))
        with torch.no_grad():
            full = bb(ids, mask)
            h = bb.prefix(ids, mask, s)
            assert torch.equal(bb.run_from(h, mask, s), full), (fam, s)
            if s > 0:  # advancing a cached state equals computing it from scratch
                h0 = bb.prefix(ids, mask, 0)
                assert torch.equal(bb.prefix(ids, mask, s, h0, 0), h)


def test_sal_tail_gets_gradients_only_above_s(folders):
    bb = load_hf_backbone(folders["llama"]).eval()
    inject_lora(bb, ("q", "v"), 4, 8.0, seed=0)
    set_active_blocks(bb, {1})
    ids, mask = batch()
    h = bb.prefix(ids, mask, 1)
    bb.run_from(h, mask, 1).sum().backward()
    for name, p in bb.named_parameters():
        if "lora_" in name:
            assert (p.grad is not None) == (bb.block_of(name) == 1), name


@pytest.mark.parametrize("fam", ["llama", "gpt2", "qwen3"])
def test_decoder_right_padding_keeps_each_example_unchanged(folders, fam):
    """Classification pads right: the last-real-token features of a padded row equal those of
    the example alone (causal attention never sees the pads after it)."""
    bb = load_hf_backbone(folders[fam]).eval()
    assert bb.spec.pooling == "last" and bb.spec.padding_side == "left"
    ids, mask = batch()
    with torch.no_grad():
        feats = bb.features(ids, mask)
        for i in range(ids.shape[0]):
            n = int(mask[i].sum())
            alone = bb.features(ids[i : i + 1, :n], mask[i : i + 1, :n])
            assert torch.allclose(feats[i], alone[0], atol=1e-5)


def test_last_token_pool_left_and_right_padding():
    h = torch.arange(2 * 5 * 1, dtype=torch.float).view(2, 5, 1)
    right = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1, 1], [0, 1, 1, 1, 1]])
    assert last_token_pool(h, right).flatten().tolist() == [2.0, 9.0]
    assert last_token_pool(h, left).flatten().tolist() == [4.0, 9.0]


def test_tokenizer_padding_side_and_pad_fallback(folders):
    right = load_hf_tokenizer(folders["llama"], 12)
    left = load_hf_tokenizer(folders["llama"], 12, padding_side="left")
    _, m_right = right(["a short text"])
    _, m_left = left(["a short text"])
    assert m_right[0, 0] == 1 and m_right[0, -1] == 0
    assert m_left[0, 0] == 0 and m_left[0, -1] == 1

    class Tok:
        pad_token, eos_token, unk_token = None, "</s>", None

    t = Tok()
    ensure_pad(t)
    assert t.pad_token == "</s>"
    t.eos_token = t.pad_token = None
    with pytest.raises(ConfigError):
        ensure_pad(t)


def test_refuses_pickles_and_remote_code(tmp_path, folders):
    import json
    import shutil

    bad = tmp_path / "bin"
    bad.mkdir()
    shutil.copy(folders["llama"] / "config.json", bad / "config.json")
    (bad / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ConfigError, match="pickled"):
        load_hf_backbone(bad)
    remote = tmp_path / "remote"
    shutil.copytree(folders["llama"], remote)
    cfg = json.loads((remote / "config.json").read_text())
    cfg.update(model_type="my_custom_llm", auto_map={"AutoModel": "modeling_x.MyModel"})
    (remote / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError):
        load_hf_backbone(remote)


def test_num_layers_truncates(folders):
    bb = load_hf_backbone(folders["gemma3_text"], num_layers=1)
    assert bb.spec.num_layers == 1 and len(bb.blocks) == 1
    ids, mask = batch()
    assert bb(ids, mask).shape == (3, 9, 32)


def test_tiny_bert_keeps_the_weights_of_the_former_hand_written_bert():
    """tiny-bert is transformers' BertModel with the very weights fedfm's deleted hand-written
    tiny BERT drew for the same seed (fingerprint taken from it before the deletion), so runs on
    tiny-bert keep their values."""
    from fedfm.models.loading import tiny_hf_bert

    new = tiny_hf_bert(seed=3).eval()
    total = sum(float(p.detach().double().abs().sum()) for p in new.parameters())
    assert abs(total - 16264.597305727899) < 1e-6
    row = new.state_dict()["encoder.layer.1.output.dense.weight"][0, :3].tolist()
    assert row == pytest.approx([0.02528870292007923, -0.018122948706150055,
                                 -0.025507953017950058], abs=1e-9)
    assert not torch.equal(tiny_hf_bert(seed=4).state_dict()["encoder.layer.1.output.dense.weight"],
                           new.state_dict()["encoder.layer.1.output.dense.weight"])


def test_full_finetune_keeps_the_family_embeddings_frozen(folders):
    from fedfm.models.classifier import Classifier
    from fedfm.models.finetune import configure_finetune

    model = Classifier(load_hf_backbone(folders["llama"]), 3)
    configure_finetune(model, "full", ("q", "v"), 4, 8.0, 0)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "backbone.embed_tokens.weight" not in trainable
    assert "backbone.layers.0.mlp.down_proj.weight" in trainable and "head.weight" in trainable


def test_moe_algorithms_refuse_dense_non_bert_families_clearly(folders, tmp_path):
    from fedfm.config import build_config
    from fedfm.sim.world import build_world
    from tests.conftest import tiny_raw

    cfg = build_config(tiny_raw(algorithm="fedmoe", out=str(tmp_path / "r"),
                                **{"model.name": "hf", "model.path": str(folders["llama"])}))
    with pytest.raises(ConfigError, match="need an MoE family .* or a BERT-family encoder"):
        build_world(cfg)
