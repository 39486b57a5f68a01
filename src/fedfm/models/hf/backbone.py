"""HFBackbone: the user's Hugging Face base model (no LM head), driven by fedfm through hooks.

Its parameter names are exactly the HF base model's (`encoder.layer.3.attention.self.query.*`,
`layers.3.self_attn.q_proj.*`, `h.3.attn.c_attn.*`): the wrapper shares the base model's module,
parameter and buffer tables, so LoRA injected into the backbone is what the model's own forward
runs, and checkpoints/exports need no renaming.

SAL's frozen prefix (design note §4, "prefix-skip"): the model's *own* forward always runs, so
masks, RoPE, sliding windows and the final norm stay the model's business.

    prefix(x, s)   = h_s, the hidden states entering block s: a forward pre-hook on block s
                     records its input and stops the forward (cost: blocks [0, s) only)
    run_from(h_s)  = the last hidden state from h_s: blocks 0..s-2 return their input, block
                     s-1 returns h_s (s = 0: a pre-hook replaces block 0's input), the rest and
                     the final norm run as usual. Equal to the full forward (tests).
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass

import torch
from torch import nn

from fedfm.models.classifier import pool
from fedfm.models.hf.family import FamilySpec, get_path, resolve
from fedfm.models.lora import register_block_list


@dataclass(frozen=True)
class BackboneSpec:
    """Geometry the algorithms read (`hidden`, `num_layers` as with the old `Bert.spec`)."""

    hidden: int
    num_layers: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int | None
    model_type: str
    pooling: str
    padding_side: str
    decoder: bool


class StopForward(Exception):
    """Raised by a hook to end a forward pass early (prefix computation)."""


def backbone_spec(config, family: FamilySpec, num_layers: int) -> BackboneSpec:
    hidden = int(config.hidden_size)
    heads = int(getattr(config, "num_attention_heads", 0) or 0)
    kv = family.config_value(config, family.num_kv_heads) or heads
    hd = family.config_value(config, family.head_dim) or (hidden // heads if heads else 0)
    ffn = family.config_value(config, family.ffn) or getattr(config, "intermediate_size", None)
    if family.ffn == "mlp_ratio":  # DINOv2: FFN width = int(hidden * mlp_ratio)
        ffn = int(hidden * config.mlp_ratio)
    if ffn is None and family.ffn_unset_ratio:  # GPT-2: n_inner = None means 4 * n_embd
        ffn = family.ffn_unset_ratio * hidden
    return BackboneSpec(hidden, num_layers, heads, int(kv), int(hd), ffn, family.name,
                        family.pooling, family.padding_side, family.decoder)


class HFBackbone(nn.Module):
    """forward(input_ids, attention_mask) -> (B, T, H) last hidden state of the base model."""

    def __init__(self, base: nn.Module, family: FamilySpec | None = None):
        super().__init__()
        family = family or resolve(base)
        object.__setattr__(self, "base", base)  # not a submodule: names stay the base model's
        for table in ("_parameters", "_buffers", "_modules", "_non_persistent_buffers_set"):
            object.__setattr__(self, table, getattr(base, table))
        self.family = family
        self.config = base.config
        self.spec = backbone_spec(base.config, family, len(self.blocks))
        register_block_list(family.blocks)
        self._block_re = re.compile(rf"(?:^|\.){re.escape(family.blocks)}\.(\d+)(?:\.|$)")
        if hasattr(base.config, "use_cache"):
            base.config.use_cache = False

    @property
    def blocks(self) -> nn.ModuleList:
        return get_path(self.base, self.family.blocks)

    @property
    def device(self) -> torch.device:
        return self.blocks[0].parameters().__next__().device

    @property
    def num_layers(self) -> int:
        return self.spec.num_layers

    @property
    def hidden(self) -> int:
        return self.spec.hidden

    def block_of(self, name: str) -> int | None:
        """Index of the block a parameter/module name (with any prefix) belongs to."""
        m = self._block_re.search(name)
        return int(m.group(1)) if m else None

    def train(self, mode: bool = True):
        self.base.train(mode)
        self.training = mode
        return self

    def _call(self, input_ids=None, attention_mask=None, inputs_embeds=None) -> torch.Tensor:
        dev = self.device
        input_ids, attention_mask, inputs_embeds = (
            None if t is None else t.to(dev, non_blocking=True)
            for t in (input_ids, attention_mask, inputs_embeds))
        if self.family.inputs == "pixels":
            return self._call_pixels(input_ids, inputs_embeds)
        out = self.base(input_ids=input_ids, attention_mask=attention_mask,
                        inputs_embeds=inputs_embeds)
        return out.last_hidden_state  # (B, T, H)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self._call(input_ids, attention_mask)

    def _call_pixels(self, pixel_values=None, inputs_embeds=None) -> torch.Tensor:
        """Vision models (input_ids = pixel_values (B, C, H, W)). They take no inputs_embeds:
        from a prefix state (`run_from`) the embeddings module returns that state (the skipped
        blocks ignore it) and a 1-pixel dummy stands in for the image."""
        if inputs_embeds is None:
            return self.base(pixel_values=pixel_values).last_hidden_state  # (B, T, H)
        emb = get_path(self.base, self.family.embeddings)
        emb.forward = lambda *args, **kwargs: inputs_embeds
        try:
            dummy = inputs_embeds.new_zeros(inputs_embeds.shape[0], 1, 1, 1)
            return self.base(pixel_values=dummy).last_hidden_state  # (B, T, H)
        finally:
            del emb.forward  # back to the class's forward

    def features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 pooling: str | None = None) -> torch.Tensor:
        """(B, H): pooled last hidden state (mean | cls | last real token)."""
        return pool(self(input_ids, attention_mask), attention_mask, pooling or self.spec.pooling)

    # ------------------------------------------------------------------ SAL prefix

    @contextlib.contextmanager
    def from_prefix(self, h_s: torch.Tensor, s: int):
        """Inside, any forward of the model skips blocks [0, s) and continues from h_s."""
        blocks, handles = self.blocks, []
        if s == 0:
            def replace_input(mod, args, kwargs):
                if args:
                    return (h_s, *args[1:]), kwargs
                return args, {**kwargs, "hidden_states": h_s}
            handles.append(blocks[0].register_forward_pre_hook(replace_input, with_kwargs=True))
        for i in range(s):
            blocks[i].forward = _skip(h_s if i == s - 1 else None)
        try:
            yield
        finally:
            for hd in handles:
                hd.remove()
            for i in range(s):
                del blocks[i].forward  # back to the class's forward

    def run_from(self, h: torch.Tensor, attention_mask: torch.Tensor, start: int) -> torch.Tensor:
        """(B, T, H) last hidden state from h = the hidden states entering block `start`."""
        dtype = next(self.parameters()).dtype
        h = h.to(self.device)
        with self.from_prefix(h, start):
            return self._call(None, attention_mask, inputs_embeds=h.to(dtype))

    @torch.no_grad()
    def prefix(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, end: int,
               h: torch.Tensor | None = None, start: int = 0) -> torch.Tensor:
        """Hidden states entering block `end` (end = L: the last block's output, before the
        final norm), in eval mode. With `h` (the states entering `start`) only blocks
        [start, end) run. The caller guarantees that those blocks carry no active LoRA."""
        if h is not None and end == start:
            return h
        blocks, box = self.blocks, {}
        if end >= len(blocks):
            def grab_out(mod, args, kwargs, out):
                box["h"] = out[0] if isinstance(out, tuple) else out
                raise StopForward
            handle = blocks[-1].register_forward_hook(grab_out, with_kwargs=True)
        else:
            def grab_in(mod, args, kwargs):
                box["h"] = args[0] if args else kwargs["hidden_states"]
                raise StopForward
            handle = blocks[end].register_forward_pre_hook(grab_in, with_kwargs=True)
        was = self.training
        self.train(False)
        try:
            if h is None:
                self._call(input_ids, attention_mask)
            else:
                self.run_from(h, attention_mask, start)
        except StopForward:
            pass
        finally:
            handle.remove()
            self.train(was)
        return box["h"]  # (B, T, H)


def _skip(h_s: torch.Tensor | None):
    """A block forward that returns its input (or h_s): the skipped blocks of a prefix run."""
    def forward(hidden_states, *args, **kwargs):
        return hidden_states if h_s is None else h_s
    return forward
