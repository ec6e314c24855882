"""Reference CIFAR architectures: shapes, parameter counts, feature taps, pretrained checkpoints."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from distill.models import MODELS, build_model, list_models, load_pretrained_cifar_resnet

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
CKPT_DIR = SHARED / "models" / "resnet-cifar10"
CIFAR_JPEG = SHARED / "data" / "cifar10-jpeg.tar.gz"

# CIFAR-100 parameter counts reported by CRD/RepDistiller (millions, rounded to 0.01M)
REPORTED_PARAMS_M = {
    "resnet20": 0.28,
    "resnet56": 0.86,
    "resnet110": 1.74,
    "resnet8x4": 1.23,
    "resnet32x4": 7.43,
    "wrn_16_2": 0.70,
    "wrn_40_2": 2.26,
    "vgg8": 3.96,
    "vgg13": 9.46,
    "mobilenetv2": 0.81,
    "shufflenetv2": 1.36,
}


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _capture(
    model: nn.Module, taps: dict[str, str], x: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Run ``model(x)`` with forward hooks on every tap; return the logits and the captured features."""
    feats: dict[str, torch.Tensor] = {}
    handles = []
    for name, tap in taps.items():
        path, _, kind = tap.partition(":")
        module = model.get_submodule(path)
        if kind == "input":
            handles.append(
                module.register_forward_pre_hook(lambda _m, inp, n=name: feats.__setitem__(n, inp[0]))
            )
        else:
            handles.append(
                module.register_forward_hook(lambda _m, _i, out, n=name: feats.__setitem__(n, out))
            )
    try:
        logits = model(x)
    finally:
        for h in handles:
            h.remove()
    return logits, feats


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("num_classes", [10, 100])
def test_builds_and_returns_logits(name: str, num_classes: int) -> None:
    torch.manual_seed(0)
    model = build_model(name, num_classes=num_classes)
    logits = model(torch.randn(2, 3, 32, 32))
    assert isinstance(logits, torch.Tensor)
    assert logits.shape == (2, num_classes)
    assert torch.isfinite(logits).all()
    logits.sum().backward()  # no in-place op breaks autograd
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("name", sorted(REPORTED_PARAMS_M))
def test_parameter_counts_match_the_literature(name: str) -> None:
    count = _n_params(build_model(name, num_classes=100)) / 1e6
    assert count == pytest.approx(REPORTED_PARAMS_M[name], rel=0.02), f"{name}: {count:.4f}M"


def test_cifar10_resnet_parameter_counts() -> None:
    # He et al. / akamaster table (10 classes): 0.27M, 0.46M, 0.66M, 0.85M, 1.7M
    expected = {"resnet20": 0.27, "resnet32": 0.46, "resnet44": 0.66, "resnet56": 0.85, "resnet110": 1.73}
    for name, millions in expected.items():
        assert _n_params(build_model(name)) / 1e6 == pytest.approx(millions, rel=0.02), name


@pytest.mark.parametrize("name", sorted(MODELS))
def test_feature_taps_name_existing_modules_and_fire(name: str) -> None:
    model = build_model(name, num_classes=10).eval()
    taps = model.feature_taps
    assert {"f0", "f1", "f2", "f3", "pooled"} <= set(taps)
    for tap in taps.values():
        path, _, kind = tap.partition(":")
        assert kind in ("", "input"), tap
        model.get_submodule(path)  # raises AttributeError if absent
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        logits, feats = _capture(model, taps, x)
    assert set(feats) == set(taps)
    assert all(isinstance(f, torch.Tensor) for f in feats.values())
    assert feats["pooled"].shape[0] == 2 and feats["pooled"].dim() == 2
    # the classifier sees exactly the pooled features
    head = model.get_submodule(taps["pooled"].partition(":")[0])
    torch.testing.assert_close(head(feats["pooled"]), logits)
    # stages shrink spatially and are 4-D (a ViT's stages are token sequences: their ``_map`` taps are the grids)
    maps = "f1_map" in feats
    stages = [feats[k + "_map" if maps else k] for k in ("f0", "f1", "f2", "f3", "f4") if k in feats]
    if maps:
        assert all(feats[k].dim() == 3 for k in ("f1", "f2", "f3"))
    assert all(f.dim() == 4 for f in stages)
    sizes = [f.shape[-1] for f in stages]
    assert sizes == sorted(sizes, reverse=True)


@pytest.mark.parametrize("name", ["resnet20", "resnet8x4", "shufflenetv2", "vgg8"])
def test_stage_outputs_are_post_relu_and_not_mutated(name: str) -> None:
    model = build_model(name).eval()
    with torch.no_grad():
        _, feats = _capture(model, model.feature_taps, torch.randn(2, 3, 32, 32))
    for key in ("f1", "f2", "f3"):
        assert feats[key].min() >= 0, key
    if name.startswith("resnet"):
        # the captured last stage, average-pooled, is the classifier input: nothing modified it in place
        torch.testing.assert_close(feats["f3"].mean(dim=(2, 3)), feats["pooled"])
        torch.testing.assert_close(feats["f3"], feats["f3_pre"].clamp_min(0))


def test_wrn_preact_taps() -> None:
    model = build_model("wrn_16_2").eval()
    with torch.no_grad():
        _, feats = _capture(model, model.feature_taps, torch.randn(2, 3, 32, 32))
    torch.testing.assert_close(feats["f3_pre"], model.bn1(feats["f3"]))
    torch.testing.assert_close(feats["f1_pre"], model.block2.layer[0].bn1(feats["f1"]))
    assert feats["f1"].shape == (2, 32, 32, 32) and feats["f3"].shape == (2, 128, 8, 8)


