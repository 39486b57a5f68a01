"""FedMoE / randomMoE client validation, per run task: the validation score that drives expert
recommendation and the activation profile p that drives stage 1.

    p[i, j] = n[i, j] / Σ_j n[i, j],   n[i, j] = token->expert assignments of MoE block i to
              expert j over the real (non-pad) tokens of the validation split (rows sum to 1)

- classify: accuracy and mean cross-entropy of the label.
- generate: the causal-LM response-only loss (models/causal_lm.py; teacher forcing, so p counts
  every real prompt and response token the model reads) as `val_loss`; `val_acc` = exact match
  of greedy answers, computed only when the score needs it (`fedmoe.score = "accuracy"`), since
  decoding costs far more than the teacher-forced pass.
"""

from __future__ import annotations

import numpy as np
import torch

from fedfm.algorithms.training import autocast


def _shares(counts, model, loads) -> torch.Tensor:
    if not torch.is_tensor(counts):  # empty split
        counts = loads(model) * 0
    return counts / counts.sum(1, keepdim=True).clamp_min(1.0)


@torch.inference_mode()
def validate(model, split, batch_size: int, precision: str,
             loads) -> tuple[float, float, torch.Tensor]:
    """Classification: (accuracy, mean CE, p); `loads(model)` = (L, E) assignments of the
    last forward (moe_backend)."""
    counts, correct, loss = 0, 0, 0.0
    for ids, mask, y in split.batches(batch_size):
        with autocast(precision):
            logits = model(ids, mask).float()  # (B, C)
        correct += int((logits.argmax(-1) == y).sum())
        loss += float(torch.nn.functional.cross_entropy(logits, y, reduction="sum"))
        counts = counts + loads(model)
    n = max(len(split), 1)
    return correct / n, loss / n, _shares(counts, model, loads)


@torch.inference_mode()
def validate_generate(model, split, cfg, loads,
                      with_accuracy: bool) -> tuple[float | None, float, torch.Tensor]:
    """Generation: (exact match or None, mean response-token CE, p)."""
    from fedfm.data.generation import IGNORE

    counts, loss, tokens = 0, 0.0, 0
    was = model.training
    model.eval()
    try:
        for ids, mask, labels in split.batches(cfg.eval.batch_size):
            with autocast(cfg.train.precision):
                loss += float(model.response_loss(ids, mask, labels, reduction="sum"))
            tokens += int((labels[:, 1:] != IGNORE).sum())
            counts = counts + loads(model)
    finally:
        model.train(was)
    acc = None
    if with_accuracy:
        from fedfm.algorithms import tasks

        m = tasks.evaluate(model, split, cfg)
        acc = m["correct"] / max(m["total"], 1)
    return acc, loss / max(tokens, 1), _shares(counts, model, loads)


def split_val(train, fraction: float, seed: int):
    """(train', val): a fixed `fraction` of the client's train split, seeded per client.
    Clients with fewer than 5 examples validate on their training data."""
    n = len(train)
    n_val = int(round(fraction * n))
    if n < 5 or n_val < 1:
        return train, train
    perm = np.random.default_rng(seed).permutation(n)
    return train.subset(np.sort(perm[n_val:])), train.subset(np.sort(perm[:n_val]))
