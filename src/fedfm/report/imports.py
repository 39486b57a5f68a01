"""fedfm's own import graph, read statically (ast) from src/fedfm: modules, layers, cycles.

Every `import` and `from ... import` counts, wherever it sits (module level, inside a function, under
`if TYPE_CHECKING:`): a function-level import is still a dependency, only a later one, and hiding a
cycle inside a function is how cycles survive. `from fedfm.a import b` with `b` a submodule is an
edge to `fedfm.a.b` only (the package `__init__` it also runs re-exports, it is not depended on);
any other name makes it an edge to `fedfm.a` itself. Dynamic imports (`importlib.import_module`,
used by the registries to load their rows' modules by name) are not edges: a registry names the
modules it loads, it does not depend on them.

Layers, bottom to top (`LAYERS`): a module may import its own package, or a package of a lower
layer. `tests/test_layout.py` fails on any cycle and on any upward import.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # src/fedfm

LAYERS: list[tuple[str, ...]] = [
    ("core",),                 # errors, config schema + sections, seeds, device
    ("transport", "report"),   # messages/wire/compress/validation; ui, plots, this page
    ("data",),                 # data sets (registry: data/catalogue), partitions, federations
    ("models",),               # backbones, families (registry: models/hf/family), LoRA, SAL, MoE
    ("algorithms",),           # one module per algorithm (registry: algorithms/registry), tasks
    ("config",),               # load_config/build_config: the schema checked against the registries
    ("sim",),                  # world building, the embedded runner and run loop, checkpoints
    ("flower",),               # the Flower runtime (the only package importing flwr)
    ("run", "export"),         # run(cfg) on the runtime it names + resume; `fedfm export`
    ("bench",),                # benchmark grids
    ("cli",),                  # the `fedfm` command
]


def layer_of(module: str) -> int:
    """Layer index of `fedfm.<top>...` (the package `fedfm` itself: -1, below everything)."""
    parts = module.split(".")
    if len(parts) == 1:
        return -1
    for i, names in enumerate(LAYERS):
        if parts[1] in names:
            return i
    raise KeyError(f"{module}: its package '{parts[1]}' is in no layer of fedfm.report.imports.LAYERS")


def module_name(path: Path, root: Path = PACKAGE_ROOT) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(root: Path = PACKAGE_ROOT) -> dict[str, Path]:
    """Every module of the package: dotted name -> file."""
    return {module_name(p, root): p for p in sorted(root.rglob("*.py"))}


def _targets(node: ast.AST, package: str, known: dict[str, Path]) -> set[str]:
    """The fedfm modules one import statement loads (a name that is a submodule counts as one)."""
    if isinstance(node, ast.Import):
        return {a.name for a in node.names}
    assert isinstance(node, ast.ImportFrom)
    base = node.module or ""
    if node.level:
        pkg = package.split(".")[: len(package.split(".")) - node.level + 1]
        base = ".".join(pkg + ([node.module] if node.module else []))
    subs = {f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in known}
    return subs if len(subs) == len(node.names) else subs | {base}


def import_graph(root: Path = PACKAGE_ROOT) -> dict[str, set[str]]:
    """module -> the fedfm modules it imports (every import statement, wherever it sits)."""
    known = modules(root)
    graph: dict[str, set[str]] = {}
    for name, path in known.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import | ast.ImportFrom):
                deps |= {t for t in _targets(node, package, known) if t.startswith("fedfm")}
        graph[name] = {d for d in deps if d in known and d != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    m = stack.pop()
                    on_stack.discard(m)
                    comp.append(m)
                    if m == node:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def upward_imports(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """(importer, imported) pairs where a lower layer imports a higher one."""
    return sorted((a, b) for a, deps in graph.items() for b in deps
                  if layer_of(b) > layer_of(a))
