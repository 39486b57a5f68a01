"""Vision models: `tiny-vit`, a small randomly initialised ViT saved as an ordinary Hugging Face
folder, and `save_vit_folder` to write one from any ViT/DeiT/DINOv2 config.

No pre-trained ViT ships offline (no PyPI/Debian package carries ViT weights), so `tiny-vit`
is what the demo and the tests train: random init, learnt from scratch by full fine-tuning.
A real checkpoint (e.g. google/vit-base-patch16-224 saved with safetensors) runs the same way
with `model.name = "hf"`, `model.path = <its folder>`.

The folder holds config.json, model.safetensors and preprocessor_config.json, so it goes
through exactly the path a user's checkpoint takes (AutoModel + AutoImageProcessor, local files,
safetensors only).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

# 28x28 images in 7x7 patches: 16 patch tokens + [CLS]; 4 blocks, hidden 64, 4 heads.
TINY_VIT = dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                intermediate_size=128, image_size=28, patch_size=7, num_channels=3,
                hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
TINY_VIT_SEED = 0
TINY_VIT_VERSION = 1  # bump when TINY_VIT changes: a new cache folder is written


def cache_root() -> Path:
    root = os.environ.get("FEDFM_CACHE") or Path.home() / ".cache" / "fedfm"
    return Path(root) / "models"


def save_vit_folder(folder: Path, config, seed: int = 0, mean=(0.5,) * 3,
                    std=(0.5,) * 3) -> Path:
    """A random-init vision model (AutoModel.from_config, weights drawn under `seed` in a
    forked RNG, so the global generator is untouched) + its image processor, saved to `folder`
    as safetensors + JSON."""
    from fedfm.data.images import quiet_transformers

    with quiet_transformers():
        from transformers import AutoModel, ViTImageProcessor
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = AutoModel.from_config(config)
        folder.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(str(folder), safe_serialization=True)
        size, channels = config.image_size, config.num_channels
        ViTImageProcessor(size={"height": size, "width": size}, image_mean=list(mean)[:channels],
                          image_std=list(std)[:channels]).save_pretrained(str(folder))
    return folder


def tiny_vit_config():
    from transformers import ViTConfig

    return ViTConfig(**TINY_VIT)


def tiny_vit_folder() -> Path:
    """$FEDFM_CACHE/models/tiny-vit-v1: written once (atomically), then reused."""
    folder = cache_root() / f"tiny-vit-v{TINY_VIT_VERSION}"
    if (folder / "model.safetensors").is_file() and (folder / "preprocessor_config.json").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".tiny-vit-"))
    try:
        save_vit_folder(tmp, tiny_vit_config(), TINY_VIT_SEED)
        (tmp / "fedfm.json").write_text(json.dumps({"tiny_vit": TINY_VIT, "seed": TINY_VIT_SEED}))
        try:
            tmp.rename(folder)
        except OSError:  # another process wrote it first
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder



def image_encoder_for(cfg, folder: Path):
    """The image processor of a vision model's folder (fedfm.data.images.ImageEncoder)."""
    from fedfm.data.images import load_image_encoder

    return load_image_encoder(folder)
