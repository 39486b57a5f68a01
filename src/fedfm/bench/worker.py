"""Run one bench cell in a fresh process: `python -m fedfm.bench.worker CELL.json`.

CELL.json is the cell's full config (`RunConfig.to_dict()`), written by the grid. A fresh process
per cell gives each run its own peak-memory figure (ru_maxrss never goes down within a process)
and keeps one crashing cell from taking the grid down. Exit 2 on a FedfmError, 1 on a crash.
"""

from __future__ import annotations

import json
import sys
import traceback

from fedfm.core.errors import FedfmError


def main(argv: list[str]) -> int:
    from fedfm.core.offline import set_offline_env

    set_offline_env()
    from fedfm.config import build_config
    from fedfm.run import run

    try:
        with open(argv[0]) as fh:
            cfg = build_config(json.load(fh))
        run(cfg, quiet=True)
    except FedfmError as e:
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        traceback.print_exc()
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
