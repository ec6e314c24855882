"""The small ViTs: shapes, stage ends, feature taps named like the CNNs', determinism, dense per-token head, and
building from a recipe."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from distill.config import parse_config
from distill.core.taps import FeatureTaps
from distill.models import build_model
from distill.models.vit import TokenGrid, VisionTransformer, stage_ends

DEMO = str(Path(__file__).resolve().parents[1] / "src" / "distill" / "assets" / "cifar10_demo.tar.gz")


def capture(model: torch.nn.Module, aliases: list[str], x: torch.Tensor) -> tuple[torch.Tensor, dict]:
    names = [model.feature_taps[a] for a in aliases]
    with FeatureTaps(model, names).capture() as feats:
        out = model(x)
    return out, {a: feats[n] for a, n in zip(aliases, names)}


def test_stage_ends_split_blocks_evenly():
    assert stage_ends(8, 4) == [1, 3, 5, 7]  # the spec's blocks 2/4/6/8
    assert stage_ends(4, 4) == [0, 1, 2, 3]
    assert stage_ends(6, 3) == [1, 3, 5]
    assert stage_ends(5, 2) == [2, 4]
    with pytest.raises(ValueError, match="stages"):
        stage_ends(4, 5)


@pytest.mark.parametrize("cls_token", [True, False])
def test_taps_shapes_and_values(cls_token):
    torch.manual_seed(0)
    model = VisionTransformer(num_classes=7, dim=32, depth=4, heads=2, cls_token=cls_token, stages=2).eval()
    x = torch.randn(3, 3, 32, 32)
    aliases = ["f0", "f0_map", "f1", "f1_map", "f2", "f2_map", "tokens", "tokens_map", "pooled"]
    out, f = capture(model, aliases, x)
    n = 64 + (1 if cls_token else 0)
    assert out.shape == (3, 7)
    assert model.feature_taps["f1"] == "blocks.1" and model.feature_taps["f2"] == "blocks.3"
    for name in ("f0", "f1", "f2", "tokens"):
        assert f[name].shape == (3, n, 32), name
        assert f[name + "_map"].shape == (3, 32, 8, 8), name
        # the map is the patch tokens, row-major over the 8 x 8 grid (token 9 = row 1, column 1)
        prefix = 1 if cls_token else 0
        assert torch.equal(f[name + "_map"][:, :, 1, 1], f[name][:, prefix + 9]), name
    # the last stage is the last block's output; pooled is the normalised cls token or the mean patch token
    assert torch.allclose(model.norm(f["f2"]), f["tokens"])
    expected = f["tokens"][:, 0] if cls_token else f["tokens"].mean(1)
    assert torch.allclose(f["pooled"], expected)
    assert torch.allclose(model.head(f["pooled"]), out, atol=1e-6)


def test_token_grid_drops_prefix():
    x = torch.arange(2 * 5 * 3, dtype=torch.float32).view(2, 5, 3)
    g = TokenGrid(prefix=1, grid=2)(x)
    assert g.shape == (2, 3, 2, 2)
    assert torch.equal(g[1, :, 0, 1], x[1, 2])


def test_named_architectures_and_options():
    tiny, micro = build_model("vit_tiny"), build_model("vit_micro")
    assert (tiny.dim, tiny.depth, tiny.heads, tiny.ends) == (128, 8, 2, [1, 3, 5, 7])
    assert (micro.dim, micro.depth, micro.heads, micro.ends) == (96, 4, 1, [0, 1, 2, 3])
    assert VisionTransformer(dim=192, depth=1).heads == 3  # the spec's rule for d = 192
    assert sum(p.numel() for p in tiny.parameters()) == 1_602_442
    custom = build_model("vit", num_classes=5, patch_size=8, dim=64, depth=2, cls_token=False)
    assert custom.grid == 4 and custom(torch.zeros(1, 3, 32, 32)).shape == (1, 5)
    with pytest.raises(ValueError, match="divisible"):
        VisionTransformer(dim=30, heads=4)
    with pytest.raises(ValueError, match="multiple"):
        VisionTransformer(patch_size=5)


def test_dense_head_gives_per_token_logits_consistent_with_head():
    torch.manual_seed(1)
    model = VisionTransformer(num_classes=3, dim=32, depth=2, heads=2, dense=True).eval()
    x = torch.randn(2, 3, 32, 32)
    out, f = capture(model, ["tokens"], x)
    assert out.shape == (2, 3, 8, 8)
    assert torch.allclose(out[:, :, 2, 5], model.head(f["tokens"][:, 1 + 2 * 8 + 5]), atol=1e-6)


def test_same_seed_same_model_and_output_gradients_reach_every_parameter():
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    outs = []
    for _ in range(2):
        torch.manual_seed(3)
        outs.append(build_model("vit_micro").eval()(x))
    assert torch.equal(outs[0], outs[1])
    torch.manual_seed(4)
    model = build_model("vit_micro")
    model(x).logsumexp(-1).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_recipe_builds_vit_with_options_and_rejects_bad_option():
    raw = {"output_dir": "runs/x", "data": {"train": DEMO, "eval": DEMO, "train_per_class": 2},
           "student": {"arch": "vit", "options": {"dim": 64, "depth": 2, "stages": 2}},
           "methods": [{"name": "ce"}], "train": {"epochs": 1, "batch_size": 4}}
    cfg = parse_config(raw)
    assert cfg.student.options == {"dim": 64, "depth": 2, "stages": 2}
    raw["student"]["options"] = {"width": 64}
    with pytest.raises(ValueError, match="student.options"):
        from distill.experiment import build_experiment

        build_experiment(parse_config(raw))


@pytest.mark.parametrize("arch", ["vit", "vit_micro"])
def test_a_vits_image_size_follows_the_data(arch):
    """data.image_size 48: the ViT's position table is built for 48 px (it was built for 32 and the first step
    failed with a tensor-size error); a disagreeing options.image_size and non-square images are named."""
    from types import SimpleNamespace

    from distill.config import ConfigError, ModelConfig
    from distill.tasks.image.models import build_image_model

    loaded = SimpleNamespace(train=SimpleNamespace(images=torch.zeros(2, 3, 48, 48, dtype=torch.uint8)))
    model = build_image_model(ModelConfig(arch=arch, weights="random"), 10, None, "student", loaded)
    assert model.grid == 12 and model(torch.randn(1, 3, 48, 48)).shape == (1, 10)
    with pytest.raises(ConfigError, match=r"student.options.image_size: 32, but the data's images are 48 x 48"):
        build_image_model(ModelConfig(arch=arch, weights="random", options={"image_size": 32}), 10, None, "student",
                          loaded)
    wide = SimpleNamespace(train=SimpleNamespace(images=torch.zeros(2, 3, 32, 48, dtype=torch.uint8)))
    with pytest.raises(ConfigError, match=r"data.image_size: .* square images; the training images are 32 x 48"):
        build_image_model(ModelConfig(arch=arch, weights="random"), 10, None, "student", wide)
    # CNNs take any size and are left alone
    assert build_image_model(ModelConfig(arch="resnet20", weights="random"), 10, None, "student", wide) is not None
