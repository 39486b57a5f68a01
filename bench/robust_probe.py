import sys
import time

sys.path.insert(0, ".")
from fedfm.config import build_config
from fedfm.sim.attacks import run_attacked
from tests.conftest import tiny_raw

N = int(sys.argv[1])
SC = {"rounds": 8, "data.num_clients": 10, "data.partition": "iid", "train.lr": 0.02,
      "train.local_epochs": 5, "data.synthetic_size": N}
A = {0, 1, 2}
def acc(extra, att=None, kind=None):
    t = time.time()
    rows, _ = run_attacked(build_config(tiny_raw(**SC, **extra)), att or set(), kind) if att else run_attacked(build_config(tiny_raw(**SC, **extra)))
    return round(rows[-1]["acc_global"], 4), round(time.time() - t, 1)
print("clean", acc({}))
print("drop", acc({"availability.drop_prob": 0.3}))
for m, k in [("median", "scale"), ("trimmed_mean", "scale"), ("multi_krum", "random"), ("median","random"), ("trimmed_mean","random"), ("multi_krum","scale")]:
    print(m, k, acc({"aggregation.method": m, "aggregation.byzantine": 3, "aggregation.trim_fraction": 0.3}, A, k))
print("fedavg scale", acc({}, A, "scale"))
