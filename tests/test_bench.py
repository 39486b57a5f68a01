"""fedfm bench / fedfm report: suite expansion and errors, resumable grid, report numbers, CLI."""

import json
import re
from pathlib import Path

import pytest

from fedfm.algorithms import registry
from fedfm.bench import bench, find_runs, load_suite, select, write_report
from fedfm.bench.collect import curve, group_runs
from fedfm.bench.report import probe_ref, table_row
from fedfm.cli import main
from fedfm.core.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
TINY = """
[base]
rounds = 1
model = { name = "tiny-bert", max_length = 16, lora_rank = 4 }
data = { name = "synthetic", num_clients = 3 }
train = { batch_size = 16, lr = 5e-3, threads = 1 }
"""


def suite_file(tmp_path, body: str, head: str = "isolate = false\n") -> Path:
    p = tmp_path / "suite.toml"
    p.write_text(f'out = "{tmp_path / "runs"}"\n' + head + body + TINY)
    return p


def table(md: str, setting: str) -> dict[str, dict[str, str]]:
    """The markdown table under `## ... (`setting`)` as {cell label: {column: value}}."""
    part = md.split(f"(`{setting}`)")[1].split("\n## ")[0]
    lines = part[part.index("\n|"):].strip().split("\n\n")[0].splitlines()  # the first table
    header = [h.strip() for h in lines[0].strip("|").split("|")]
    rows = [[v.strip() for v in x.strip("|").split("|")] for x in lines[2:]]
    return {r[0]: dict(zip(header, r)) for r in rows}


def test_quick_suite_runs_every_registered_algorithm(tmp_path):
    out = tmp_path / "quick"
    suite, result, md = bench(ROOT / "bench/quick.toml", out=str(out),
                              report=str(tmp_path / "quick.md"), quiet=True)
    assert result.failed == []
    labels = set(suite.labels())
    assert set(registry.names()) <= labels and "fedavg-full" in labels
    text = md.read_text()
    for setting in suite.settings:
        rows = table(text, setting)
        assert set(rows) == labels
        for label, row in rows.items():
            s = json.loads((out / setting / label / "seed0/summary.json").read_text())
            assert row["up MB"] == f"{s['bytes_up'] / 1e6:.2f}"
            assert row["probe GFLOP/s"] == f"{s['speed_probe_gflops']:.1f}"
            assert float(row["acc_personal_mean"]) == pytest.approx(s["acc_personal_mean"],
                                                                     abs=5e-3)
        assert float(rows["local"]["up MB"]) < 0.01 < float(rows["fedavg"]["up MB"])
        assert float(rows["fedavg-full"]["up MB"]) > 5 * float(rows["fedavg"]["up MB"])
        ratio_lines = text.split("Against `fedavg`")[1].split("\n\n")[1].splitlines()[2:]
        ratios = {x.split("|")[1].strip(): x.split("|")[4].strip() for x in ratio_lines}
        assert float(ratios["local"]) < 0.1 and float(ratios["fedavg-full"]) > 5  # bytes ×
        for kind in ("rounds", "bytes"):
            assert (tmp_path / f"quick-{setting}-{kind}.png").stat().st_size > 5000
    assert "Speed probe" in text
    # resumable: a second call finds every cell finished and runs nothing
    _, again, _ = bench(ROOT / "bench/quick.toml", out=str(out), report=str(tmp_path / "q2.md"),
                        quiet=True)
    assert again.ran == [] and len(again.skipped) == len(suite.cells)


