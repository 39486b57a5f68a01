"""fedfm on Flower: the only package that imports `flwr` (optional extra `fedfm[flower]`).

  codec.py       fedfm messages <-> Flower records (the fedfm wire blob travels as one Array)
  client.py      the ClientApp: the algorithm's client half, private memory in `context.state`
  strategy.py    FedfmStrategy: a Flower Strategy delegating to any fedfm algorithm, and
                 FlowerClients, the transport that lets fedfm's runner reach SuperNodes
  simulation.py  `fedfm run CONFIG runtime=flower`: the same run on Flower's simulation engine
  app.py         the ServerApp/ClientApp a Flower deployment loads (`fedfm.flower.app:server`)
  deploy.py      `fedfm flower superlink|supernode|run|certs|keys`: deployment helpers
  cache.py       per-process and on-disk caches of the frozen world (fresh client processes)
  nodes.py       client id <-> node id (discovery, rejoin after a restart), checks on replies
  procs.py       Flower commands in their own process group, stopped as a whole on SIGTERM
"""

from __future__ import annotations

import os

from fedfm.core.errors import ConfigError

# Flower and Ray stay offline: no telemetry, no update checks, no dependency installs.
QUIET_ENV = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
             "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "RAY_USAGE_STATS_ENABLED": "0"}


def quiet_env() -> dict[str, str]:
    """Set (setdefault) the variables that stop Flower/Ray network calls; returns them."""
    for k, v in QUIET_ENV.items():
        os.environ.setdefault(k, v)
    return dict(QUIET_ENV)


def require_flwr() -> None:
    """Raise a ConfigError naming the install command when flwr is missing."""
    quiet_env()
    try:
        import flwr  # noqa: F401
    except ImportError:
        raise ConfigError(
            "runtime=flower needs Flower, which is not installed. Install the extra: "
            "pip install 'fedfm[flower]'  (flwr[simulation]>=1.41,<1.43)."
        ) from None
