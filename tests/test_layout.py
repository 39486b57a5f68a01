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
