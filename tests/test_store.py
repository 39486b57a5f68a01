"""ClientStore: a RAM budget, LRU spill to memory-mapped safetensors, identical contents."""

from __future__ import annotations

import torch

from fedfm.algorithms.base import ClientMemory
from fedfm.sim.store import ClientStore, mmap_safetensors


def _memory(cid: int, n: int = 1024) -> ClientMemory:
    g = torch.Generator().manual_seed(cid)
    return ClientMemory({"w": torch.randn(n, generator=g), "b": torch.randn(4, 2, generator=g),
                         "h": torch.randn(3, generator=g).to(torch.bfloat16),
                         "n": torch.arange(3)}, {"seen": cid})


def test_without_budget_everything_stays_in_ram():
    store = ClientStore()
    for cid in range(5):
        store.put(cid, _memory(cid))
    assert store.stats()["clients_on_disk"] == 0
    assert store.ram_bytes() == store.nbytes() == 5 * _memory(0).nbytes()


def test_budget_spills_least_recently_used_and_reads_back_identical(tmp_path):
    per = _memory(0).nbytes()
    store = ClientStore(memory_budget_mb=2.5 * per / 2**20, spill_dir=str(tmp_path))
    for cid in range(6):
        store.put(cid, _memory(cid))
    store.get(0)  # touch 0? it is already on disk: a get does not bring it back to RAM
    assert store.ram_bytes() <= 2.5 * per
    assert store.stats()["clients_on_disk"] == 4  # 0..3 spilled, 4 and 5 in RAM
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"client_{c}.safetensors" for c in range(4)]
    assert store.nbytes() == 6 * per
    for cid in range(6):
        got, want = store.get(cid), _memory(cid)
        assert got.state == {"seen": cid}
        for k, v in want.tensors.items():
            assert got.tensors[k].dtype == v.dtype and torch.equal(got.tensors[k], v), (cid, k)


def test_lru_order_follows_use():
    per = _memory(0).nbytes()
    store = ClientStore(memory_budget_mb=2 * per / 2**20)
    store.put(0, _memory(0))
    store.put(1, _memory(1))
    store.get(0)  # 1 is now the least recently used
    store.put(2, _memory(2))
    assert store.stats()["clients_on_disk"] == 1 and 1 in store._disk and 0 in store._ram


def test_spilled_client_updated_and_respilled_keeps_new_values(tmp_path):
    per = _memory(0).nbytes()
    store = ClientStore(memory_budget_mb=1 * per / 2**20, spill_dir=str(tmp_path))
    store.put(0, _memory(0))
    store.put(1, _memory(1))  # 0 -> disk
    mem = store.get(0)
    old = mem.tensors["w"]  # a view of the old file's map
    mem.tensors = {k: v + 1 if v.is_floating_point() else v for k, v in mem.tensors.items()}
    store.put(0, mem)  # 1 -> disk
    store.put(2, _memory(2))  # 0 -> disk again (rewritten while `old` still maps the old file)
    assert torch.equal(store.get(0).tensors["w"], _memory(0).tensors["w"] + 1)
    assert torch.equal(old, _memory(0).tensors["w"])  # the old map is untouched


def test_writing_to_a_mapped_view_does_not_change_the_file(tmp_path):
    store = ClientStore(memory_budget_mb=0, spill_dir=str(tmp_path))
    store.put(7, _memory(7))
    view = store.get(7).tensors["w"]
    view.add_(100.0)  # copy-on-write: private to this process
    assert torch.equal(mmap_safetensors(tmp_path / "client_7.safetensors")["w"], _memory(7).tensors["w"])


def test_run_with_tiny_budget_matches_run_in_ram(tiny_cfg, tmp_path):
    """Spilling must not change a run's result: FedPer keeps each client's head privately."""
    from fedfm.run import run

    ram = run(tiny_cfg(algorithm="fedper", out=str(tmp_path / "ram")), quiet=True)
    disk = run(tiny_cfg(algorithm="fedper", out=str(tmp_path / "disk"),
                        **{"sim.memory_budget_mb": 0.0}), quiet=True)
    assert disk["clients_on_disk"] == disk["num_clients"] and ram["clients_on_disk"] == 0
    assert disk["client_memory_ram_mb"] == 0 and disk["client_memory_mb"] == ram["client_memory_mb"] > 0
    assert disk["acc_personal_mean"] == ram["acc_personal_mean"]
    assert [c.get("acc_personal") for c in disk["clients"]] == [c.get("acc_personal") for c in ram["clients"]]


def test_put_packs_a_client_into_one_buffer_with_identical_values():
    store = ClientStore()
    store.put(3, _memory(3))
    got = store.get(3).tensors
    ptrs = {t.untyped_storage().data_ptr() for t in got.values()}
    assert len(ptrs) == 1  # one allocation for the whole client
    for k, v in _memory(3).tensors.items():
        assert got[k].dtype == v.dtype and torch.equal(got[k], v)
        assert got[k].data_ptr() % 64 == 0
