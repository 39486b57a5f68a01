"""A small BERT encoder whose parameter names match Hugging Face's `BertModel`.

Written here (not `transformers.BertModel`) so fedfm can run blocks one by one (SAL's cached
frozen prefix), give each block its own width (RaFFM subnetworks: heads and FFN neurons per
layer) and swap FFNs for MoE layers. Checkpoints load and export as ordinary HF folders because
the state-dict keys are the same (`embeddings.*`, `encoder.layer.{i}.attention.self.query.*`...).

Block i:  a = LN(h + W_o · MHA(W_q h, W_k h, W_v h));  h' = LN(a + W_2 · gelu(W_1 a))
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class EncoderSpec:
    """Sizes of an encoder. `heads` and `ffn` give each block's width (RaFFM shrinks them)."""

    vocab_size: int
    hidden: int
    heads: tuple[int, ...]
    ffn: tuple[int, ...]
    head_dim: int
    max_position: int = 512
    type_vocab: int = 2
    eps: float = 1e-12
    dropout: float = 0.0

    @property
    def num_layers(self) -> int:
        return len(self.heads)

    @classmethod
    def uniform(cls, vocab_size: int, hidden: int, layers: int, heads: int, ffn: int, **kw):
        return cls(vocab_size, hidden, (heads,) * layers, (ffn,) * layers, hidden // heads, **kw)

    def truncated(self, num_layers: int) -> EncoderSpec:
        return replace(self, heads=self.heads[:num_layers], ffn=self.ffn[:num_layers])


class Embeddings(nn.Module):
    def __init__(self, spec: EncoderSpec):
        super().__init__()
        self.word_embeddings = nn.Embedding(spec.vocab_size, spec.hidden, padding_idx=0)
        self.position_embeddings = nn.Embedding(spec.max_position, spec.hidden)
        self.token_type_embeddings = nn.Embedding(spec.type_vocab, spec.hidden)
        self.LayerNorm = nn.LayerNorm(spec.hidden, eps=spec.eps)
        self.dropout = nn.Dropout(spec.dropout)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        t = input_ids.shape[1]
        pos = torch.arange(t, device=input_ids.device)
        h = self.word_embeddings(input_ids) + self.position_embeddings(pos)  # (B, T, H)
        h = h + self.token_type_embeddings.weight[0]
        return self.dropout(self.LayerNorm(h))


class SelfAttention(nn.Module):
    def __init__(self, hidden: int, heads: int, head_dim: int):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.query = nn.Linear(hidden, heads * head_dim)
        self.key = nn.Linear(hidden, heads * head_dim)
        self.value = nn.Linear(hidden, heads * head_dim)

    def forward(self, h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        b, t, _ = h.shape
        split = (b, t, self.heads, self.head_dim)
        q = self.query(h).view(split).transpose(1, 2)  # (B, nh, T, hd)
        k = self.key(h).view(split).transpose(1, 2)
        v = self.value(h).view(split).transpose(1, 2)
        o = attention(q, k, v, mask)  # (B, nh, T, hd)
        return o.transpose(1, 2).reshape(b, t, self.heads * self.head_dim)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              mask: torch.Tensor | None) -> torch.Tensor:
    """softmax(q·kᵀ / √d, masked) · v. On CPU it runs in fp32 even under bf16 autocast: torch's
    CPU flash-attention kernel (forward + backward, head_dim 32) is ~1.6x slower in bf16 than in
    fp32 (bench/reports/performance.md), and fp32 is also the more accurate. The output keeps
    q's dtype, so the rest of the block is unchanged."""
    if q.device.type != "cpu":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    with torch.autocast("cpu", enabled=False):
        o = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask)
    return o.to(q.dtype)


class DenseLN(nn.Module):
    """`LN(residual + dropout(dense(x)))`, HF's BertSelfOutput / BertOutput."""

    def __init__(self, d_in: int, hidden: int, eps: float, dropout: float):
        super().__init__()
        self.dense = nn.Linear(d_in, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(residual + self.dropout(self.dense(x)))


class Attention(nn.Module):
    def __init__(self, spec: EncoderSpec, heads: int):
        super().__init__()
        self.self = SelfAttention(spec.hidden, heads, spec.head_dim)
        self.output = DenseLN(heads * spec.head_dim, spec.hidden, spec.eps, spec.dropout)

    def forward(self, h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if self.self.heads == 0:  # a block whose heads were all cut: only the residual + LN
            return self.output.LayerNorm(h + self.output.dense.bias)
        return self.output(self.self(h, mask), h)


class Intermediate(nn.Module):
    def __init__(self, hidden: int, ffn: int):
        super().__init__()
        self.dense = nn.Linear(hidden, ffn)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(h))


class Layer(nn.Module):
    """One transformer block. `ffn(a)` is the part an MoE layer replaces."""

    def __init__(self, spec: EncoderSpec, heads: int, ffn: int):
        super().__init__()
        self.attention = Attention(spec, heads)
        self.intermediate = Intermediate(spec.hidden, ffn)
        self.output = DenseLN(ffn, spec.hidden, spec.eps, spec.dropout)

    def ffn(self, a: torch.Tensor) -> torch.Tensor:
        return self.output(self.intermediate(a), a)  # (B, T, H)

    def forward(self, h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return self.ffn(self.attention(h, mask))


class Encoder(nn.Module):
    def __init__(self, spec: EncoderSpec):
        super().__init__()
        self.layer = nn.ModuleList(Layer(spec, nh, f) for nh, f in zip(spec.heads, spec.ffn))


class Bert(nn.Module):
    """Embeddings + blocks. `forward` returns the last hidden states (B, T, H)."""

    def __init__(self, spec: EncoderSpec):
        super().__init__()
        self.spec = spec
        self.embeddings = Embeddings(spec)
        self.encoder = Encoder(spec)

    @property
    def layers(self) -> nn.ModuleList:
        return self.encoder.layer

    @staticmethod
    def attention_mask(attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, T) 0/1 -> (B, 1, 1, T) bool, True where a key may be attended to."""
        return attention_mask.bool()[:, None, None, :]

    def run_layers(self, h: torch.Tensor, mask: torch.Tensor, start: int = 0, end: int | None = None):
        """Apply blocks [start, end) to hidden states h (B, T, H)."""
        for layer in self.layers[start:end]:
            h = layer(h, mask)
        return h

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = self.attention_mask(attention_mask)
        return self.run_layers(self.embeddings(input_ids), mask)

    # The SAL prefix interface shared with HFBackbone (fedfm.models.hf.backbone).

    @torch.no_grad()
    def prefix(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, end: int,
               h: torch.Tensor | None = None, start: int = 0) -> torch.Tensor:
        """Hidden states entering block `end`: blocks [start, end) over h (default embed(ids))."""
        h = self.embeddings(input_ids) if h is None else h  # (B, T, H)
        return self.run_layers(h, self.attention_mask(attention_mask), start, end)

    def run_from(self, h: torch.Tensor, attention_mask: torch.Tensor, start: int) -> torch.Tensor:
        """Last hidden states from h = the states entering block `start`."""
        return self.run_layers(h, self.attention_mask(attention_mask), start)
