"""FedAvg-FT: FedAvg, then local fine-tuning of the global adapter before personal evaluation
(the "FedAvg + fine-tuning" personalisation baseline, e.g. Wang et al. 2019, "Federated
Evaluation of On-device Personalization"; Yu et al. 2020).

Training is FedAvg's (θ_{t+1} = Σ_k n_k θ_k / Σ_k n_k over the trainable tensors). To evaluate
client k, a copy of θ_t is fine-tuned on k's train split for `steps` AdamW steps:

    θ_k^ft = θ_t - η · Σ_{s < steps} ∇ CE(f(x_s; θ), y_s)       (AdamW, fresh, batches of train.batch_size)

and θ_k^ft is evaluated on k's test split (acc_personal). θ_t itself is never changed by it:
acc_global is the untouched global model, and the next round starts from θ_t. The fine-tuned
copy is discarded (nothing is kept on the client, nothing is sent). `steps = 0` = plain FedAvg.
The fine-tuning batches are seeded by (run seed, round, client), so runs are reproducible and
the embedded and Flower runtimes agree. Works with every `model.finetune` mode; [aggregation]
and [dp] apply to FedAvg's averaging as usual.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from fedfm.algorithms import registry
from fedfm.algorithms.base import ClientContext
from fedfm.algorithms.capabilities import AVERAGING
from fedfm.algorithms.env import Env
from fedfm.algorithms.fedavg import FedAvg
from fedfm.algorithms.training import cross_entropy_loss, param_groups, train_local
from fedfm.core.errors import ConfigError
from fedfm.data.federated import ClientData
from fedfm.models.classifier import Classifier
from fedfm.transport.messages import fields_of


@dataclass(frozen=True)
class FedAvgFTOptions:
    steps: int = 10  # fine-tuning steps per client before each personal evaluation
    lr: float | None = None  # None = train.lr (head: train.head_lr)

    def check(self) -> None:
        if self.steps < 0:
            raise ConfigError(f"fedavg-ft.steps must be >= 0, got {self.steps}.")
        if self.lr is not None and self.lr <= 0:
            raise ConfigError(f"fedavg-ft.lr must be > 0, got {self.lr}.")


@dataclass(frozen=True)
class FineTuneReport:
    """Appended to a client's evaluation metrics: the fine-tuning it ran first."""

    ft_steps: int
    ft_loss: float


def fine_tuner(env: Env, opts: FedAvgFTOptions):
    """model (holding θ_t) -> fine-tuned in place for `steps` steps; returns its metrics."""
    train = dataclasses.replace(env.train, max_steps=opts.steps,
                                local_epochs=max(1, opts.steps))  # every epoch >= 1 step
    lr = opts.lr or env.train.lr
    head_lr = opts.lr or env.train.head_lr

    def personalise(model: Classifier, data: ClientData, ctx: ClientContext) -> dict[str, Any]:
        if opts.steps == 0 or len(data.train) == 0:
            return {}
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        stats = train_local(param_groups(named, lr, head_lr), data.train,
                            cross_entropy_loss(model), train, ctx.generator())
        return fields_of(FineTuneReport(stats.steps, stats.loss))

    return personalise


registry.register(
    "fedavg-ft",
    lambda opts, env: FedAvg(env, name="fedavg-ft", personalise=fine_tuner(env, opts)),
    FedAvgFTOptions,
    "FedAvg, then each client fine-tunes a copy of the global adapter for `steps` steps "
    "before its personal evaluation", capabilities=AVERAGING, stateless=True,
)
