"""`fedfm run CONFIG runtime=flower`: the run on Flower's simulation engine.

One virtual SuperNode per fedfm client (node config partition-id = client id); the ServerApp
runs fedfm's own run loop (`fedfm.run.run`) with `FlowerClients` as the transport, so the run
folder, metrics rows and summary.json are the embedded ones (plus runtime = "flower"). Client
halves run in Ray actors (`flower.client_cpus` CPUs each), private memory in `context.state`.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

from fedfm.config import RunConfig
from fedfm.errors import ConfigError, FedfmError
from fedfm.flower import require_flwr
from fedfm.setup import available_cores


def backend_config(cfg: RunConfig) -> dict[str, Any]:
    """Ray: this machine's cores, `flower.client_cpus` per client, no dashboard or logs."""
    return {"client_resources": {"num_cpus": cfg.flower.client_cpus, "num_gpus": 0.0},
            "init_args": {"num_cpus": available_cores(), "include_dashboard": False,
                          "logging_level": logging.ERROR, "log_to_driver": False}}


def run_flower(cfg: RunConfig, quiet: bool = False, resume: bool = False) -> dict[str, Any]:
    """Run `cfg` under Flower's simulation engine; returns summary.json's content."""
    require_flwr()
    if resume:
        raise ConfigError("resume works on the embedded runtime only: Flower keeps client "
                          "memory on the SuperNodes (run with runtime=embedded to resume).")
    from flwr.app import Context
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    from fedfm.flower.client import make_client_app
    from fedfm.flower.strategy import FlowerClients, discover
    from fedfm.run import run

    out: dict[str, Any] = {}
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        nodes = discover(grid, cfg.data.num_clients, cfg.flower.connect_timeout_s)
        out["summary"] = run(cfg, quiet=quiet, transport=lambda world: FlowerClients(
            grid, nodes, cfg.comm.dtype, cfg.flower.reply_timeout_s))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # run_simulation's deprecation notice
        run_simulation(server, make_client_app(cfg), num_supernodes=cfg.data.num_clients,
                       backend_config=backend_config(cfg), verbose_logging=False)
    if "summary" not in out:
        raise FedfmError("the Flower simulation ended without a result (see the log above)")
    return out["summary"]