def test_unknown_model_names_the_allowed_ones() -> None:
    with pytest.raises(ValueError, match="resnet99") as err:
        build_model("resnet99")
    assert "resnet56" in str(err.value) and "mobilenetv2" in str(err.value)
    assert list_models() == sorted(MODELS)


def test_width_and_depth_kwargs() -> None:
    assert build_model("mobilenetv2", width_mult=1.0).blocks[0][0].conv[0].in_channels == 32
    assert build_model("wrn", depth=28, widen_factor=1).block1.layer.__len__() == 4


def test_loader_round_trips_safetensors_and_rejects_mismatches(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = build_model("resnet32").eval()
    path = tmp_path / "r32.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    loaded = load_pretrained_cifar_resnet(path)
    assert isinstance(loaded, type(model)) and loaded.depth == 32 and not loaded.training
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded(x), model(x))

    # a DataParallel checkpoint with a missing tensor: the error names it
    sd = {f"module.{k}": v for k, v in model.state_dict().items() if k != "layer2.0.conv1.weight"}
    torch.save({"state_dict": sd}, tmp_path / "bad.th")
    with pytest.raises(ValueError, match=r"layer2\.0\.conv1\.weight"):
        load_pretrained_cifar_resnet(tmp_path / "bad.th")
    # wrong architecture requested
    torch.save(model.state_dict(), tmp_path / "bare.th")
    with pytest.raises(ValueError, match="resnet20"):
        load_pretrained_cifar_resnet(tmp_path / "bare.th", arch="resnet20")


def _checkpoints() -> list[Path]:
    return sorted(CKPT_DIR.glob("resnet*.th")) if CKPT_DIR.is_dir() else []


@pytest.mark.skipif(not _checkpoints(), reason=f"pretrained CIFAR-10 ResNets not found in {CKPT_DIR}")
@pytest.mark.parametrize("depth", [20, 32, 44, 56])
def test_pretrained_checkpoints_load_strictly(depth: int) -> None:
    (path,) = [p for p in _checkpoints() if p.name.startswith(f"resnet{depth}-")]
    raw = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    model = load_pretrained_cifar_resnet(path)
    assert model.depth == depth and model.linear.out_features == 10
    for key, value in raw.items():
        torch.testing.assert_close(model.state_dict()[key.removeprefix("module.")], value)


def _balanced_jpeg_test_set(per_class: int = 200) -> tuple[torch.Tensor, torch.Tensor]:
    from PIL import Image

    blobs: dict[str, dict[str, bytes]] = {}
    with tarfile.open(CIFAR_JPEG, "r:gz") as tar:
        for member in tar:
            parts = member.name.split("/")
            if member.isfile() and len(parts) == 3 and parts[0] == "test":
                blobs.setdefault(parts[1], {})[parts[2]] = tar.extractfile(member).read()
    classes = sorted(blobs)
    assert len(classes) == 10 and classes[0] == "airplane" and classes[-1] == "truck"
    images, labels = [], []
    for label, cls in enumerate(classes):
        for fname in sorted(blobs[cls])[:per_class]:
            images.append(np.asarray(Image.open(io.BytesIO(blobs[cls][fname])).convert("RGB")))
            labels.append(label)
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (x - mean) / std, torch.tensor(labels)


@pytest.mark.slow
@pytest.mark.skipif(
    not (CIFAR_JPEG.is_file() and CKPT_DIR.is_dir()), reason=f"{CIFAR_JPEG} or {CKPT_DIR} not found"
)
def test_pretrained_resnet56_accuracy_on_jpeg_cifar10() -> None:
    (path,) = [p for p in _checkpoints() if p.name.startswith("resnet56-")]
    model = load_pretrained_cifar_resnet(path)
    x, y = _balanced_jpeg_test_set(per_class=200)
    assert x.shape == (2000, 3, 32, 32)
    with torch.inference_mode():
        pred = torch.cat([model(batch).argmax(1) for batch in x.split(500)])
    accuracy = (pred == y).float().mean().item()
    assert accuracy >= 0.80, f"resnet56 top-1 on 2000 JPEG test images: {accuracy:.4f}"


@pytest.mark.parametrize(
    ("name", "keys"),
    [
        ("resnet20", ["conv1.weight", "layer2.0.conv1.weight", "layer3.2.bn2.running_var", "linear.bias"]),
        ("resnet8x4", ["layer1.0.downsample.0.weight", "layer3.0.downsample.1.running_mean", "fc.weight"]),
        (
            "wrn_16_2",
            ["block1.layer.0.convShortcut.weight", "block3.layer.1.bn2.weight", "bn1.weight", "fc.bias"],
        ),
        ("vgg8", ["block0.0.weight", "block0.1.running_mean", "block4.1.weight", "classifier.weight"]),
        (
            "mobilenetv2",
            ["conv1.0.weight", "blocks.0.0.conv.0.weight", "blocks.6.0.conv.7.bias", "conv2.1.weight"],
        ),
        (
            "shufflenetv2",
            ["layer1.0.conv5.weight", "layer1.1.bn3.weight", "layer3.3.conv1.weight", "linear.bias"],
        ),
    ],
)
def test_state_dict_names_follow_the_reference_code(name: str, keys: list[str]) -> None:
    # the akamaster / RepDistiller parameter names, so their checkpoints load without renaming
    state = build_model(name, num_classes=100).state_dict()
    assert all(k in state for k in keys), [k for k in keys if k not in state]
