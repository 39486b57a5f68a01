"""The package layout (issue #18): no import cycle, no upward import, nothing at the root but the
entry points. The graph is read statically (fedfm.report.imports): every import statement counts,
function-level ones included, so a cycle cannot hide inside a function."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from fedfm.report import imports

ROOT_MODULES = {"__init__.py", "cli.py", "config.py"}  # entry points; registries live in packages


def test_no_import_cycle():
    found = imports.cycles(imports.import_graph())
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_no_upward_import():
    up = imports.upward_imports(imports.import_graph())
    assert not up, ("imports from a higher layer (fedfm.report.imports.LAYERS):\n"
                    + "\n".join(f"{a} -> {b}" for a, b in up))


def test_only_entry_points_at_the_package_root():
    root = {p.name for p in imports.PACKAGE_ROOT.glob("*.py")}
    assert root == ROOT_MODULES, f"modules at src/fedfm/ beyond {sorted(ROOT_MODULES)}: " \
                                 f"{sorted(root - ROOT_MODULES)}"


def test_every_package_has_a_layer():
    for name in imports.modules():
        imports.layer_of(name)  # KeyError names the package missing from LAYERS


def test_the_checker_sees_function_level_cycles(tmp_path: Path):
    """The checker can fail: a cycle closed by an import inside a function is found."""
    pkg = tmp_path / "fedfm"
    (pkg / "core").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "core" / "__init__.py").write_text("")
    (pkg / "core" / "a.py").write_text("from fedfm.core.b import g\n")
    (pkg / "core" / "b.py").write_text(textwrap.dedent("""
        def g():
            from fedfm.core import a  # the cycle, hidden in a function
            return a
    """))
    (pkg / "core" / "c.py").write_text("from . import a\n")  # relative imports resolve too
    graph = imports.import_graph(pkg)
    assert graph["fedfm.core.c"] == {"fedfm.core.a"}
    assert imports.cycles(graph) == [["fedfm.core.a", "fedfm.core.b"]]
    (pkg / "core" / "b.py").write_text("def g():\n    return 1\n")
    assert imports.cycles(imports.import_graph(pkg)) == []


def test_import_fedfm_and_the_config_stay_light():
    """`import fedfm.config` (the schema + the algorithm registry) loads neither transformers,
    flwr nor matplotlib."""
    code = ("import sys, fedfm.config, fedfm.core.schema, fedfm.transport.messages;"
            "heavy = [m for m in ('transformers', 'flwr', 'matplotlib') if m in sys.modules];"
            "print(heavy); sys.exit(1 if heavy else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_plots_name_the_plot_extra_when_matplotlib_is_missing(monkeypatch):
    import pytest

    from fedfm.core.errors import ConfigError
    from fedfm.report import plots

    monkeypatch.setattr(plots, "have_matplotlib", lambda: False)
    with pytest.raises(ConfigError, match=r"fedfm\[plot\]"):
        plots.pyplot()


def test_architecture_doc_is_generated_and_current():
    """docs/architecture.md == `python -m fedfm.report.architecture`: a module missing from it,
    or a docstring changed since, fails here."""
    from fedfm.report import architecture

    doc = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"
    text = doc.read_text(encoding="utf-8")
    rels = [p.relative_to(imports.PACKAGE_ROOT).parts for p in imports.modules().values()]
    missing = ["/".join(r) for r in rels if f"`{'/'.join(r[1:] or r)}`" not in text]
    assert not missing, f"modules missing from docs/architecture.md: {missing}; run " \
                        f"`{architecture.COMMAND}`"
    assert text == architecture.render(), f"docs/architecture.md is stale: run `{architecture.COMMAND}`"


def test_one_row_registers(monkeypatch, capsys):
    """Adding a data set, a named model, a family or an algorithm = its code + one registry row:
    the config check and `fedfm list` find the new names through the registries alone."""
    from dataclasses import dataclass

    from fedfm.algorithms import registry as algorithms
    from fedfm.cli import main
    from fedfm.config import build_config
    from fedfm.data import catalogue
    from fedfm.data.datasets import make_synthetic
    from fedfm.models import registry as models
    from fedfm.models.hf import family

    monkeypatch.setitem(catalogue.CATALOGUE, "my-set", catalogue.DataEntry(
        "my-set", "classify", lambda d, s, t: catalogue.Loaded(make_synthetic(40, seed=s), None),
        "a test set"))
    monkeypatch.setitem(models.MODELS, "my-model", models.ModelEntry(
        "my-model", "a test model", folder="fedfm.models.registry:user_folder", takes_path=True))
    spec = family.FamilySpec(("my_type",), "layers", "embed_tokens", "norm",
                             attn=family.AttnSpec("q", "k", "v", "o"), mlp=family.MLPSpec("up", "down"))
    monkeypatch.setitem(family.FAMILIES, "my_type", spec)

    @dataclass(frozen=True)
    class MyOptions:
        step: float = 1.0

    algorithms.names()  # load the built-in rows first
    monkeypatch.setitem(algorithms._ENTRIES, "myalgo", algorithms.Entry(
        "myalgo", lambda *a: None, MyOptions, "a test algorithm"))
    cfg = build_config({"algorithm": "myalgo", "myalgo": {"step": 0.5},
                        "model": {"name": "my-model"}, "data": {"name": "my-set"}})
    assert (cfg.model.name, cfg.data.name, cfg.options["myalgo"]) == ("my-model", "my-set",
                                                                       {"step": 0.5})
    assert family.FAMILIES["my_type"].roles() == {"q": "q", "k": "k", "v": "v", "o": "o",
                                                  "up": "up", "down": "down"}
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "  my-set " in out and "  my-model " in out and "  myalgo " in out
