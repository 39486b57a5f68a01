"""`fedfm run CONFIG runtime=flower`: the run on Flower's simulation engine.

One virtual SuperNode per fedfm client (node config partition-id = client id); the ServerApp
runs fedfm's own run loop (`fedfm.sim.run.run`) with `FlowerClients` as the transport, so the run
folder, metrics rows and summary.json are the embedded ones (plus runtime = "flower"). Client
halves run in Ray actors (`flower.client_cpus` CPUs each), private memory in `context.state`.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

from fedfm.core.errors import ConfigError, FedfmError
from fedfm.core.schema import RunConfig
from fedfm.flower import require_flwr
from fedfm.sim.world import available_cores


def backend_config(cfg: RunConfig) -> dict[str, Any]:
    """Ray: this machine's cores, `flower.client_cpus` per client, no dashboard or logs."""
    return {"client_resources": {"num_cpus": cfg.flower.client_cpus, "num_gpus": 0.0},
            "init_args": {"num_cpus": available_cores(), "include_dashboard": False,
                          "logging_level": logging.ERROR, "log_to_driver": False}}


def run_flower(cfg: RunConfig, quiet: bool = False, resume: bool = False) -> dict[str, Any]:
    """Run `cfg` under Flower's simulation engine; returns summary.json's content."""
    if resume:
        raise ConfigError("resume works on the embedded runtime only: Flower keeps client "
                          "memory on the SuperNodes (run with runtime=embedded to resume).")
    return run_many([cfg], quiet)[0]


def run_many(cfgs: list[RunConfig], quiet: bool = True) -> list[dict[str, Any]]:
    """Several runs, one after another, in ONE Flower simulation (Ray starts once): each task
    message carries its run's config, so the client nodes build that run's world. All configs
    need the same data.num_clients (one virtual SuperNode per client)."""
    require_flwr()
    sizes = {c.data.num_clients for c in cfgs}
    if len(sizes) != 1:
        raise ConfigError(f"runs sharing one Flower simulation need one data.num_clients, "
                          f"got {sorted(sizes)}.")
    for c in cfgs:  # fail before Ray starts (tens of seconds) on a taken run folder
        out = Path(c.out)
        if not c.overwrite and out.is_dir() and any(out.iterdir()):
            raise ConfigError(f"Output folder '{out}' already holds a run. Choose another with "
                              "out=..., or pass overwrite=true to replace it.")
    from flwr.app import Context
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    from fedfm.flower.client import make_client_app
    from fedfm.flower.strategy import FlowerClients, discover
    from fedfm.sim.run import run

    n, first, many = sizes.pop(), cfgs[0], len(cfgs) > 1
    out: list[dict[str, Any]] = []
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        nodes = discover(grid, n, first.flower.connect_timeout_s)
        for cfg in cfgs:
            out.append(run(cfg, quiet=quiet, transport=lambda world, c=cfg: (
                FlowerClients.for_config(grid, nodes, c, send_config=many))))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # run_simulation's deprecation notice
        threads = max(1, int(first.flower.client_cpus))  # each actor: the CPUs Ray reserved
        client = make_client_app(None if many else first, threads)
        run_simulation(server, client, num_supernodes=n, backend_config=backend_config(first),
                       verbose_logging=False)
    if len(out) != len(cfgs):
        raise FedfmError(f"the Flower simulation ended after {len(out)} of {len(cfgs)} runs "
                         "(see the log above)")
    return out
