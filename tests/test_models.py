import torch

from fedfm.models.classifier import Classifier, freeze, get_tensors, set_tensors
from fedfm.models.loading import tiny_hf_bert
from fedfm.models.lora import LoRALinear, inject_lora, merge_lora, set_active_blocks


def _inputs(n=3, t=12, vocab=30522):
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1, vocab, (n, t), generator=gen)
    mask = torch.ones(n, t, dtype=torch.long)
    mask[0, 8:] = 0
    return ids, mask


def _tiny():
    model = tiny_hf_bert(seed=0)
    freeze(model)
    return Classifier(model, 3, seed=0).eval()


def test_lora_with_b_zero_equals_base():
    model = _tiny()
    ids, mask = _inputs()
    before = model(ids, mask)
    names = inject_lora(model.backbone, ("query", "value"), rank=4, alpha=8, seed=1)
    assert len(names) == 4
    assert torch.equal(model(ids, mask), before)
    for m in model.modules():
        if isinstance(m, LoRALinear):
            m.lora_B.data.normal_()
    assert not torch.allclose(model(ids, mask), before)
    set_active_blocks(model, set())
    assert torch.equal(model(ids, mask), before)


def test_merge_lora_preserves_function():
    model = _tiny()
    inject_lora(model.backbone, ("query", "value", "intermediate.dense"), 4, 8, seed=1)
    for m in model.modules():
        if isinstance(m, LoRALinear):
            m.lora_B.data.normal_(std=0.1)
    ids, mask = _inputs()
    out = model(ids, mask)
    merge_lora(model)
    assert torch.allclose(model(ids, mask), out, atol=1e-5)


def test_tensor_swap_roundtrip():
    model = _tiny()
    inject_lora(model.backbone, ("query",), 2, 4, seed=0)
    for p in model.head.parameters():
        p.requires_grad_(True)
    t = get_tensors(model)
    assert all("lora" in k or k.startswith("head.") for k in t)
    t2 = {k: v + 1 for k, v in t.items()}
    set_tensors(model, t2)
    assert all(torch.equal(get_tensors(model)[k], t2[k]) for k in t)


def test_per_layer_widths():
    """A RaFFM subnetwork with different heads / FFN per block is a real, smaller BertModel."""
    from fedfm.models.elastic import Widths
    from fedfm.models.hf_elastic import extract
    from fedfm.models.hf_raffm import geometry_of, server_tensors, sub_classifier

    full = _tiny()
    geo = geometry_of(full)
    w = Widths((2, 1), (16, 8))
    small = sub_classifier(full, geo, w, extract(server_tensors(full, geo), geo, w))
    blocks = small.backbone.blocks
    assert blocks[1].attention.self.query.out_features == 8  # 1 head of 8
    assert blocks[0].intermediate.dense.out_features == 16
    ids, mask = _inputs()
    assert small.backbone(ids, mask).shape == (3, 12, 32)


def test_real_minilm_matches_transformers():
    """fedfm's MiniLM is transformers' BertModel as AutoModel loads it (first 2 blocks), with
    fedfm's CPU attention (fp32 SDPA) in place of the default."""
    from transformers import AutoModel

    from fedfm.models.hf.loading import load_hf_backbone
    from fedfm.models.loading import minilm_path

    folder = minilm_path()
    ours = load_hf_backbone(folder, num_layers=2).eval()
    ref = AutoModel.from_pretrained(str(folder), num_hidden_layers=2).eval()
    ids, mask = _inputs(t=16)
    with torch.no_grad():
        a = ours(ids, mask)
        b = ref(input_ids=ids, attention_mask=mask).last_hidden_state
    real = mask.bool()
    assert torch.allclose(a[real], b[real], atol=1e-4)
