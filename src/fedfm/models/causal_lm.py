"""A decoder LM for `task = "generate"`: the HF backbone (LoRA in its blocks) + its frozen LM head.

Training loss (labels = -100 outside the response, see fedfm.data.generation):

    L = - (1 / |R|) Σ_{(b,t) ∈ R} log softmax(W_lm · h_{b,t})[x_{b,t+1}],
    R = {(b, t) : labels_{b,t+1} ≠ -100}

Logits are formed only at the positions in R (the LM head is V × H, V ~ 50k), which keeps the
step's memory at O(|R| · V) instead of O(B · T · V).

Evaluation: greedy decoding from the left-padded prompt (the HF model's own `generate`, KV
cache on, stop at eos) and exact match after SQuAD normalisation (lower-case, no punctuation, no
articles a/an/the, single spaces), token F1 and ROUGE-L (fedfm.models.text_metrics).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from fedfm.data.generation import IGNORE
from fedfm.models.text_metrics import normalize_answer, rouge_l, token_f1


def exact_match(prediction: str, reference: str) -> bool:
    return normalize_answer(prediction) == normalize_answer(reference)


class CausalLM(nn.Module):
    """`backbone` = fedfm's HFBackbone of a *ForCausalLM (its `lm` attribute holds the full LM).

    Parameter names: `backbone.<HF base-model names>` and `lm_head.*` (frozen; on tied models
    the head's weight is the embedding matrix and appears once, under `backbone.`). `head` is an
    empty module: generation has no classification head (FedPer's personal part is the LoRA of
    the last block instead, see `is_personal`).
    """

    def __init__(self, backbone: nn.Module, tokenizer=None):
        super().__init__()
        self.backbone = backbone
        lm = backbone.lm
        self.lm_head = lm.get_output_embeddings()
        for p in self.lm_head.parameters():
            p.requires_grad_(False)
        self.head = nn.ModuleDict()  # nothing: keeps `model.head.parameters()` valid
        object.__setattr__(self, "lm", lm)  # the whole HF LM, for `generate` (not a submodule)
        object.__setattr__(self, "tokenizer", tokenizer)

    def hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.backbone(input_ids, attention_mask)  # (B, T, H)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, T, V) logits, returned on the inputs' device (the model may sit on a GPU)."""
        return self.lm_head(self.hidden(input_ids, attention_mask)).to(input_ids.device)

    def is_personal(self, name: str) -> bool:
        """FedPer's personal tensors for generation: the LoRA of the last block."""
        last = self.backbone.spec.num_layers - 1
        return name.startswith("backbone.") and self.backbone.block_of(name) == last

    def response_loss(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        """Mean (or summed) next-token CE over response tokens only."""
        h = self.hidden(input_ids, attention_mask)[:, :-1]  # (B, T-1, H), model's device
        target = labels[:, 1:].to(h.device)  # (B, T-1)
        keep = target != IGNORE
        logits = self.lm_head(h[keep])  # (|R|, V)
        loss = F.cross_entropy(logits.float(), target[keep], reduction=reduction)
        return loss.to(labels.device)

    @torch.no_grad()
    def generate_ids(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                     max_new_tokens: int) -> torch.Tensor:
        """Greedy continuation (B, <= max_new_tokens) of left-padded prompts."""
        dev = next(self.lm_head.parameters()).device
        out = greedy_generate(self.lm, self.tokenizer, prompt_ids, prompt_mask, dev,
                              max_new_tokens)
        return out[:, prompt_ids.shape[1]:].cpu()

    def decode(self, ids: torch.Tensor) -> list[str]:
        return self.tokenizer.batch_decode(ids, skip_special_tokens=True)


def response_loss_fn(model: CausalLM) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor],
                                                  torch.Tensor]:
    """LossFn for fedfm.algorithms.training.train_local: (ids, mask, token labels) -> loss."""
    return lambda ids, mask, labels: model.response_loss(ids, mask, labels)


@torch.inference_mode()
def evaluate_generation(model: CausalLM, split, batch_size: int, max_new_tokens: int,
                        autocast=None) -> dict[str, float]:
    """{"correct", "total", "loss", "tokens", "f1", "rougeL"}: EM of greedy answers, mean
    response-token CE, mean token F1 and ROUGE-L F of the answers (models/text_metrics.py)."""
    import contextlib

    ctx = autocast or contextlib.nullcontext
    was = model.training
    model.eval()
    correct, loss_sum, tokens, f1, rouge = 0, 0.0, 0, 0.0, 0.0
    try:
        for ids, mask, labels in split.batches(batch_size):
            with ctx():
                loss_sum += float(model.response_loss(ids, mask, labels, reduction="sum"))
            tokens += int((labels[:, 1:] != IGNORE).sum())
        for pids, pmask, refs in split.prompt_batches(batch_size):
            with ctx():
                texts = model.decode(model.generate_ids(pids, pmask, max_new_tokens))
            correct += sum(exact_match(p, r) for p, r in zip(texts, refs))
            f1 += sum(token_f1(p, r) for p, r in zip(texts, refs))
            rouge += sum(rouge_l(p, r) for p, r in zip(texts, refs))
    finally:
        model.train(was)
    n = max(len(split), 1)
    return {"correct": correct, "total": len(split),
            "loss": loss_sum / max(tokens, 1), "tokens": tokens,
            "f1": f1 / n, "rougeL": rouge / n}


def greedy_generate(lm, tokenizer, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                    dev, max_new_tokens: int) -> torch.Tensor:
    """`lm.generate` greedily (no sampling, one beam, KV cache); pad falls back to eos, then 0.
    Shared by the decoder-only and the encoder-decoder wrappers."""
    pad = getattr(tokenizer, "pad_token_id", None)
    eos = getattr(tokenizer, "eos_token_id", None)
    pad = pad if pad is not None else (eos if eos is not None else 0)
    return lm.generate(
        input_ids=prompt_ids.to(dev), attention_mask=prompt_mask.to(dev),
        max_new_tokens=max_new_tokens,
        do_sample=False, num_beams=1, pad_token_id=pad, eos_token_id=eos, use_cache=True,
        temperature=None, top_p=None, top_k=None,
    )
