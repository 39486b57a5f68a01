"""Vision families on tiny random configs: ViT/DeiT/DINOv2 registry rows, FedAvg learning on a
user's image folder (model.name = hf), FedMS's prefix cache on ViT blocks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedfm.config import build_config
from fedfm.core.errors import ConfigError
from fedfm.models.vision import save_vit_folder

PIL = pytest.importorskip("PIL.Image")
SIZE = 16


def vit_config(kind: str = "vit", layers: int = 2):
    from transformers import DeiTConfig, Dinov2Config, ViTConfig

    common = dict(hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
                  image_size=SIZE, patch_size=4, hidden_dropout_prob=0.0,
                  attention_probs_dropout_prob=0.0)
    if kind == "dinov2":  # FFN = 4 x hidden, as in the real checkpoints
        return Dinov2Config(mlp_ratio=4, **common)
    return {"vit": ViTConfig, "deit": DeiTConfig}[kind](intermediate_size=128, **common)


@pytest.fixture(scope="module")
def vit_folder(tmp_path_factory):
    return save_vit_folder(tmp_path_factory.mktemp("vit"), vit_config(), seed=0)


def pattern(k: int, rng) -> np.ndarray:
    """Class 0: horizontal stripes, 1: vertical stripes, 2: checkerboard (2-pixel cells)."""
    i, j = np.meshgrid(np.arange(SIZE), np.arange(SIZE), indexing="ij")
    base = [(i // 2) % 2, (j // 2) % 2, ((i // 2) + (j // 2)) % 2][k]
    img = 200 * base + rng.normal(0, 25, (SIZE, SIZE)) + 20
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for split, n in (("train", 40), ("test", 10)):
        for k, name in enumerate(("hstripes", "vstripes", "checker")):
            d = root / split / name
            d.mkdir(parents=True)
            for i in range(n):
                PIL.fromarray(pattern(k, rng)).convert("RGB").save(d / f"{i}.png")
    return root


def vision_cfg(tmp_path, vit_folder, image_folder, **over):
    raw = {
        "algorithm": "fedavg", "rounds": 3, "seed": 0, "out": str(tmp_path / "run"),
        "overwrite": True,
        "model": {"name": "hf", "path": str(vit_folder), "finetune": "full", "pooling": "cls"},
        "data": {"name": "imagefolder", "path": str(image_folder), "partition": "iid",
                 "num_clients": 3},
        "train": {"batch_size": 16, "lr": 2e-3, "threads": 1},
    }
    for key, value in over.items():
        node = raw
        *path, last = key.split(".")
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
    return build_config(raw)


@pytest.mark.parametrize("kind", ["vit", "deit", "dinov2"])
def test_vision_families_resolve_and_cut_at_any_block(kind):
    from transformers import AutoModel

    from fedfm.models.hf.loading import wrap

    base = AutoModel.from_config(vit_config(kind, layers=3))
    backbone = wrap(base)
    assert backbone.family.name == kind and backbone.family.inputs == "pixels"
    assert backbone.spec.num_layers == 3 and not backbone.family.rope
    x = torch.randn(2, 3, SIZE, SIZE)
    mask = torch.ones(2, 1, dtype=torch.long)
    backbone.eval()
    with torch.no_grad():
        full = backbone(x, mask)  # (2, T, 32)
        for s in range(4):  # SAL: the states entering block s, then the tail from them
            h = backbone.prefix(x, mask, s)
            torch.testing.assert_close(backbone.run_from(h, mask, s), full, atol=0, rtol=0)


def test_vit_fedavg_learns_on_an_image_folder(tmp_path, vit_folder, image_folder):
    from fedfm.run import run

    s = run(vision_cfg(tmp_path, vit_folder, image_folder), quiet=True)
    assert s["acc_global"] > 0.8  # 3 classes: chance 0.33
    assert s["num_labels"] == 3 and s["num_clients"] == 3


def test_fedms_prefix_cache_on_vit_gives_the_same_update(tmp_path, vit_folder, image_folder):
    from fedfm.algorithms.base import ClientContext, ClientMemory
    from fedfm.sim.world import build_world

    ups = []
    for cache in (True, False):
        cfg = vision_cfg(tmp_path, vit_folder, image_folder, algorithm="fedms",
                         **{"model.finetune": "lora", "fedms.cache": cache, "fedms.k0": 1})
        w = build_world(cfg)
        w.algorithm.init_server(w.model)
        (task,) = w.algorithm.configure_train(0, [0])
        memory = ClientMemory()
        update = w.algorithm.client_update(task, w.model, w.data.clients[0], memory,
                                           ClientContext(1234, 0, 0))
        assert ("prefix.train" in memory.tensors) == cache
        ups.append(update.tensors)
    for k in ups[0]:
        torch.testing.assert_close(ups[0][k], ups[1][k], atol=1e-5, rtol=1e-4)


def vit_classifier(kind="vit"):
    from transformers import AutoModel

    from fedfm.models.classifier import Classifier
    from fedfm.models.hf.loading import wrap

    with torch.random.fork_rng():
        torch.manual_seed(0)
        base = AutoModel.from_config(vit_config(kind, layers=2))
    base.pooler = None
    clf = Classifier(wrap(base), 3, "cls", seed=0).eval()
    with torch.no_grad():  # random, non-degenerate LayerNorms so no unit is interchangeable
        for n, p in clf.named_parameters():
            if "layernorm" in n or "norm" in n.split(".")[-2]:
                p.add_(0.3 * torch.randn(p.shape))
    return clf


@pytest.mark.parametrize("kind", ["vit", "deit", "dinov2"])
def test_raffm_spp_is_function_preserving_on_vision_families(kind):
    from fedfm.models.classifier import set_tensors
    from fedfm.models.hf_elastic import spp
    from fedfm.models.hf_raffm import geometry_of, server_tensors

    clf = vit_classifier(kind)
    geo = geometry_of(clf)
    assert not geo.rope and geo.heads == geo.kv_heads == 4  # within-head q/k order allowed
    x = torch.randn(3, 3, SIZE, SIZE)
    mask = torch.ones(3, 1, dtype=torch.long)
    with torch.no_grad():
        before = clf(x, mask)
    t = server_tensors(clf, geo)
    p = spp(t, geo)
    q = f"{geo.blocks}.0.{geo.roles['q']}.weight"
    assert not torch.equal(p[q], t[q])  # SPP did reorder something
    up = f"{geo.blocks}.1.{geo.roles['up']}.weight"
    assert not torch.equal(p[up], t[up])
    set_tensors(clf, p)
    with torch.no_grad():
        torch.testing.assert_close(clf(x, mask), before, atol=1e-5, rtol=1e-4)


def test_raffm_half_width_vit_subnetwork_runs_on_pixels():
    from fedfm.models.elastic import Widths
    from fedfm.models.hf_elastic import extract
    from fedfm.models.hf_raffm import geometry_of, server_tensors, sub_classifier

    clf = vit_classifier()
    geo = geometry_of(clf)
    w = Widths((2, 2), (64, 64))
    sub = sub_classifier(clf, geo, w, extract(server_tensors(clf, geo), geo, w))
    q = sub.backbone.blocks[0].get_submodule(geo.roles["q"]).weight
    assert q.shape == (2 * geo.head_dim, 32)
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        assert sub(x, torch.ones(2, 1, dtype=torch.long)).shape == (2, 3)


def test_raffm_runs_on_a_vit_folder(tmp_path, vit_folder, image_folder):
    from fedfm.run import run

    cfg = vision_cfg(tmp_path, vit_folder, image_folder, algorithm="raffm", rounds=2, **{
        "resources.tiers": {"small": 0.5, "large": 1.0},
        "resources.proportions": {"small": 0.5, "large": 0.5}})
    s = run(cfg, quiet=True)
    assert s["acc_global"] > 0.5  # 3 classes: chance 0.33
    by_tier = {c["tier"]: c for c in s["clients"]}
    assert by_tier["small"]["params_fraction"] <= 0.5
    assert by_tier["small"]["bytes_sent"] < by_tier["large"]["bytes_sent"]


@pytest.mark.parametrize("algorithm", ["fedprox", "fedper", "local", "hetlora", "flexlora", "flora",
                                       "fedms"])
def test_other_algorithms_run_on_vit(algorithm, tmp_path, vit_folder, image_folder):
    from fedfm.run import run

    over = {"rounds": 1, "model.finetune": "lora", "model.lora_rank": 4}
    if algorithm == "fedms":  # both stages: SAL global expert, then local expert + gate
        over.update({"rounds": 2, "fedms.stage1_rounds": 1})
    if algorithm in ("hetlora", "flexlora", "flora"):
        over.update({"resources.tiers": {"small": 0.5, "large": 1.0},
                     "resources.proportions": {"small": 0.5, "large": 0.5}})
    s = run(vision_cfg(tmp_path, vit_folder, image_folder, algorithm=algorithm, **over),
            quiet=True)
    assert s["acc_personal_mean"] is not None and s["trainable_params"] > 0


def test_flower_grid_and_resume_are_unchanged_for_images(tmp_path, vit_folder, image_folder,
                                                        monkeypatch):
    """fedfm-on-Flower (in-process Grid) and a crash + resume both equal the embedded run."""
    from safetensors.torch import load_file

    from fedfm.flower.client import make_client_app
    from fedfm.flower.inprocess import InProcessGrid
    from fedfm.flower.strategy import FlowerClients, discover
    from fedfm.run import resume_run, run
    from fedfm.sim.checkpoint import Checkpointer

    monkeypatch.setenv("FEDFM_CACHE", str(tmp_path / "cache"))
    over = {"rounds": 2, "checkpoint.enabled": True, "sampling.fraction": 0.67}

    def cfg(name):
        return vision_cfg(tmp_path / name, vit_folder, image_folder, **over)

    run(cfg("emb"), quiet=True)
    flw = cfg("flw")
    grid = InProcessGrid(make_client_app(flw), 3)
    nodes = discover(grid, 3, timeout_s=10)
    run(flw, quiet=True, transport=lambda w: FlowerClients.for_config(grid, nodes, flw))
    save = Checkpointer.save

    def save_then_crash(self, rnd, runner, rows):
        path = save(self, rnd, runner, rows)
        if rnd == 1:
            raise KeyboardInterrupt
        return path

    monkeypatch.setattr(Checkpointer, "save", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        run(cfg("res"), quiet=True)
    monkeypatch.setattr(Checkpointer, "save", save)
    resume_run(tmp_path / "res" / "run", quiet=True)
    ref = load_file(str(tmp_path / "emb/run/final/global.safetensors"))
    for other in ("flw", "res"):
        got = load_file(str(tmp_path / other / "run/final/global.safetensors"))
        assert sorted(got) == sorted(ref)
        for k in ref:
            assert (got[k] - ref[k]).abs().max().item() <= 1e-6, (other, k)


@pytest.mark.parametrize("kind", ["vit", "dinov2"])
def test_raffm_half_budget_vit_export_loads_with_automodel_alone(kind, tmp_path, image_folder):
    from transformers import AutoImageProcessor, AutoModel

    from fedfm.export.budget import export
    from fedfm.run import run

    folder = save_vit_folder(tmp_path / kind, vit_config(kind), seed=0)
    cfg = vision_cfg(tmp_path, folder, image_folder, algorithm="raffm", rounds=1, **{
        "resources.tiers": {"small": 0.5, "large": 1.0},
        "resources.proportions": {"small": 0.5, "large": 0.5}})
    run(cfg, quiet=True)
    budget = 0.5
    if kind == "dinov2":  # its config holds an integer mlp_ratio: FFN 1 x hidden is 51% here
        with pytest.raises(ConfigError, match="standard 'dinov2' config"):
            export(cfg.out, 0.5, tmp_path / "no", repeats=1, batch=4)
        budget = 0.6
    r = export(cfg.out, budget, tmp_path / "exp", repeats=1, batch=4)
    assert r["params_fraction"] <= budget and r["max_abs_diff_vs_fedfm"] < 1e-5
    assert r["family"] == kind and r["seq_len"] == (SIZE // 4) ** 2 + 1
    # a standard config: every head kept (ViT fixes head size = hidden / heads), FFN cut
    model = AutoModel.from_pretrained(str(tmp_path / "exp"))  # transformers alone
    ffn = model.config.intermediate_size if kind == "vit" else int(32 * model.config.mlp_ratio)
    assert model.config.num_attention_heads == 4 and ffn == r["ffn"][0] < 128
    proc = AutoImageProcessor.from_pretrained(str(tmp_path / "exp"))
    img = PIL.fromarray(pattern(0, np.random.default_rng(1))).convert("RGB")
    h = model(**proc(images=[img], return_tensors="pt")).last_hidden_state
    assert h.shape == (1, (SIZE // 4) ** 2 + 1, 32)


@pytest.mark.slow
def test_vision_config_learns_mnist_5k(tmp_path):
    """configs/vision.toml as shipped (tiny-vit, MNIST-5k), shortened: 3 rounds on 2,000 images."""
    from fedfm.cli import main

    out = tmp_path / "run"
    assert main(["run", "configs/vision.toml", f"out={out}", "rounds=3",
                 "data.max_examples=2000", "--quiet"]) == 0
    import json

    s = json.loads((out / "summary.json").read_text())
    assert s["acc_global"] > 0.3  # 10 classes: chance 0.1


def test_cli_errors_for_images_exit_2(tmp_path, capsys):
    from fedfm.cli import main

    assert main(["run", "configs/vision.toml", "data.name=imagefolder",
                 f"data.path={tmp_path / 'missing'}", f"out={tmp_path / 'r'}", "--quiet"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["run", "configs/vision.toml", "data.name=synthetic",
                 f"out={tmp_path / 'r2'}", "--quiet"]) == 2
    assert "vision model" in capsys.readouterr().err
    assert main(["run", "configs/vision.toml", "model.name=tiny-bert", "model.finetune=lora",
                 "data.name=digits", f"out={tmp_path / 'r3'}", "--quiet"]) == 2
    assert "holds images" in capsys.readouterr().err
