"""Record types shared by data loaders and tasks.

`GenerationDataset` is what every loader returns for `task = "generate"` (prompt -> response
pairs: BoolQ, NQ-open, Alpaca-style JSON lines, ...). Partitioners need a label-like key to skew
clients by, so each record also carries a *group*: an integer id into `group_names` (e.g. the
answer "yes"/"no" for BoolQ, a subject for MMLU, a source for mixed sets). A data set without a
natural key uses group 0 for every record (`group_names = ["all"]`).

Classification data sets stay `fedfm.data.datasets.TextDataset(texts, labels, label_names)`.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedfm.core.errors import DataError


@dataclass(frozen=True)
class GenerationDataset:
    """Prompt/response records for causal-LM fine-tuning.

    prompts[i] -> responses[i]; groups[i] in [0, len(group_names)) is the partitioning key.
    """

    prompts: list[str]
    responses: list[str]
    groups: list[int]
    group_names: list[str]

    def __post_init__(self) -> None:
        n = len(self.prompts)
        if n == 0:
            raise DataError("The generation data set holds no records.")
        if len(self.responses) != n or len(self.groups) != n:
            raise DataError(
                f"Generation data set columns differ in length: {n} prompts, "
                f"{len(self.responses)} responses, {len(self.groups)} groups."
            )
        k = len(self.group_names)
        if k == 0 or any(not 0 <= g < k for g in self.groups):
            raise DataError(f"Generation data set groups must lie in [0, {k}).")

    def __len__(self) -> int:
        return len(self.prompts)

    # Partitioners and splitters read `labels` / `num_labels`, as on TextDataset.
    @property
    def labels(self) -> list[int]:
        return self.groups

    @property
    def num_labels(self) -> int:
        return len(self.group_names)

    def subset(self, idx: list[int]) -> GenerationDataset:
        return GenerationDataset(
            [self.prompts[i] for i in idx], [self.responses[i] for i in idx],
            [self.groups[i] for i in idx], list(self.group_names),
        )


def from_pairs(pairs: list[tuple[str, str]], group_of=None) -> GenerationDataset:
    """Build a data set from (prompt, response) pairs; `group_of(prompt, response) -> str` names
    each record's group (default: one group "all")."""
    keys = [group_of(p, r) if group_of else "all" for p, r in pairs]
    names = sorted(set(keys))
    index = {n: i for i, n in enumerate(names)}
    return GenerationDataset(
        [p for p, _ in pairs], [r for _, r in pairs], [index[k] for k in keys], names
    )