def test_merge_order_base_setting_cell_override(tmp_path):
    p = suite_file(tmp_path, """
seeds = [3, 4]
[[cells]]
label = "a"
algorithm = "fedprox"
train.lr = 0.02
fedprox.mu = 0.5
[[cells]]
label = "b"
algorithm = "fedavg"
settings = ["s2"]
[settings.s1]
data.alpha = 0.7
[settings.s2]
data.alpha = 0.2
train.lr = 0.03
""")
    suite = load_suite(p, ["rounds=2"])
    keys = [c.key for c in suite.cells]
    assert keys == ["s1/a/seed3", "s2/a/seed3", "s2/b/seed3", "s1/a/seed4", "s2/a/seed4",
                    "s2/b/seed4"]
    c = {k: cell.cfg for k, cell in zip(keys, suite.cells)}
    assert c["s1/a/seed3"].data.alpha == 0.7 and c["s2/a/seed3"].train.lr == 0.02
    assert c["s2/b/seed4"].train.lr == 0.03 and c["s2/b/seed4"].seed == 4
    assert c["s1/a/seed3"].algorithm_options("fedprox") == {"mu": 0.5}
    assert all(cfg.rounds == 2 for cfg in c.values())
    assert c["s2/b/seed3"].out.endswith("s2/b/seed3")
    assert [x.key for x in select(suite, ["b"], None, [4])] == ["s2/b/seed4"]


