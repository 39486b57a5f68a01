"""Atomic checkpoints after every round, and `fedfm resume RUN_DIR`.

RUN_DIR/checkpoint/round-NNNN.safetensors holds everything needed to continue after round N:
  tensors  server/<key>          algorithm.server_state() tensors (global model, expert maps...)
           client/<id>/<key>     every client's private memory (ClientStore)
           pending/<i>/task|update  stragglers' encoded messages (they arrive next round)
           rng/torch             torch's global RNG state (e.g. dropout); numpy/python in JSON
  JSON     (safetensors __metadata__) round, config hash, server_state JSON, clients' JSON state,
           metric history, per-client evaluation metrics, numpy + python RNG states
Everything else we draw is derived from (seed, round, client), so it needs no state.
Writing is atomic: temp file -> fsync -> rename -> fsync(dir); then RUN_DIR/checkpoint/latest.json
(the same way) names the file and its SHA-256. Loading checks the checksum, then parses
(safetensors + JSON only — never pickle), so a truncated or edited file is a clear PayloadError.
The checksum detects corruption and accidental edits, not an attacker who can rewrite both files.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from fedfm.algorithms.base import ClientMemory
from fedfm.config import RunConfig
from fedfm.core.errors import ConfigError, PayloadError
from fedfm.transport.messages import read_header

VERSION = 1


def config_fingerprint(cfg: RunConfig) -> str:
    """SHA-256 of the config minus where it is written (`out`, `overwrite`)."""
    d = cfg.to_dict()
    d.pop("out", None), d.pop("overwrite", None)
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def atomic_write(path: Path, data: bytes) -> None:
    """temp file in the same folder -> fsync -> rename over `path` -> fsync the folder."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _bytes_tensor(b: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(b), dtype=torch.uint8) if b else torch.zeros(0, dtype=torch.uint8)


def rng_states() -> tuple[torch.Tensor, dict[str, Any]]:
    np_state = np.random.get_state()
    py_state = random.getstate()
    return torch.get_rng_state(), {
        "numpy": [np_state[0], np_state[1].tolist(), *[float(x) for x in np_state[2:]]],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }


def set_rng_states(torch_state: torch.Tensor, states: dict[str, Any]) -> None:
    torch.set_rng_state(torch_state)
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), int(pos), int(has_gauss), gauss))
    version, internal, gauss_next = states["python"]
    random.setstate((version, tuple(internal), gauss_next))


def snapshot(runner, rnd: int, rows: list[dict[str, Any]], fingerprint: str) -> bytes:
    """Everything after round `rnd` (1-based count of finished rounds) as one safetensors blob."""
    s_tensors, s_state = runner.algo.server_state()
    tensors = {f"server/{k}": v for k, v in s_tensors.items()}
    clients = {}
    for cid, mem in runner.store.items():
        tensors.update({f"client/{cid}/{k}": v for k, v in mem.tensors.items()})
        clients[str(cid)] = {"keys": sorted(mem.tensors), "state": mem.state}
    for i, (task_blob, update_blob) in enumerate(runner.inbox.pending):
        tensors[f"pending/{i}/task"] = _bytes_tensor(task_blob)
        tensors[f"pending/{i}/update"] = _bytes_tensor(update_blob)
    torch_rng, rng = rng_states()
    tensors["rng/torch"] = torch_rng
    meta = {"version": VERSION, "round": rnd, "config": fingerprint,
            "server_keys": sorted(s_tensors), "server_state": s_state, "clients": clients,
            "pending": len(runner.inbox.pending), "rows": rows, "rng": rng,
            "client_metrics": {str(k): v for k, v in runner.client_metrics.items()}}
    return st_save(unshared(tensors), metadata={"fedfm_checkpoint": json.dumps(meta, allow_nan=True)})


