"""Every shipped benchmark suite (bench/*.toml) loads: each cell's config is built and checked
(an algorithm that cannot run a setting, e.g. a single-head algorithm in the multi-task
federation, fails the whole suite at load time, so a shipped suite must stay loadable)."""

from pathlib import Path

import pytest

from fedfm.bench.suite import load_suite

SUITES = sorted((Path(__file__).resolve().parents[1] / "bench").glob("*.toml"))


@pytest.mark.parametrize("path", SUITES, ids=lambda p: p.name)
def test_shipped_suite_loads(path: Path) -> None:
    suite = load_suite(path)
    assert suite.cells, f"{path.name}: no cells"


def test_paper_suites_cover_20news_and_multitask() -> None:
    for name in ("paper.toml", "paper_cpu.toml"):
        suite = load_suite(Path(__file__).resolve().parents[1] / "bench" / name)
        assert set(suite.settings) == {"dir0.5", "dir0.1", "multitask"}
        multi = [c for c in suite.cells if c.setting == "multitask"]
        assert {c.label for c in multi} == {"fedavg-lora", "fedprox", "local", "fedper"}
        assert all(c.cfg.data.name == "20news" for c in suite.cells if c.setting != "multitask")
