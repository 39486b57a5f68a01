"""Which weights train: `lora` (LoRA in the blocks + head), `full` (everything), `head` (head only)."""

from __future__ import annotations

from fedfm.core.errors import ConfigError
from fedfm.models.classifier import Classifier, freeze
from fedfm.models.lora import inject_lora

FINETUNE_MODES = ("lora", "full", "head")


def configure_finetune(model: Classifier, mode: str, targets: tuple[str, ...], rank: int,
                       alpha: float, seed: int) -> None:
    """Set requires_grad (and inject LoRA) on `model` for the given fine-tuning mode."""
    if mode not in FINETUNE_MODES:
        raise ConfigError(f"Unknown fine-tuning mode '{mode}'. Valid: {', '.join(FINETUNE_MODES)}.")
    freeze(model.backbone)
    if mode == "lora":
        inject_lora(model.backbone, targets, rank, alpha, seed)
    elif mode == "full":  # everything but the (frozen, never sent) embeddings
        family = getattr(model.backbone, "family", None)
        emb = (family.embeddings if family is not None else "embeddings") or "embeddings"
        for name, p in model.backbone.named_parameters():
            p.requires_grad_(not name.startswith(emb + "."))
    for p in model.head.parameters():
        p.requires_grad_(True)
