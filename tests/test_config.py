import pytest

from fedfm.cli import main
from fedfm.config import build_config, load_config
from fedfm.core.errors import ConfigError
from tests.conftest import tiny_raw


def test_overrides_and_types(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('algorithm = "fedavg"\n[data]\nalpha = 0.5\n')
    cfg = load_config(p, ["data.alpha=0.1", "train.lr=0.01", "model.lora_targets=query,value"])
    assert cfg.data.alpha == 0.1 and cfg.train.lr == 0.01
    assert cfg.model.lora_targets == ("query", "value")


@pytest.mark.parametrize("override, needle", [
    ({"algorithm": "nope"}, "Valid algorithms"),
    ({"data.alpha": 0.0}, "data.alpha must be > 0"),
    ({"data.bogus": 1}, "Unknown config key 'data.bogus'"),
    ({"rounds": "three"}, "expected an integer"),
    ({"sampling.fraction": 1.5}, "sampling.fraction"),
])
def test_bad_values_name_the_problem(override, needle):
    with pytest.raises(ConfigError, match=needle):
        build_config(tiny_raw(**override))


def test_cli_errors_exit_2_without_traceback(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("algorithm = [unclosed\n")
    assert main(["run", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "not valid TOML" in err and "Traceback" not in err
    assert main(["run", str(tmp_path / "missing.toml")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_unknown_model_and_too_many_clients(tiny_cfg, capsys, tmp_path):
    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text('algorithm = "fedavg"\nrounds = 1\n[model]\nname = "gpt5"\n')
    assert main(["run", str(cfg_file), f"out={tmp_path / 'o'}", "--quiet"]) == 2
    assert "Valid models" in capsys.readouterr().err
    cfg_file.write_text('algorithm = "fedavg"\nrounds = 1\n[model]\nname = "tiny-bert"\n'
                        '[data]\nname = "synthetic"\nnum_clients = 5000\n')
    assert main(["run", str(cfg_file), f"out={tmp_path / 'o2'}", "--quiet"]) == 2
    assert "clients" in capsys.readouterr().err


def test_list_shows_registries(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for word in ("fedavg", "fedprox", "local", "fedper", "minilm-l6", "bbc", "dirichlet"):
        assert word in out
