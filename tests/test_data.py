import json

import pytest
import torch
from safetensors.torch import save_file

from fedfm.core.errors import ConfigError, DataError
from fedfm.data.catalogue import load_dataset
from fedfm.data.datasets import load_bbc
from fedfm.data.federated import build_federated
from fedfm.models.loading import load_tokenizer, minilm_path, tiny_hf_bert


def test_bbc_is_real_and_complete():
    ds = load_bbc()
    assert len(ds.texts) == 2225 and ds.num_labels == 5
    assert set(ds.label_names) == {"business", "entertainment", "politics", "sports", "tech"}


def test_user_csv_and_jsonl(tmp_path):
    csv = tmp_path / "d.csv"
    csv.write_text("text,label\nhello world,a\ngood day,b\nbye now,a\n")
    ds = load_dataset("csv", str(csv))
    assert ds.labels == [0, 1, 0] and ds.label_names == ["a", "b"]
    jl = tmp_path / "d.jsonl"
    jl.write_text("\n".join(json.dumps({"text": f"t{i}", "label": i % 2}) for i in range(6)))
    assert load_dataset("jsonl", str(jl)).num_labels == 2
    bad = tmp_path / "bad.csv"
    bad.write_text("body,y\nx,1\n")
    with pytest.raises(DataError, match="text_column"):
        load_dataset("csv", str(bad))
    with pytest.raises(DataError, match="does not exist"):
        load_dataset("jsonl", str(tmp_path / "nope.jsonl"))


def test_client_splits_are_disjoint_and_global_test_held_out():
    ds = load_dataset("synthetic")
    tok = load_tokenizer(minilm_path(), 16)
    fed = build_federated(ds, tok, 5, "dirichlet", seed=0, alpha=0.3)
    sizes = sum(len(c.train) + len(c.test) for c in fed.clients) + len(fed.global_test)
    assert sizes == len(ds.texts)
    assert all(len(c.test) >= 1 and len(c.train) >= 1 for c in fed.clients)
    assert torch.bincount(fed.global_test.labels).min() > 0  # stratified


def test_local_hf_folder(tmp_path):
    from fedfm.models.hf.loading import load_hf_backbone
    from fedfm.models.loading import refuse_legacy_export

    model = tiny_hf_bert(seed=3)
    cfg = {"model_type": "bert", "vocab_size": 30522, "hidden_size": 32, "num_hidden_layers": 2,
           "num_attention_heads": 4, "intermediate_size": 64, "max_position_embeddings": 512}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(tmp_path / "model.safetensors"))
    again = load_hf_backbone(tmp_path)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in model.state_dict().items())
    (tmp_path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ConfigError):
        load_hf_backbone(tmp_path)
    with pytest.raises(ConfigError, match="config.json"):
        load_hf_backbone(tmp_path / "empty")
    legacy = tmp_path / "legacy_elastic"  # an elastic export of the deleted hand-written BERT
    legacy.mkdir()
    (legacy / "config.json").write_text(json.dumps({**cfg, "fedfm_heads": [4, 2]}))
    with pytest.raises(ConfigError, match="former hand-written BERT"):
        refuse_legacy_export(legacy)
