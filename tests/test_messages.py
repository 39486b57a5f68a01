import pickle

import pytest
import torch

from fedfm.algorithms.aggregation import masked_mean
from fedfm.core.errors import PayloadError
from fedfm.transport.messages import ClientTask, ClientUpdate, decode, encode


def test_roundtrip_exact():
    u = ClientUpdate(3, 7, 42, {"a": torch.randn(3, 4), "b": torch.arange(5)}, {"loss": 0.5})
    blob = encode(u)
    v = decode(blob)
    assert isinstance(v, ClientUpdate) and v.round == 3 and v.client_id == 7
    assert v.num_examples == 42 and v.metrics == {"loss": 0.5}
    assert all(torch.equal(u.tensors[k], v.tensors[k]) for k in u.tensors)
    t = decode(encode(ClientTask(1, 2, {}, {"k": [1, 2]}, "evaluate")))
    assert isinstance(t, ClientTask) and t.config == {"k": [1, 2]} and t.kind == "evaluate"


def test_refuses_pickle_truncation_and_oversize(tmp_path):
    sentinel = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(sentinel), "w"))

    with pytest.raises(PayloadError):
        decode(pickle.dumps(Evil()))
    assert not sentinel.exists()
    blob = encode(ClientUpdate(0, 0, 1, {"a": torch.randn(100)}))
    with pytest.raises(PayloadError):
        decode(blob[:-10])
    with pytest.raises(PayloadError, match="exceeds the cap"):
        decode(blob, max_bytes=100)


def test_fedavg_of_three_hand_made_updates():
    sets = [{"w": torch.tensor([1.0, 0.0])}, {"w": torch.tensor([3.0, 3.0])},
            {"w": torch.tensor([0.0, 6.0])}]
    out = masked_mean(sets, [1, 2, 3])
    # (1*[1,0] + 2*[3,3] + 3*[0,6]) / 6 = [7/6, 24/6]
    assert torch.allclose(out["w"], torch.tensor([7 / 6, 4.0]))
