"""The fedfm ClientApp: one SuperNode = one fedfm client (its data partition).

Per message (train | evaluate):
  blob -> decode -> ClientTask for THIS node's client (else refused)
  memory_k <- context.state          (private; never sent)
  reply = algorithm.client_update / client_evaluate(task, model, data_k, memory_k, ctx)
          with ctx.seed = derive_seed(run seed, round, client, phase)  (as the embedded runner)
  memory_k -> context.state          (after training)
  reply -> encode(comm.dtype) -> Message
A `query` message answers the node's client id (the server maps client ids to node ids).

The run config comes from the message (`fedfm.info` key `fedfm-config`: several runs share one
simulation, e.g. the parity test), else from the app (`make_client_app(cfg)`), else from
Flower's run config key `fedfm-config` (deployment: a JSON RunConfig written by
`fedfm flower run`). Memory is kept per run config (state key `fedfm.memory.<cfg hash>`). The
node's client id is its node config `partition-id`.
"""

from __future__ import annotations

import json
import logging
import time

import torch
from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from fedfm.config import RunConfig, build_config
from fedfm.core.errors import PayloadError
from fedfm.flower.cache import cached_world
from fedfm.flower.codec import (
    MEMORY,
    blob_of,
    info_of,
    load_memory,
    node_content,
    save_memory,
    to_content,
)
from fedfm.sim.clients import EVALUATE, TRAIN, run_client
from fedfm.sim.world import set_threads
from fedfm.transport.messages import ClientTask, decode, encode

log = logging.getLogger("fedfm")
CONFIG_KEY = "fedfm-config"
_CONFIGS: dict[str, RunConfig] = {}


def parse_config(text: object, where: str) -> RunConfig:
    """A JSON RunConfig (as `RunConfig.to_dict()` writes it), validated and memoised."""
    if not isinstance(text, str):
        raise PayloadError(f"{where} has no '{CONFIG_KEY}' (a JSON fedfm config); start runs "
                           "with `fedfm flower run CONFIG`.")
    if text not in _CONFIGS:
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as e:
            raise PayloadError(f"{where}: '{CONFIG_KEY}' is not JSON: {e}") from None
        _CONFIGS[text] = build_config(raw)
    return _CONFIGS[text]


def config_for(msg: Message, context: Context, fixed: RunConfig | None) -> RunConfig:
    """Message's config, else the app's, else the deployment's run config."""
    text = info_of(msg.content).get(CONFIG_KEY)
    if text is not None:
        return parse_config(text, "message")
    if fixed is not None:
        return fixed
    return parse_config(context.run_config.get(CONFIG_KEY), "Flower run config")


def partition_id(context: Context, num_clients: int) -> int:
    """This node's fedfm client id (node config `partition-id`), checked against the run."""
    pid = context.node_config.get("partition-id")
    if not isinstance(pid, int) or not 0 <= pid < num_clients:
        raise PayloadError(f"node config partition-id={pid!r} is not a client id in "
                           f"0..{num_clients - 1} (start the SuperNode with "
                           f"--node-config 'partition-id=K num-partitions={num_clients}')")
    return pid


def handle(msg: Message, context: Context, cfg: RunConfig, phase: int,
           threads: int | None = None) -> Message:
    """Run the client half for one task message; returns the reply message.
    threads: torch threads when train.threads is unset (simulation: the CPUs Ray gave us)."""
    if cfg.train.threads is None and threads:
        torch.set_num_threads(threads)
    else:
        set_threads(cfg)
    world = cached_world(cfg, cfg.flower.disk_cache)
    cid = partition_id(context, world.data.num_clients)
    t0 = time.perf_counter()
    task = decode(blob_of(msg.content))
    if not isinstance(task, ClientTask) or task.client_id != cid:
        raise PayloadError(f"node of client {cid} received a message that is not its task")
    key = f"{MEMORY}.{cfg.hash()}"
    kept = key in context.state.array_records
    memory = load_memory(context.state, key)
    reply, compute_s = run_client(world, task, memory, phase)
    if phase == TRAIN or kept:  # as the embedded ClientStore: evaluation may update kept memory
        save_memory(context.state, memory, key)
    blob = encode(reply, cfg.comm.dtype)
    info = {"compute_s": compute_s, "client_wall_s": time.perf_counter() - t0}
    return Message(to_content(blob, info), reply_to=msg)


def make_client_app(cfg: RunConfig | None = None, threads: int | None = None) -> ClientApp:
    """The ClientApp; `cfg` fixes the run config (simulation), else it comes from the run."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        return handle(msg, context, config_for(msg, context, cfg), TRAIN, threads)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        return handle(msg, context, config_for(msg, context, cfg), EVALUATE, threads)

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        return Message(node_content(context.node_config.get("partition-id", -1)), reply_to=msg)

    return app
