"""Prompt/response data for `task = "generate"`: tokenisation and per-client splits (the records
themselves come from the data catalogue, fedfm.data.catalogue, as `GenerationDataset`s).

Tokenisation of one record (prompt p, response r), T = model.max_length:

    with a chat template:  x = template([user: p], add_generation_prompt) ++ (template([user: p,
                           assistant: r]) minus that prefix)   (the end-of-turn token is learnt)
    without one:           x = p ++ " " ++ r ++ eos
    labels_t = x_t on response tokens, -100 on prompt tokens and padding (loss on r only)

Training rows are right-padded (real tokens first, so batches trim to their longest row); the
prompts used for greedy generation are left-padded (decoders continue from the last column).
A prompt that does not fit is cut from the left of its *content* (the template is kept).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fedfm.data.records import GenerationDataset

IGNORE = -100  # label of tokens without loss (prompt, padding), as in transformers
_SENTINEL = "\u2063fedfm-content\u2063"  # stands for the prompt inside its template


# ---------------------------------------------------------------- tokenisation

@dataclass(frozen=True)
class GenSplit:
    """Tokenised records. input_ids/attention_mask/labels (N, T), right-padded, labels -100
    outside the response; prompt_ids/prompt_mask (N, P) left-padded; references (N,) strings."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    references: tuple[str, ...]
    groups: torch.Tensor
    is_image = False  # (not a field) text rows: the SAL prefix cache slices them by length

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def subset(self, idx) -> GenSplit:
        i = torch.as_tensor(np.asarray(idx, dtype=np.int64))
        return GenSplit(self.input_ids[i], self.attention_mask[i], self.labels[i],
                        self.prompt_ids[i], self.prompt_mask[i],
                        tuple(self.references[j] for j in i.tolist()), self.groups[i])

    def batches(self, batch_size: int, generator: torch.Generator | None = None):
        """(ids, mask, labels) batches of the training rows, trimmed to their longest row."""
        n = len(self)
        order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
        for s in range(0, n, batch_size):
            i = order[s : s + batch_size]
            t = int(self.attention_mask[i].sum(1).max())
            yield self.input_ids[i, :t], self.attention_mask[i, :t], self.labels[i, :t]

    def prompt_batches(self, batch_size: int):
        """(prompt_ids, prompt_mask, references) in order, left-padded, trimmed on the left."""
        for s in range(0, len(self), batch_size):
            mask = self.prompt_mask[s : s + batch_size]
            p = int(mask.sum(1).max())
            yield (self.prompt_ids[s : s + batch_size, -p:], mask[:, -p:],
                   self.references[s : s + batch_size])