def unshared(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous CPU tensors, each with its own storage (safetensors refuses shared storage,
    e.g. a client memory holding a cached view of another of its tensors): later sharers are
    copied; values are unchanged."""
    seen, out = set(), {}
    for k, v in tensors.items():
        v = v.detach().contiguous().cpu()
        ptr = v.untyped_storage().data_ptr()
        if ptr in seen and v.numel():
            v = v.clone()
        seen.add(ptr)
        out[k] = v
    return out


class Checkpointer:
    """Writes RUN_DIR/checkpoint/ after rounds (when [checkpoint] enabled) and restores it."""

    def __init__(self, run_path: str | Path, cfg: RunConfig):
        self.cfg, self.folder = cfg, Path(run_path) / "checkpoint"
        self.fingerprint = config_fingerprint(cfg)

    def save(self, rnd: int, runner, rows: list[dict[str, Any]]) -> Path | None:
        """Checkpoint after `rnd` finished rounds (if enabled and due); returns the file."""
        c = self.cfg.checkpoint
        if not c.enabled or (rnd % c.every and rnd != self.cfg.rounds):
            return None
        self.folder.mkdir(parents=True, exist_ok=True)
        blob = snapshot(runner, rnd, rows, self.fingerprint)
        path = self.folder / f"round-{rnd:04d}.safetensors"
        atomic_write(path, blob)
        latest = {"version": VERSION, "round": rnd, "file": path.name, "bytes": len(blob),
                  "sha256": hashlib.sha256(blob).hexdigest(), "config": self.fingerprint}
        atomic_write(self.folder / "latest.json", json.dumps(latest, indent=1).encode())
        for old in sorted(self.folder.glob("round-*.safetensors"))[: -c.keep]:
            old.unlink()
        return path

    def read(self) -> dict[str, Any]:
        """Verify and parse the latest checkpoint -> {"meta", "tensors"}; clear errors."""
        latest_path = self.folder / "latest.json"
        if not latest_path.is_file():
            raise ConfigError(f"No checkpoint in '{self.folder.parent}': the run had "
                              f"checkpoint.enabled=false, or stopped before its first round "
                              f"finished.")
        try:
            latest = json.loads(latest_path.read_text())
            path = self.folder / Path(str(latest["file"])).name
            expected_sha, expected_len = str(latest["sha256"]), int(latest["bytes"])
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError):
            raise PayloadError(f"Checkpoint index '{latest_path}' is corrupt.") from None
        if not path.is_file():
            raise PayloadError(f"Checkpoint file '{path}' named by latest.json is missing.")
        blob = path.read_bytes()
        if len(blob) != expected_len:
            raise PayloadError(f"Checkpoint '{path}' is truncated or altered: {len(blob)} bytes, "
                               f"expected {expected_len}.")
        if hashlib.sha256(blob).hexdigest() != expected_sha:
            raise PayloadError(f"Checkpoint '{path}' failed its SHA-256 check (tampered or "
                               f"corrupt); refusing to resume from it.")
        return parse(blob, path)

    def restore(self, runner, rows: list[dict[str, Any]]) -> int:
        """Load the latest checkpoint into runner/algorithm/store/RNGs; returns rounds done."""
        ck = self.read()
        meta, tensors = ck["meta"], ck["tensors"]
        if meta["config"] != self.fingerprint:
            raise ConfigError(f"Refusing to resume: the checkpoint was made with config "
                              f"{meta['config']}, this config is {self.fingerprint}. Resume with "
                              f"the run's own config.json (no changed keys).")
        runner.algo.load_server_state(
            {k: tensors[f"server/{k}"] for k in meta["server_keys"]}, meta["server_state"])
        for cid, info in meta["clients"].items():
            mem = ClientMemory({k: tensors[f"client/{cid}/{k}"] for k in info["keys"]},
                               info["state"])
            runner.store.put(int(cid), mem)
        runner.inbox.pending = [
            (tensors[f"pending/{i}/task"].numpy().tobytes(),
             tensors[f"pending/{i}/update"].numpy().tobytes()) for i in range(meta["pending"])]
        runner.client_metrics = {int(k): v for k, v in meta["client_metrics"].items()}
        rows[:] = meta["rows"]
        history = "".join(json.dumps(r) + "\n" for r in rows)
        atomic_write(self.folder.parent / "metrics.jsonl", history.encode())
        set_rng_states(tensors["rng/torch"], meta["rng"])
        return int(meta["round"])


def parse(blob: bytes, path: Path) -> dict[str, Any]:
    try:
        tensors = st_load(blob)
        meta = json.loads(read_header(blob)["__metadata__"]["fedfm_checkpoint"])
    except PayloadError:
        raise
    except Exception as e:
        raise PayloadError(f"Checkpoint '{path}' cannot be parsed: {e}") from None
    if not isinstance(meta, dict) or meta.get("version") != VERSION:
        raise PayloadError(f"Checkpoint '{path}' has an unknown format version.")
    return {"meta": meta, "tensors": tensors}
