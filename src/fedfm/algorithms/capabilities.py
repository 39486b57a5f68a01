"""What each algorithm honours, declared once next to its registry entry; config validation
refuses the rest with exit 2 (no option is ever silently ignored).

    registry.register("myalgo", factory, Options, "…", capabilities=AVERAGING)

`capabilities` is a `Capabilities` or a function of the algorithm's options returning one
(RaFFM's `aggregation = all_clients` divides by every client's weight, which only a mean can).
Undeclared algorithms get `Capabilities()`: the mean, no DP, every finetune mode — so an
algorithm that does not route its averaging through `aggregation.masked_aggregate` can never
claim robust aggregation or DP by accident.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedfm.core.errors import ConfigError, choices
from fedfm.core.reliability import AGGREGATORS

FINETUNE_MODES = ("lora", "full", "head")


@dataclass(frozen=True)
class Capabilities:
    aggregation: tuple[str, ...] = ("mean",)  # [aggregation] methods honoured
    dp: bool = False  # [dp] honoured (DP-FedAvg on everything the algorithm averages)
    finetune: tuple[str, ...] = FINETUNE_MODES  # model.finetune modes honoured
    why: str = ""  # appended to a refusal: why this algorithm cannot do more


# every algorithm whose server averages through aggregation.masked_aggregate
AVERAGING = Capabilities(aggregation=AGGREGATORS, dp=True)


def resolve(declared, opts) -> Capabilities:
    if declared is None:
        return Capabilities()
    return declared(opts) if callable(declared) else declared


def supporting(entries, opts_of, ok) -> str:
    names = [e.name for e in entries if ok(resolve(e.capabilities, opts_of(e)))]
    return choices(names) if names else "none"


def check(cfg, entry, opts, entries, opts_of) -> None:
    """ConfigError (exit 2) for [aggregation], [dp] or model.finetune the algorithm ignores."""
    caps, name = resolve(entry.capabilities, opts), entry.name
    why = f" ({caps.why})" if caps.why else ""
    method = cfg.aggregation.method
    if method not in caps.aggregation:
        raise ConfigError(
            f"aggregation.method = '{method}' is not supported by algorithm '{name}'{why}. "
            f"It supports: {choices(caps.aggregation)}. Algorithms that support '{method}': "
            f"{supporting(entries, opts_of, lambda c: method in c.aggregation)}.")
    if cfg.dp.enabled and not caps.dp:
        raise ConfigError(
            f"dp.enabled = true is not supported by algorithm '{name}'{why}. Algorithms that "
            f"support DP: {supporting(entries, opts_of, lambda c: c.dp)}.")
    mode = cfg.model.finetune
    if mode not in caps.finetune:
        raise ConfigError(
            f"model.finetune = '{mode}' is not supported by algorithm '{name}', which trains "
            f"{' or '.join(caps.finetune)}{why}. Algorithms that support '{mode}': "
            f"{supporting(entries, opts_of, lambda c: mode in c.finetune)}.")