class PromptEncoder:
    """Turns records into token ids with the tokenizer's chat template when it has one."""

    def __init__(self, tokenizer, max_length: int):
        self.tok, self.max_length = tokenizer, max_length
        self.chat = bool(getattr(tokenizer, "chat_template", None))
        self.pad_id = pad_id(tokenizer)

    def _ids(self, text: str) -> list[int]:
        return list(self.tok(text, add_special_tokens=False)["input_ids"])

    def _prompt_text(self, prompt: str) -> str:
        if self.chat:
            return self.tok.apply_chat_template([{"role": "user", "content": prompt}],
                                                tokenize=False, add_generation_prompt=True)
        bos = self.tok.bos_token or ""
        return bos + prompt

    def _response_ids(self, prompt: str, response: str, head: str) -> list[int]:
        if self.chat:
            full = self.tok.apply_chat_template(
                [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}],
                tokenize=False)
            tail = full[len(head):] if full.startswith(head) else response
            return self._ids(tail)
        eos = [self.tok.eos_token_id] if self.tok.eos_token_id is not None else []
        return self._ids(" " + response) + eos

    def encode(self, prompt: str, response: str) -> tuple[list[int], list[int]]:
        """(prompt ids, response ids) with prompt + response <= max_length tokens."""
        resp = self._response_ids(prompt, response, self._prompt_text(prompt))
        resp = resp[: max(1, self.max_length // 2)] if len(resp) > self.max_length // 2 else resp
        head = self._ids(self._prompt_text(prompt))
        budget = self.max_length - len(resp)
        if len(head) > budget:  # cut the prompt's content from the left, keep the template
            pre, _, post = self._prompt_text(_SENTINEL).partition(_SENTINEL)
            pre_ids, post_ids, content = self._ids(pre), self._ids(post), self._ids(prompt)
            keep = max(0, budget - len(pre_ids) - len(post_ids))
            head = (pre_ids + content[len(content) - keep:] + post_ids)[-budget:]
        return head, resp

    def __call__(self, ds: GenerationDataset) -> GenSplit:
        pairs = [self.encode(p, r) for p, r in zip(ds.prompts, ds.responses)]
        n, t = len(pairs), max(len(h) + len(r) for h, r in pairs)
        p_len = max(len(h) for h, _ in pairs)
        ids = torch.full((n, t), self.pad_id, dtype=torch.long)
        labels = torch.full((n, t), IGNORE, dtype=torch.long)
        mask = torch.zeros((n, t), dtype=torch.long)
        pids = torch.full((n, p_len), self.pad_id, dtype=torch.long)
        pmask = torch.zeros((n, p_len), dtype=torch.long)
        for i, (h, r) in enumerate(pairs):
            row = h + r
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
            labels[i, len(h) : len(row)] = torch.tensor(r)
            pids[i, p_len - len(h) :] = torch.tensor(h)
            pmask[i, p_len - len(h) :] = 1
        return GenSplit(ids, mask, labels, pids, pmask, tuple(ds.responses),
                        torch.tensor(ds.groups, dtype=torch.long))


def pad_id(tokenizer) -> int:
    """The tokenizer's pad id, else eos (decoders often have no pad token), else 0."""
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid)
    return 0


# ---------------------------------------------------------------- federated splits

def build_federated_generation(ds: GenerationDataset, encoder: PromptEncoder, num_clients: int,
                               scheme: str, seed: int, alpha: float = 0.5,
                               shards_per_client: int = 2, min_examples: int = 4,
                               client_test_fraction: float = 0.2,
                               global_test_fraction: float = 0.2,
                               max_examples: int | None = None,
                               test: GenerationDataset | None = None,
                               max_test_examples: int | None = None):
    """As `build_federated`, partitioning by the records' groups (label-like key).

    `test`: the source's official held-out split. When given, the global test set is drawn from
    it (as `build_federated` does): all of it, or a seeded group-stratified sample of
    `max_test_examples` (default when `max_examples` is set: round(global_test_fraction ·
    max_examples)); all records used from `ds` go to the clients.
    """
    from fedfm.data.federated import FederatedData, _stratified_holdout, client_splits
    from fedfm.data.partition import partition

    rng = np.random.default_rng(seed)
    groups = np.asarray(ds.groups)
    pool = np.arange(len(groups))
    if max_examples is not None and max_examples < len(groups):
        pool = np.sort(rng.choice(len(groups), size=max_examples, replace=False))
    if test is None:
        kept, held = _stratified_holdout(groups[pool], global_test_fraction, rng)
        kept, held = pool[kept], pool[held]
        used = np.sort(np.concatenate([kept, held]))
        full = encoder(ds.subset(used.tolist()))  # tokenise only what the run uses
        global_test = None
    else:
        kept, used = pool, pool
        full = encoder(ds.subset(used.tolist()))
        cap = max_test_examples if max_test_examples is not None else (
            round(global_test_fraction * max_examples) if max_examples is not None else None)
        global_test = encoder(test if cap is None else _sample(test, cap, rng))
    pos = {int(j): i for i, j in enumerate(used)}
    at = lambda idx: [pos[int(j)] for j in idx]  # noqa: E731
    parts = partition(groups[kept], num_clients, scheme, seed, alpha=alpha,
                      shards_per_client=shards_per_client, min_size=min_examples)
    clients = client_splits(full, kept, parts, rng, client_test_fraction, at)
    if global_test is None:
        global_test = full.subset(at(held))
    return FederatedData(clients, global_test, list(ds.group_names),
                         {"main": ds.num_labels})


def _sample(ds: GenerationDataset, size: float, rng) -> GenerationDataset:
    """A group-stratified sample of about `size` records (at least one per group)."""
    fraction = min(1.0, max(size, 1.0) / len(ds))
    if fraction >= 1.0:
        return ds
    from fedfm.data.federated import _stratified_holdout

    _, held = _stratified_holdout(np.asarray(ds.groups), fraction, rng)
    return ds.subset(held.tolist())
