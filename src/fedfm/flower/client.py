"""The fedfm ClientApp: one SuperNode = one fedfm client (its data partition).

Per message (train | evaluate):
  blob -> decode -> ClientTask for THIS node's client (else refused)
  memory_k <- context.state          (private; never sent)
  reply = algorithm.client_update / client_evaluate(task, model, data_k, memory_k, ctx)
          with ctx.seed = derive_seed(run seed, round, client, phase)  (as the embedded runner)
  memory_k -> context.state          (after training)
  reply -> encode(comm.dtype) -> Message
A `query` message answers the node's client id (the server maps client ids to node ids).

The run config comes from the app (simulation: `make_client_app(cfg)`) or from Flower's run
config key `fedfm-config` (deployment: a JSON RunConfig written by `fedfm flower run`). The
node's client id is its node config `partition-id`.
"""

from __future__ import annotations

import json
import logging
import time

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from fedfm.config import RunConfig, build_config
from fedfm.errors import PayloadError
from fedfm.flower.cache import cached_world
from fedfm.flower.codec import blob_of, load_memory, save_memory, to_content
from fedfm.messages import ClientTask, decode, encode
from fedfm.setup import set_threads
from fedfm.sim.clients import EVALUATE, TRAIN, run_client

log = logging.getLogger("fedfm")
CONFIG_KEY = "fedfm-config"
_CONFIGS: dict[str, RunConfig] = {}


def config_from_context(context: Context) -> RunConfig:
    """The RunConfig a deployment passes as the run config value `fedfm-config` (JSON)."""
    text = context.run_config.get(CONFIG_KEY)
    if not isinstance(text, str):
        raise PayloadError(f"Flower run config has no '{CONFIG_KEY}' (a JSON fedfm config); "
                           "start runs with `fedfm flower run CONFIG`.")
    if text not in _CONFIGS:
        _CONFIGS[text] = build_config(json.loads(text))
    return _CONFIGS[text]


def partition_id(context: Context, num_clients: int) -> int:
    """This node's fedfm client id (node config `partition-id`), checked against the run."""
    pid = context.node_config.get("partition-id")
    if not isinstance(pid, int) or not 0 <= pid < num_clients:
        raise PayloadError(f"node config partition-id={pid!r} is not a client id in "
                           f"0..{num_clients - 1} (start the SuperNode with "
                           f"--node-config 'partition-id=K num-partitions={num_clients}')")
    return pid


def handle(msg: Message, context: Context, cfg: RunConfig, phase: int) -> Message:
    """Run the client half for one task message; returns the reply message."""
    set_threads(cfg)
    world = cached_world(cfg)
    cid = partition_id(context, world.data.num_clients)
    t0 = time.perf_counter()
    task = decode(blob_of(msg.content))
    if not isinstance(task, ClientTask) or task.client_id != cid:
        raise PayloadError(f"node of client {cid} received a message that is not its task")
    memory = load_memory(context.state)
    reply, compute_s = run_client(world, task, memory, phase)
    if phase == TRAIN:
        save_memory(context.state, memory)
    blob = encode(reply, cfg.comm.dtype)
    info = {"compute_s": compute_s, "client_wall_s": time.perf_counter() - t0}
    return Message(to_content(blob, info), reply_to=msg)


def make_client_app(cfg: RunConfig | None = None) -> ClientApp:
    """The ClientApp; `cfg` fixes the run config (simulation), else it comes from the run."""
    app = ClientApp()

    def config(context: Context) -> RunConfig:
        return cfg if cfg is not None else config_from_context(context)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        return handle(msg, context, config(context), TRAIN)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        return handle(msg, context, config(context), EVALUATE)

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        pid = context.node_config.get("partition-id", -1)
        return Message(RecordDict({"fedfm.node": ConfigRecord({"partition-id": pid})}),
                       reply_to=msg)

    return app
