"""The apps a Flower deployment loads: `fedfm.flower.app:server` and `fedfm.flower.app:client`.

Both read the fedfm RunConfig from the run config key `fedfm-config` (JSON), which
`fedfm flower run CONFIG` writes into the generated Flower App's pyproject.toml; with
`fedfm flower run CONFIG --resume` the key `fedfm-resume = true` makes the ServerApp continue
the run in `out` from its last checkpoint (fedfm.sim.checkpoint), as `fedfm resume` does. fedfm must be
installed (with the `flower` extra) on the SuperLink and on every SuperNode.
"""

from __future__ import annotations

import json
import logging

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedfm.core.errors import ConfigError
from fedfm.flower import quiet_env
from fedfm.flower.client import CONFIG_KEY, make_client_app, parse_config
from fedfm.flower.strategy import FlowerClients, discover

quiet_env()
log = logging.getLogger("fedfm")
RESUME_KEY = "fedfm-resume"


def resumable() -> list[str]:
    """Algorithms whose clients keep no private memory between rounds (`stateless=True` in
    their registry rows; checked for every registered algorithm by tests/test_flower.py): a
    resumed deployment run is a new Flower run, whose SuperNodes start with an empty
    context.state, so only these resume exactly."""
    from fedfm.algorithms import registry

    return registry.supporting(stateless=True)


def check_resumable(algorithm: str) -> None:
    if algorithm not in resumable():
        raise ConfigError(
            f"--resume on a Flower deployment works for {', '.join(resumable())} only: "
            f"'{algorithm}' keeps private client memory in each SuperNode's run context, which "
            f"a new Flower run does not inherit, so the resumed run would silently differ. "
            f"Start it again (overwrite=true) or resume it on the embedded runtime.")


def make_server_app() -> ServerApp:
    """fedfm's run loop (fedfm.sim.run.run) with the federation's SuperNodes as its clients."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        from fedfm.sim.run import run

        cfg = parse_config(context.run_config.get(CONFIG_KEY), "Flower run config")
        resume = context.run_config.get(RESUME_KEY) is True
        if resume:
            check_resumable(cfg.algorithm)
        nodes = discover(grid, cfg.data.num_clients, cfg.flower.connect_timeout_s)
        summary = run(cfg, quiet=True, resume=resume,
                      transport=lambda world: FlowerClients.for_config(grid, nodes, cfg))
        keys = ("algorithm", "rounds", "acc_global", "acc_personal_mean", "bytes_up",
                "bytes_down", "wall_s")
        print(json.dumps({k: summary.get(k) for k in keys}), flush=True)
        print(f"run folder: {cfg.out}", flush=True)

    return app


server = make_server_app()
client = make_client_app()