@pytest.mark.parametrize("body, message", [
    ('algorithms = ["fedavg", "nosuchalgo"]', "not registered: 'nosuchalgo'"),
    ('algorithms = ["fedavg"]\nbogus = 1', "unknown suite key 'bogus'"),
    ('algorithms = ["fedavg", "fedavg"]', "appears twice"),
    ('seeds = "0"\nalgorithms = ["fedavg"]', "'seeds' must be"),
    ('[[cells]]\nlabel = "x"\nalgorithm = "fedavg"\nsettings = ["nope"]', "names setting 'nope'"),
    ('[[cells]]\nlabel = "bad/label"\nalgorithm = "fedavg"', "folder name"),
    ('[[cells]]\nlabel = "x"\nalgorithm = "fedavg"\ndata.alpha = -1', "cell 'x' in setting"),
    ('algorithms = []', "has no cells"),
])
def test_suite_errors_name_the_problem(tmp_path, body, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_suite(suite_file(tmp_path, body + "\n"))


def test_unknown_algorithm_can_be_skipped_or_left_out(tmp_path):
    p = suite_file(tmp_path, 'algorithms = ["fedavg", "futurealgo"]\n')
    with pytest.raises(ConfigError, match="Registered algorithms: .*fedavg"):
        load_suite(p)
    assert load_suite(p, skip_unknown=True).skipped == ("futurealgo",)
    assert [c.label for c in load_suite(p, only=["fedavg"]).cells] == ["fedavg"]
    assert main(["bench", str(p), "--dry-run", "--only", "futurealgo"]) == 2


def test_resume_reruns_changed_and_failed_cells(tmp_path):
    p = suite_file(tmp_path, """
[[cells]]
label = "ok"
algorithm = "local"
[[cells]]
label = "broken"
algorithm = "fedavg"
data = { name = "csv", path = "/nonexistent/file.csv" }
""")
    _, r1, md = bench(p, quiet=True)
    assert [c.label for c in r1.ran] == ["ok"] and [c.label for c, _ in r1.failed] == ["broken"]
    assert (tmp_path / "runs/default/broken/seed0/error.txt").exists()
    assert "Failed cells" in md.read_text() and "broken" in md.read_text()
    conf = tmp_path / "runs/default/ok/seed0/config.json"
    saved = json.loads(conf.read_text())
    del saved["eval"]  # as if [eval] (all defaults here) were added to fedfm after this run
    conf.write_text(json.dumps(saved))
    _, r2, _ = bench(p, quiet=True)
    assert [c.label for c in r2.skipped] == ["ok"] and len(r2.failed) == 1
    _, r3, _ = bench(p, ["train.lr=0.001"], only=["ok"], quiet=True)  # config changed: rerun
    assert [c.label for c in r3.ran] == ["ok"]
    _, r4, _ = bench(p, ["train.lr=0.001"], only=["ok"], quiet=True, force=True)
    assert [c.label for c in r4.ran] == ["ok"] and r4.skipped == []
    saved = json.loads((tmp_path / "runs/default/ok/seed0/config.json").read_text())
    assert saved["train"]["lr"] == 0.001


def test_isolated_cell_runs_in_its_own_process(tmp_path):
    p = suite_file(tmp_path, 'algorithms = ["fedavg"]\n', head="isolate = true\n")
    _, result, _ = bench(p, quiet=True)
    assert result.failed == [] and len(result.ran) == 1
    info = json.loads((tmp_path / "runs/default/fedavg/seed0/bench.json").read_text())
    assert info["isolated"] is True and info["cpu_s"] > 0 and info["label"] == "fedavg"


def fake_run(folder: Path, algorithm: str, seed: int, accs: list[float], finetune: str = "lora",
             probe: float = 100.0, compute: float = 10.0) -> Path:
    folder.mkdir(parents=True)
    config = {"algorithm": algorithm, "seed": seed, "out": str(folder), "rounds": len(accs),
              "model": {"name": "tiny-bert", "finetune": finetune}, "data": {"name": "synthetic"}}
    rows = [{"round": i + 1, "bytes_up": 1_000_000, "bytes_down": 500_000, "acc_global": a,
             "acc_personal_mean": a / 2} for i, a in enumerate(accs)]
    summary = {"algorithm": algorithm, "acc_global": accs[-1], "acc_personal_mean": accs[-1] / 2,
               "bytes_up": 1_000_000 * len(accs), "bytes_down": 500_000 * len(accs),
               "client_compute_s": compute, "peak_rss_mb": 100.0 + seed, "wall_s": 12.0,
               "speed_probe_gflops": probe, "threads": 1}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "summary.json").write_text(json.dumps(summary))
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_report_aggregates_seeds_and_labels_adhoc_runs(tmp_path):
    fake_run(tmp_path / "r/a0", "fedavg", 0, [0.5, 0.7], probe=50.0, compute=20.0)
    fake_run(tmp_path / "r/a1", "fedavg", 1, [0.6, 0.9], probe=100.0)
    fake_run(tmp_path / "r/b0", "fedavg", 0, [0.4, 0.6], finetune="full", probe=200.0)
    runs = find_runs([tmp_path / "r"])
    groups = group_runs(runs)["runs"]
    assert sorted(g.label for g in groups) == ["fedavg (model.finetune=full)",
                                               "fedavg (model.finetune=lora)"]
    lora = next(g for g in groups if g.label.endswith("lora)"))
    assert len(lora.runs) == 2
    ref = probe_ref(runs)
    assert ref == {1: 100.0}
    row = table_row(lora, ref)
    assert row[3] == "0.800 ± 0.141"  # mean and sample std of 0.7, 0.9
    assert row[4] == "0.400 ± 0.071"
    assert row[5] == "2.00" and row[6] == "1.00"
    assert row[7] == "15.0" and row[8] == "10.0"  # compute @ref: (20 * 0.5 + 10 * 1) / 2
    assert row[9] == "101"  # peak memory: max over seeds
    assert curve(lora, "acc_global") == [(1, 1.5, 0.55), (2, 3.0, 0.8)]
    md = write_report(runs, tmp_path / "rep/report.md", "t", baseline="fedavg (model.finetune=lora)")
    text = md.read_text()
    ratios = text.split("Against")[1]
    # full vs lora: accuracy 0.6 vs mean(0.7, 0.9) = -20 points; same bytes
    assert "| fedavg (model.finetune=full) | -20.0 | -10.0 | 1 |" in ratios
    assert "varied 4.0x" in text and "| fedavg (model.finetune=full) |" in text
    assert (tmp_path / "rep/report-runs-rounds.png").exists()


def test_report_cli(tmp_path, capsys):
    fake_run(tmp_path / "r/x", "local", 0, [0.3])
    assert main(["report", str(tmp_path / "r/x"), "--out", str(tmp_path / "o/r.md")]) == 0
    assert "| local | local | 1 |" in (tmp_path / "o/r.md").read_text()
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "no finished run" in capsys.readouterr().err


def test_tensorboard_export(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from fedfm.bench.tensorboard import export

    fake_run(tmp_path / "r/x", "fedavg", 0, [0.5, 0.75])
    export(find_runs([tmp_path / "r"]), tmp_path / "tb")
    (folder,) = [p.parent for p in (tmp_path / "tb").rglob("events.out.tfevents.*")]
    acc = EventAccumulator(str(folder))
    acc.Reload()
    assert [e.value for e in acc.Scalars("acc_global")] == [0.5, 0.75]
    assert [e.step for e in acc.Scalars("acc_global")] == [1, 2]
