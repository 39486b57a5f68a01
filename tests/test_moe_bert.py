"""MoEfication / upcycling on transformers' BertModel equals the legacy MoEfied BERT (temporary:
this file is replaced by analytic tests once models/bert.py is deleted)."""

import copy

import pytest
import torch

from fedfm.models import moe as new
from fedfm.models import moe_legacy as old
from fedfm.models.bert import Bert, EncoderSpec
from fedfm.models.loading import tiny_hf_bert


def _batch():
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(1000, 5000, (3, 10), generator=gen)
    mask = torch.ones(3, 10, dtype=torch.long)
    mask[0, 6:] = 0
    mask[2, 3:] = 0
    return ids, mask


@pytest.mark.parametrize("build", ["moefy", "upcycle"])
@pytest.mark.parametrize("held", [None, [[0, 2, 3], [1, 3]]])
def test_hf_moe_bert_equals_legacy_moe_bert(build, held):
    ids, mask = _batch()
    hf = tiny_hf_bert(0).eval()
    legacy = Bert(EncoderSpec.uniform(30522, hidden=32, layers=2, heads=4, ffn=64)).eval()
    legacy.load_state_dict(hf.state_dict())  # the same weights
    old.to_moe(legacy, 4, 2, build, seed=0)
    new.to_moe(hf, 4, 2, build, seed=0)
    a, b = dict(legacy.named_parameters()), dict(hf.named_parameters())
    assert sorted(a) == sorted(b)
    assert all(torch.equal(a[k], b[k]) for k in a)  # same experts, router rows, LayerNorms
    old.set_held(legacy, held)
    new.set_held(hf, held)
    with torch.no_grad():
        ya, yb = legacy(ids, mask), hf(ids, mask)
    real = mask.bool()
    diff = float((ya - yb)[real].abs().max())
    print(f"max |legacy - hf| over real tokens ({build}, held={held}): {diff:.3g}")
    assert diff < 1e-5
    for ba, bb in zip(old.moe_blocks(legacy), new.moe_blocks(hf)):
        assert torch.equal(ba.last.load, bb.last.load)
        assert torch.allclose(ba.last.aux_loss, bb.last.aux_loss, atol=1e-6)
    sub = copy.deepcopy(hf)  # the deepcopy used by build_submoe keeps the MoE layers working
    with torch.no_grad():
        assert torch.allclose(sub(ids, mask), yb)
