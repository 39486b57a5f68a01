"""FedMS for `task = "generate"`: the client half on a decoder LM (the server half is FedMS's).

Same two stages, same SAL schedule, same uploads as for classification (`fedms.py`), with the
causal-LM response-only loss in place of the class CE and a per-token mixture in place of the
per-example one (`models/mofm_lm.py`):

- Stage 1 (t < stage1_rounds): each client trains the LoRA of its k_c(t) active blocks of the
  *global expert* on L = -(1/|R|) Σ_{(b,t)∈R} log p_G(x_{b,t+1} | x_{b,≤t}) (R = response
  tokens) from the frozen prefix h_s (SAL: blocks below the lowest applied LoRA are cached per
  client; the model's own forward runs from h_s, so causal masks, RoPE and sliding windows are
  the model's). Uploads: exactly the active LoRA tensors; FedAvg per tensor over senders.
- Stage 2: the private *local expert* (a copy of the global one the first time) and the gate
  train on the mixture's NLL, per response token t:

      g_t = softmax(W_g · adapter(u_t) / tau),   u_t = frozen h_t (or the global expert's)
      L   = -(1/|R|) Σ_{(b,t)∈R} log(g_t,G · p_G(x_{t+1}|x_≤t) + g_t,L · p_L(x_{t+1}|x_≤t))

  The global expert is frozen (unless `global_in_stage2`); its target-token log-probs and the
  gate's inputs are cached per client (one scalar and one H-vector per response token). Only
  the gate (adapter + head, or the adapter alone) is uploaded and FedAvg-ed every stage-2 round.
- Evaluation: global expert alone = the LM's own greedy `generate`; personalised (stage 2) =
  greedy decoding of the mixture, one KV cache per expert (+ one for the frozen model when the
  gate reads it): EM as `correct`, the mixture's response-token NLL as `loss`, and each
  expert's own response loss (`loss_global_expert`, `loss_local_expert`).

There is no classification head: `fedms.k0 = 0` ("head only") is refused for generate, and so
are encoder-decoder models (the mixture is built on one decoder stack).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from fedfm.algorithms import registry, tasks
from fedfm.algorithms.base import ClientContext, ClientMemory
from fedfm.algorithms.capabilities import AVERAGING
from fedfm.algorithms.fedms import FedMS, FedMSOptions, Tensors
from fedfm.algorithms.training import autocast
from fedfm.core.errors import ConfigError
from fedfm.core.schema import RunConfig
from fedfm.data.generation import IGNORE
from fedfm.models.causal_lm import exact_match
from fedfm.models.classifier import set_tensors
from fedfm.models.lora import set_active_blocks
from fedfm.models.mofm_lm import (
    LMStep,
    LMTail,
    lm_expert_forward,
    mixture_generate,
    target_log_probs,
    token_mixture,
)
from fedfm.models.sal import PrefixSource, lowest, real_length
from fedfm.transport.messages import ClientTask, ClientUpdate


class FedMSLM(FedMS):
    """FedMS whose experts are LoRA sets of a causal LM (see the module docstring)."""

    def __init__(self, cfg, opts, num_clients: int):
        if opts.k0 == 0:
            raise ConfigError("fedms.k0 = 0 trains only the classification head, and task = "
                              "'generate' has none (the LM head stays frozen): use k0 >= 1.")
        super().__init__(cfg, opts, num_clients)

    def prepare_model(self, model) -> None:
        if getattr(model.backbone.config, "is_encoder_decoder", False):
            raise ConfigError(
                "algorithm = 'fedms' with task = 'generate' runs on decoder-only causal LMs: its "
                "per-token mixture, SAL prefix and per-expert KV caches are built on one decoder "
                "stack, and an encoder-decoder model (here "
                f"'{model.backbone.config.model_type}') has an encoder whose LoRA would have to "
                "be mixed too. Use a *ForCausalLM model, or fedavg/fedprox/local on this one.")
        super().prepare_model(model)
        self.model = model
        self.tail = LMTail(model.backbone, model.lm_head)
        self.step = LMStep(model.backbone, model.lm_head)

    # ------------------------------------------------------------------ expert views / losses

    def _expert_view(self, src: PrefixSource, tensors: Tensors, applied: set[int]):
        """(target log-probs (N, T-1), hidden states (N, T-1, H)) of one expert at the response
        positions of every row (zeros elsewhere), no grad."""
        n, width = len(src.split), max(real_length(src.split) - 1, 0)
        lp = torch.zeros(n, width)
        hid = torch.zeros(n, width, self.tail.backbone.spec.hidden)
        set_active_blocks(self.tail.backbone, applied)
        with torch.no_grad(), autocast(self.cfg.train.precision):
            for rows, mask, labels in src.batches(self.cfg.eval.batch_size):
                h, z, tgt = lm_expert_forward(self.tail, tensors,
                                              src.hidden(rows, mask.shape[1]), mask, src.start,
                                              labels)
                bi, ti = (labels[:, 1:] != IGNORE).nonzero(as_tuple=True)
                lp[rows[bi], ti] = target_log_probs(z, tgt).cpu()
                hid[rows[bi], ti] = h.float().cpu()
        return lp, hid

    def _expert_loss_fn(self, src: PrefixSource, weights: Tensors):
        """(rows, mask, labels) -> mean response-token NLL of one expert from the prefix."""
        def loss_fn(rows, mask, labels):
            _, z, tgt = lm_expert_forward(self.tail, weights, src.hidden(rows, mask.shape[1]),
                                          mask, src.start, labels)
            return -target_log_probs(z, tgt).mean() if len(tgt) else z.sum() * 0.0
        return loss_fn

    def _mixture_loss_fn(self, src: PrefixSource, weights: Tensors, gate, logp_g: torch.Tensor,
                         feat: torch.Tensor, g_sum: list):
        """(rows, mask, labels) -> the per-token mixture's response NLL (global cached)."""
        def loss_fn(rows, mask, labels):
            _, z, tgt = lm_expert_forward(self.tail, weights, src.hidden(rows, mask.shape[1]),
                                          mask, src.start, labels)
            bi, ti = (labels[:, 1:] != IGNORE).nonzero(as_tuple=True)  # R, row-major as z
            if not len(tgt):
                return z.sum() * 0.0
            r = rows[bi]
            g = gate(feat[r, ti])  # (|R|, 2)
            g_sum.append(g.weights[:, 1].detach())
            lp_l = target_log_probs(z, tgt)  # (|R|,)
            loss = -token_mixture(g.log_weights, logp_g[r, ti], lp_l).mean()
            if self.opts.local_ce_weight:
                loss = loss - self.opts.local_ce_weight * lp_l.mean()
            return loss
        return loss_fn

    # ------------------------------------------------------------------ evaluation

    def _evaluate_expert(self, tensors: Tensors, blocks: set[int], split) -> dict[str, Any]:
        """One expert with the LM's own greedy `generate`: {"correct", "total", "loss"}."""
        set_tensors(self.model, {**self.init, **tensors})
        set_active_blocks(self.model.backbone, blocks)
        return tasks.evaluate(self.model, split, self.cfg)

    def evaluate_global(self, model, split) -> dict[str, Any]:
        """The global expert (every trained LoRA block) on the pooled test set."""
        return tasks.global_result(self._evaluate_expert(self.global_, self.trained, split))

    def _mixture_correct(self, split, experts: list, gate) -> int:
        """Exact matches of the mixture's greedy answers on `split`."""
        tok = self.model.tokenizer
        eos = getattr(tok, "eos_token_id", None)
        pad = getattr(tok, "pad_token_id", None)
        pad = pad if pad is not None else (eos if eos is not None else 0)
        frozen = self.opts.gate_input == "frozen"
        runs = experts + ([(self.init, set())] if frozen else [])
        correct = 0
        for pids, pmask, refs in split.prompt_batches(self.cfg.eval.batch_size):
            with autocast(self.cfg.train.precision):
                ids = mixture_generate(self.step, runs, gate, 2 if frozen else 0, pids, pmask,
                                       tasks.max_new_tokens(self.cfg), eos, pad)
            texts = self.model.decode(ids)
            correct += sum(exact_match(p, r) for p, r in zip(texts, refs))
        return correct

    def client_evaluate(self, task: ClientTask, model, data, memory: ClientMemory,
                        ctx: ClientContext) -> ClientUpdate:
        """Personalised EM + response loss on the client's own test split: the global expert
        in stage 1, the per-token mixture (decoded greedily) in stage 2."""
        g_blocks = set(task.config["trained"])
        glob = {**self.init, **{k: v for k, v in task.tensors.items()
                                if not k.startswith("gate.")}}
        if task.config["stage"] == 1:
            m = self._evaluate_expert(glob, g_blocks, data.test)
            return ClientUpdate(task.round, task.client_id, m["total"], {}, m)
        local, l_blocks = (self._local(memory, glob, g_blocks) if self._has_local(memory)
                           else (glob, g_blocks))
        L, n = self.num_layers, len(data.test)
        src = self._source(data, "test", min(lowest(l_blocks, L), lowest(g_blocks, L)), memory)
        lp_g, feat = self._views("test", src, glob, g_blocks, memory, task.config["version"])
        lp_l, _ = self._expert_view(src, local, l_blocks)
        keep = data.test.labels[:, 1:lp_g.shape[1] + 1] != IGNORE  # (N, T-1): R
        gate = self._gate(task.tensors, memory)
        with torch.no_grad():
            g = gate(feat[keep])
            mix = token_mixture(g.log_weights, lp_g[keep], lp_l[keep])
        correct = self._mixture_correct(data.test, [(glob, g_blocks), (local, l_blocks)], gate)
        nll = lambda lp: float(-lp.mean()) if lp.numel() else None  # noqa: E731
        return ClientUpdate(task.round, task.client_id, n, {}, {
            "correct": correct, "total": n, "loss": nll(mix),
            "loss_global_expert": nll(lp_g[keep]), "loss_local_expert": nll(lp_l[keep]),
            "gate_local": float(g.weights[:, 1].mean()) if len(mix) else None})


def make_fedms(cfg: RunConfig, opts: FedMSOptions, num_clients: int) -> FedMS:
    """FedMS for the run's task (classify: FedMS, generate: FedMSLM); its registry row lives
    here, the one module that sees both client halves."""
    if tasks.task_of(cfg) == "generate":
        return FedMSLM(cfg, opts, num_clients)
    return FedMS(cfg, opts, num_clients)


registry.register(
    "fedms", lambda cfg, opts, nl, nc: make_fedms(cfg, opts, nc), FedMSOptions,
    "FedMS: SAL LoRA global expert (stage 1) + private local expert mixed by a FedAvg-ed gate",
    capabilities=replace(AVERAGING, finetune=("lora",),
                         why="its experts are LoRA adapters + head, trained block by block"),
)
