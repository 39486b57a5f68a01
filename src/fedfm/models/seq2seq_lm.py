"""An encoder-decoder LM for `task = "generate"` (Switch Transformers, T5-style): the prompt is
the encoder's input, the response the decoder's labels.

fedfm's generation data (fedfm.data.generation) are decoder-style rows: ids = [prompt; response;
pad], labels = -100 outside the response. For a seq2seq model each row is split:

    encoder input  x = the prompt tokens (mask = 1, label = -100), right-padded
    decoder labels y = the response tokens (label != -100), right-padded with -100
    L = - (1 / |R|) Σ_{(b,t) ∈ R} log p(y_{b,t} | y_{b,<t}, x_b)     (teacher forcing,
        decoder input = y shifted right behind `decoder_start_token_id`)

so |R| is the same response-token count as the causal LM's. Evaluation: greedy decoding from the
encoded prompt (the HF model's own `generate`), exact match as for the causal LM.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fedfm.data.generation import IGNORE
from fedfm.models.causal_lm import greedy_generate


def split_rows(ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor):
    """(enc_ids, enc_mask, dec_labels) from decoder-style rows (see the module docstring)."""
    prompt = (mask.bool() & (labels == IGNORE))  # (B, T)
    resp = labels != IGNORE
    n_p, n_r = prompt.sum(1), resp.sum(1)
    tp, tr = max(int(n_p.max()), 1), max(int(n_r.max()), 1)
    enc = ids.new_zeros(ids.shape[0], tp)
    enc_mask = mask.new_zeros(ids.shape[0], tp)
    dec = labels.new_full((ids.shape[0], tr), IGNORE)
    for b in range(ids.shape[0]):
        enc[b, : n_p[b]] = ids[b][prompt[b]]
        enc_mask[b, : n_p[b]] = 1
        dec[b, : n_r[b]] = labels[b][resp[b]]
    return enc, enc_mask, dec


class Seq2SeqLM(nn.Module):
    """`backbone` = fedfm's HFBackbone over a *ForConditionalGeneration (its `lm`). Same
    interface as CausalLM: response_loss, generate_ids, decode, an empty `head`."""

    def __init__(self, backbone: nn.Module, tokenizer=None):
        super().__init__()
        self.backbone = backbone
        lm = backbone.lm
        self.lm_head = lm.get_output_embeddings()
        for p in self.lm_head.parameters():
            p.requires_grad_(False)
        self.head = nn.ModuleDict()
        object.__setattr__(self, "lm", lm)
        object.__setattr__(self, "tokenizer", tokenizer)
        if lm.config.decoder_start_token_id is None:
            lm.config.decoder_start_token_id = lm.config.pad_token_id or 0

    def is_personal(self, name: str) -> bool:
        return name.startswith("backbone.") and ".decoder." in f".{name}" and \
            self.backbone.block_of(name) == self.lm.config.num_decoder_layers - 1

    def response_loss(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        from fedfm.models.hf.moe_switch import REAL_DEC

        enc, enc_mask, dec = split_rows(input_ids, attention_mask, labels)
        dev = self.lm_head.weight.device
        token = REAL_DEC.set(dec != IGNORE)  # decoder routers count response tokens only
        try:
            out = self.lm(input_ids=enc.to(dev), attention_mask=enc_mask.to(dev),
                          decoder_input_ids=self.lm._shift_right(dec.to(dev)), use_cache=False)
        finally:
            REAL_DEC.reset(token)
        keep = dec.to(dev) != IGNORE
        loss = F.cross_entropy(out.logits[keep].float(), dec.to(dev)[keep], reduction=reduction)
        return loss.to(labels.device)

    @torch.no_grad()
    def generate_ids(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                     max_new_tokens: int) -> torch.Tensor:
        dev = self.lm_head.weight.device
        out = greedy_generate(self.lm, self.tokenizer, prompt_ids, prompt_mask, dev,
                              max_new_tokens)
        return out[:, 1:].cpu()  # without the decoder start token

    def decode(self, ids: torch.Tensor) -> list[str]:
        return self.tokenizer.batch_decode(ids, skip_special_tokens=True)
