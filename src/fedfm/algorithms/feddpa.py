"""FedDPA (Yang et al., "Dual-Personalizing Adapter for Federated Foundation Models",
NeurIPS 2024): a global LoRA adapter (FedAvg-ed) and a local LoRA adapter (private) on the same
frozen FM, combined per test instance.

Model of client k for example x (`models/dual_lora.py`), in every LoRA layer and in the head:

    h = W₀ x + (1 - α(x)) · ΔW_g x + α(x) · ΔW_l,k x,      ΔW = (alpha/r) · B A

Training, per round (the paper's iterative variant, FedDPA-T):
  1. global adapter: from θ_g,t, CE of the global adapter alone (α = 0), local epochs; upload
     θ_g,k. Server: θ_g,t+1 = Σ_k n_k θ_g,k / Σ_k n_k (FedAvg; [aggregation]/[dp] apply).
  2. local adapter: CE of the combination with α = `alpha_train`, the received θ_g,t frozen,
     local epochs; θ_l,k stays in the client's memory (never sent). It starts as a copy of the
     global adapter the first time the client is sampled (so it starts from generic knowledge).
Inference: instance-wise dynamic weighting. With e(·) = the pooled last hidden state of the
model with the local adapter alone, and S_k = `instances` training examples of client k drawn
once (seeded by (run seed, client)):

    α(x) = max_weight · clamp( (1/|S_k|) Σ_{x' ∈ S_k} cos(e(x), e(x')), 0, 1 )

Reconstructed from the paper's description (global adapter for generic / test-time knowledge,
local adapter for personalisation, instance-wise weights from the similarity of a test instance
to the client's training instances) and its public code (`get_weight`: mean cosine similarity
to 5 random training instances, times a maximum weight of 0.5 by default). What is ours: the
classification head belongs to each adapter and is mixed with the same α; the local adapter's
training weight α = `alpha_train` (0.5); the local adapter is initialised from the global one;
the global adapter trains alone on CE (α = 0); the clamp at 0. Each is an option where it
matters. acc_global = the global adapter alone on the pooled test set.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from fedfm.algorithms import registry
from fedfm.algorithms.adapter import is_head
from fedfm.algorithms.base import ClientContext, ClientMemory
from fedfm.algorithms.capabilities import AVERAGING
from fedfm.algorithms.env import Env
from fedfm.algorithms.fedavg import FedAvg, train_on
from fedfm.algorithms.training import autocast, train_local
from fedfm.core.errors import ConfigError
from fedfm.core.seeds import derive_seed
from fedfm.data.federated import ClientData, Split
from fedfm.models.classifier import Classifier, get_tensors, set_tensors
from fedfm.models.dual_lora import dual_forward
from fedfm.transport.messages import ClientTask, ClientUpdate, EvalResult, fields_of

Tensors = dict[str, torch.Tensor]


@dataclass(frozen=True)
class FedDPAOptions:
    alpha_train: float = 0.5  # weight of the local adapter while training it
    max_weight: float = 0.5  # α(x) = max_weight · mean cosine similarity
    instances: int = 5  # training instances compared with each test instance
    dynamic: bool = True  # false: α = max_weight for every instance (a fixed combination)

    def check(self) -> None:
        rules = [(0 <= self.alpha_train <= 1, "feddpa.alpha_train must be in [0, 1]"),
                 (0 <= self.max_weight <= 1, "feddpa.max_weight must be in [0, 1]"),
                 (self.instances >= 1, "feddpa.instances must be >= 1")]
        for ok, message in rules:
            if not ok:
                raise ConfigError(message + ".")


def instance_weights(test_emb: torch.Tensor, ref_emb: torch.Tensor,
                     max_weight: float) -> torch.Tensor:
    """α_i = max_weight · clamp(mean_j cos(e_i, r_j), 0, 1):  (N, H), (K, H) -> (N,)."""
    sims = F.normalize(test_emb.float(), dim=-1) @ F.normalize(ref_emb.float(), dim=-1).T
    return max_weight * sims.mean(1).clamp(0.0, 1.0)


@dataclass(frozen=True)
class DualReport:
    loss: float  # the global adapter's local epochs
    local_loss: float  # the local adapter's (the combination at α = alpha_train)


class DualClient:
    """FedDPA's client half; the server half is FedAvg's (the global adapter)."""

    def __init__(self, opts: FedDPAOptions, env: Env):
        self.opts, self.env = opts, env

    def update(self, task: ClientTask, model: Classifier, data: ClientData,
               memory: ClientMemory, ctx: ClientContext) -> ClientUpdate:
        glob = dict(task.tensors)
        set_tensors(model, glob)
        loss = train_on(model, data, self.env, ctx)
        out = get_tensors(model, list(glob))
        set_tensors(model, glob)  # the local adapter trains against the received global one
        local_loss = self._train_local(model, data, memory, glob, ctx)
        return ClientUpdate(task.round, task.client_id, len(data.train), out,
                            fields_of(DualReport(loss, local_loss)))

    def _train_local(self, model: Classifier, data: ClientData, memory: ClientMemory,
                     glob: Tensors, ctx: ClientContext) -> float:
        """CE of the combination (α = alpha_train) w.r.t. the local adapter only."""
        leaves = {k: v.detach().clone().requires_grad_(True)
                  for k, v in (memory.tensors or glob).items()}
        frozen = [p for p in model.parameters() if p.requires_grad]
        for p in frozen:
            p.requires_grad_(False)
        t = self.env.train
        groups = [{"params": [v for k, v in leaves.items() if not is_head(k)], "lr": t.lr},
                  {"params": [v for k, v in leaves.items() if is_head(k)],
                   "lr": t.head_lr or t.lr}]

        def loss_fn(ids, mask, y):
            _, z = dual_forward(model, leaves, self.opts.alpha_train, ids, mask)
            return F.cross_entropy(z.float(), y)

        gen = torch.Generator().manual_seed(derive_seed(ctx.seed, 0xD9A))
        try:
            stats = train_local(groups, data.train, loss_fn, t, gen)
        finally:
            for p in frozen:
                p.requires_grad_(True)
        memory.tensors = {k: v.detach().clone() for k, v in leaves.items()}
        return stats.loss

    @torch.inference_mode()
    def _embed(self, model: Classifier, local: Tensors, split: Split) -> torch.Tensor:
        """e(x): pooled features of the local adapter alone (α = 1), (N, H)."""
        feats = []
        with autocast(self.env.precision):
            for ids, mask, _ in split.batches(self.env.eval_batch_size):
                feats.append(dual_forward(model, local, 1.0, ids, mask)[0].float())
        return torch.cat(feats) if feats else torch.zeros(0, 0)

    def alphas(self, model: Classifier, local: Tensors, data: ClientData) -> torch.Tensor:
        """α(x) for every test example of the client, (N_test,)."""
        n = len(data.test)
        if not self.opts.dynamic or len(data.train) == 0:
            return torch.full((n,), self.opts.max_weight)
        gen = torch.Generator().manual_seed(derive_seed(self.env.seed, data.client_id, 0xD9A))
        pick = torch.randperm(len(data.train), generator=gen)[: self.opts.instances]
        ref = self._embed(model, local, data.train.subset(pick.numpy()))
        return instance_weights(self._embed(model, local, data.test), ref, self.opts.max_weight)

    @torch.inference_mode()
    def evaluate(self, task: ClientTask, model: Classifier, data: ClientData,
                 memory: ClientMemory, ctx: ClientContext) -> ClientUpdate:
        glob = dict(task.tensors)
        set_tensors(model, glob)
        local = memory.tensors or glob
        alpha, correct, s = self.alphas(model, local, data), 0, 0
        with autocast(self.env.precision):
            for ids, mask, y in data.test.batches(self.env.eval_batch_size):
                _, z = dual_forward(model, local, alpha[s: s + len(y)], ids, mask)
                correct, s = correct + int((z.argmax(-1) == y).sum()), s + len(y)
        return ClientUpdate(task.round, task.client_id, s, {}, fields_of(
            EvalResult(correct, s), alpha_mean=float(alpha.mean()) if len(alpha) else None))


def build(opts: FedDPAOptions, env: Env) -> FedAvg:
    """FedAvg's server half (the global adapter, acc_global) + the dual-adapter client half."""
    client = DualClient(opts, env)
    return FedAvg(env, name="feddpa", update=client.update, evaluate=client.evaluate)


registry.register(
    "feddpa", lambda opts, env: build(opts, env), FedDPAOptions,
    "FedDPA: global LoRA (FedAvg) + private local LoRA, mixed per instance by similarity",
    capabilities=replace(AVERAGING, finetune=("lora",),
                         why="its two adapters are LoRA adapters; fedavg-ft and ditto "
                             "personalise full or head fine-tuning"),
)
