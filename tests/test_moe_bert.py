"""MoEfication and upcycling inside transformers' BertModel (models/moe.py).

Before fedfm's hand-written BERT was deleted, this file compared the MoEfied HF BERT with the
legacy MoEfied BERT on the same weights: identical experts, router rows and expert loads; max
|diff| of the last hidden state over real tokens 7.2e-7 (tiny-bert, 4 experts, top-2) and 4.4e-6
on real MiniLM (8 experts, top-2; the dense HF-vs-legacy BERT differed by 4.9e-6 there). Now it
checks the properties directly against the dense HF model."""

import copy

import pytest
import torch

from fedfm.models.loading import tiny_hf_bert
from fedfm.models.moe import load_moe_folder, moe_blocks, save_moe_folder, set_held, to_moe


def _batch():
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(1000, 5000, (3, 10), generator=gen)
    mask = torch.ones(3, 10, dtype=torch.long)
    mask[0, 6:] = 0
    mask[2, 3:] = 0
    return ids, mask


@torch.no_grad()
def test_upcycled_minilm_moe_equals_the_dense_model_at_init_whatever_k():
    """Upcycling (issue #16): E copies of the FFN + a random router = the dense model, since the
    renormalised top-k gates sum to one over identical experts."""
    ids, mask = _batch()
    dense = tiny_hf_bert(0).eval()
    ref = dense(ids, mask)
    moe = copy.deepcopy(dense)
    to_moe(moe, num_experts=4, top_k=2, build="upcycle", seed=5)
    for k in (1, 2, 4):
        for blk in moe_blocks(moe):
            blk.moe.router.top_k = k
        diff = float((moe(ids, mask) - ref)[mask.bool()].abs().max())
        assert diff < 1e-5, (k, diff)
    router = moe_blocks(moe)[0].moe.router.weight
    assert float(router.std()) > 0.005  # a real (random) router, not a degenerate one


def test_moe_layers_replace_the_ffn_under_stable_names():
    bert = tiny_hf_bert(0)
    to_moe(bert, 4, 2, "moefy", 0)
    names = {n for n, _ in bert.named_parameters()}
    assert "encoder.layer.1.moe.experts.3.dense_in.weight" in names
    assert "encoder.layer.0.moe.router.weight" in names
    assert not any(".intermediate." in n or ".output.dense." in n and "attention" not in n
                   for n in names)
    assert type(bert.blocks[0]).__name__ == "MoEBertLayer"


@torch.no_grad()
def test_loads_count_real_tokens_only_and_follow_the_held_set():
    ids, mask = _batch()
    bert = tiny_hf_bert(0).eval()
    to_moe(bert, 4, 2, "moefy", 0)
    set_held(bert, [[0, 2, 3], [1]])
    bert(ids, mask)
    a, b = (blk.last.load for blk in moe_blocks(bert))
    assert float(a.sum()) == 2 * int(mask.sum()) and a[1] == 0
    assert float(b.sum()) == int(mask.sum()) == float(b[1])  # one held expert: k = 1


@torch.no_grad()
def test_moe_folder_written_by_the_legacy_layout_loads(tmp_path):
    """moe.json + model.safetensors with the legacy key names load into the HF BertModel."""
    ids, mask = _batch()
    src = tiny_hf_bert(0).eval()
    to_moe(src, 4, 2, "moefy", 0)
    save_moe_folder(src, tmp_path)
    dst = tiny_hf_bert(1).eval()
    load_moe_folder(dst, tmp_path)
    assert torch.equal(dst(ids, mask), src(ids, mask))


def test_non_bert_families_are_refused(tmp_path):
    from fedfm.models.hf.loading import load_hf_backbone
    from tests.hf_tiny import tiny_folder

    bb = load_hf_backbone(tiny_folder(tmp_path, "llama"))
    with pytest.raises(ValueError, match="not a BERT-style block"):
        to_moe(bb, 4, 2, "moefy", 0)
