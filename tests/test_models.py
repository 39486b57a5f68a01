import torch

from fedfm.models.bert import Bert
from fedfm.models.classifier import Classifier, freeze, get_tensors, set_tensors
from fedfm.models.loading import load_backbone, tiny_spec
from fedfm.models.lora import LoRALinear, inject_lora, merge_lora, set_active_blocks


def _inputs(n=3, t=12, vocab=30522):
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1, vocab, (n, t), generator=gen)
    mask = torch.ones(n, t, dtype=torch.long)
    mask[0, 8:] = 0
    return ids, mask


def _tiny():
    model, _ = load_backbone("tiny-bert", None, None, seed=0)
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
    spec = tiny_spec()
    from dataclasses import replace

    small = Bert(replace(spec, heads=(2, 1), ffn=(16, 8)))
    ids, mask = _inputs()
    assert small(ids, mask).shape == (3, 12, 32)


def test_real_minilm_matches_transformers():
    """Our BERT reproduces transformers' BertModel on the real checkpoint (first 2 blocks)."""
    from transformers import AutoModel

    ours, folder = load_backbone("minilm-l6", None, 2, seed=0)
    ref = AutoModel.from_pretrained(str(folder), num_hidden_layers=2).eval()
    ids, mask = _inputs(t=16)
    with torch.no_grad():
        a = ours(ids, mask)
        b = ref(input_ids=ids, attention_mask=mask).last_hidden_state
    real = mask.bool()
    assert torch.allclose(a[real], b[real], atol=1e-4)
