"""task: super_resolution: bicubic pairs, Y-channel PSNR / SSIM against scikit-image, the folder loaders, SPAN's
shapes, and a tiny real run (texture crops) through `distill train` with ConvLoRA, DSCLoRA and a teacher cache,
whose merged student has SPAN's size and the unmerged output."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from distill.config import ConfigError
from distill.tasks.super_resolution.data import bicubic_down, make_pairs, read_pair_folder, texture_crops
from distill.tasks.super_resolution.models import span
from distill.tasks.super_resolution.task import SuperResolution, psnr_y, rgb_to_y, ssim_y

REPO = Path(__file__).resolve().parents[1]


def test_bicubic_keeps_a_constant_image_and_halves_the_size() -> None:
    hr = torch.full((2, 3, 8, 12), 77, dtype=torch.uint8)
    lr = bicubic_down(hr, 2)
    assert lr.shape == (2, 3, 4, 6) and lr.dtype == torch.uint8 and bool((lr == 77).all())
    pairs = make_pairs(torch.zeros(1, 3, 9, 9, dtype=torch.uint8), 2, "x")  # cropped to a multiple of the scale
    assert pairs.hr.shape == (1, 3, 8, 8) and pairs.lr.shape == (1, 3, 4, 4)


def test_psnr_hand_case() -> None:
    """A gray image vs the same + 8/255 in every channel: Y differs by 8 * (65.481 + 128.553 + 24.966) / 255 =
    6.8706 levels, so PSNR = 20 log10(255 / 6.8706)."""
    hr = torch.full((1, 3, 8, 8), 100 / 255)
    sr = torch.full((1, 3, 8, 8), 108 / 255)
    d = 8 * (65.481 + 128.553 + 24.966) / 255
    assert math.isclose(float(psnr_y(sr, hr)), 20 * math.log10(255 / d), rel_tol=1e-6)
    assert float(ssim_y(hr, hr)) == pytest.approx(1.0)


def test_psnr_and_ssim_match_scikit_image_on_real_texture_crops() -> None:
    metrics = pytest.importorskip("skimage.metrics")
    hr8 = texture_crops(3, 0, "test", textures=("brick", "grass"), hr_size=32, split_row=320)
    hr = hr8.float() / 255
    torch.manual_seed(0)
    sr = (hr + 0.05 * torch.randn_like(hr)).clamp(0, 1)
    sr8 = (sr * 255).round() / 255
    for b in range(3):
        ys = rgb_to_y(sr8[b:b + 1])[0, 0].double().numpy()[2:-2, 2:-2]
        yh = rgb_to_y(hr[b:b + 1])[0, 0].double().numpy()[2:-2, 2:-2]
        ref_psnr = metrics.peak_signal_noise_ratio(yh, ys, data_range=255)
        ref_ssim = metrics.structural_similarity(yh, ys, data_range=255, gaussian_weights=True, sigma=1.5,
                                                 use_sample_covariance=False)
        assert float(psnr_y(sr[b:b + 1], hr[b:b + 1], border=2)) == pytest.approx(ref_psnr, abs=1e-6)
        assert float(ssim_y(sr[b:b + 1], hr[b:b + 1], border=2)) == pytest.approx(ref_ssim, abs=1e-6)


def test_task_scales_pixels_and_span_upscales() -> None:
    pairs = make_pairs(torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8), 2, "x")
    task = SuperResolution(2)
    batch = task.prepare(task.fetch(pairs, torch.arange(4)), train=True, generator=None)
    assert batch.inputs.shape == (4, 3, 8, 8) and float(batch.inputs.max()) <= 1.0
    assert torch.equal(batch.labels, pairs.hr.float() / 255)
    assert span(2, channels=8, num_blocks=2)(batch.inputs).shape == (4, 3, 16, 16)
    assert span(4, channels=8, num_blocks=1)(batch.inputs).shape == (4, 3, 32, 32)


def test_folder_pairs(tmp_path: Path) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(flat / f"{i}.png")
    made = read_pair_folder(flat, 2, "data.train")
    assert made.lr.shape == (2, 3, 4, 4) and torch.equal(made.lr, bicubic_down(made.hr, 2))
    paired = tmp_path / "paired"
    (paired / "hr").mkdir(parents=True)
    (paired / "lr").mkdir()
    Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(paired / "hr" / "a.png")
    Image.fromarray(rng.integers(0, 255, (4, 4, 3), dtype=np.uint8)).save(paired / "lr" / "a.png")
    given = read_pair_folder(paired, 2, "data.train")
    assert given.lr.shape == (1, 3, 4, 4) and given.hr.shape == (1, 3, 8, 8)
    with pytest.raises(ConfigError, match="data.train: .*times 3"):
        read_pair_folder(paired, 3, "data.train")
    Image.fromarray(rng.integers(0, 255, (4, 4, 3), dtype=np.uint8)).save(paired / "lr" / "b.png")
    with pytest.raises(ConfigError, match="same file names"):
        read_pair_folder(paired, 2, "data.train")


def test_distill_train_dsclora_on_real_texture_crops_and_the_merged_student(tmp_path: Path) -> None:
    """configs/super_resolution/dsclora.yaml on 16 real texture crops (64 -> 32) for one epoch: a random SPAN-48
    teacher served from its cache, the ConvLoRA student, PSNR/SSIM reported, and student_merged.safetensors that
    loads into a plain SPAN-26 with its parameter count and the unmerged output."""
    pytest.importorskip("skimage")
    from safetensors.torch import load_file, save_file

    from distill.models.conv_lora import apply_conv_lora

    base, teacher = tmp_path / "base.safetensors", tmp_path / "teacher.safetensors"
    save_file(span(2).state_dict(), str(base))
    save_file(span(2, channels=48).state_dict(), str(teacher))
    cmd = [sys.executable, "-m", "distill", "train", str(REPO / "configs" / "super_resolution" / "dsclora.yaml"),
           "--output-dir", str(tmp_path / "run"),
           "--set", "data.source=textures", "--set", "data.train=null", "--set", "data.eval=null",
           "--set", "data.textures.train_size=16", "--set", "data.textures.eval_size=8",
           "--set", "data.textures.hr_size=32",
           "--set", "train.epochs=1", "--set", "train.eval_every=1", "--set", "train.batch_size=8",
           "--set", f"student.weights={base}", "--set", f"teacher.weights={teacher}",
           "--set", f"teacher.cache.path={tmp_path / 'cache'}"]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    final = json.loads(proc.stdout.strip().splitlines()[-1])["final"]
    assert set(final) >= {"psnr", "ssim", "loss"} and final["psnr"] > 0
    run = tmp_path / "run"
    trained = load_file(str(run / "student.safetensors"))
    assert any(k.endswith("lora_B") for k in trained)
    base_state = load_file(str(base))
    frozen = [k for k in base_state if k.endswith(".weight") and not k.startswith(("conv_2", "upsampler.0", "blocks"))]
    assert frozen and all(torch.equal(trained[k], base_state[k]) for k in frozen)  # conv_1, conv_cat untouched
    cfg = json.loads((run / "distill_config.json").read_text())
    unmerged = apply_conv_lora(span(2), {k: (v["rank"], v["alpha"]) for k, v in cfg["student"]["conv_lora"].items()})
    unmerged.load_state_dict(trained)
    plain = span(2)
    plain.load_state_dict(load_file(str(run / "student_merged.safetensors")))
    assert sum(p.numel() for p in plain.parameters()) == sum(p.numel() for p in span(2).parameters())
    x = torch.rand(2, 3, 16, 16)
    unmerged.train()
    with torch.no_grad():
        assert (plain(x) - unmerged(x)).abs().max() <= 1e-5


@pytest.mark.parametrize("missing", ["data.train"])
def test_bad_config_is_refused_with_the_key(tmp_path: Path, missing: str) -> None:
    from distill.config import load_config

    cfg = tmp_path / "c.yaml"
    cfg.write_text("task: super_resolution\ndata: {source: images}\nstudent: {arch: span}\nmethods: [{name: l1}]\n")
    with pytest.raises((ConfigError, ValueError), match=missing):
        load_config(str(cfg))
    cfg.write_text("task: super_resolution\ndata: {source: textures}\nstudent: {arch: span, conv_lora: "
                   "{nope: {rank: 2, alpha: 2}}}\nmethods: [{name: l1}]\n")
    with pytest.raises(ConfigError, match="student.conv_lora"):
        from distill.experiment import build_experiment

        build_experiment(load_config(str(cfg)), tmp_path / "run")


def test_teacher_cache_serves_what_the_live_teacher_computes(tmp_path: Path) -> None:
    pytest.importorskip("skimage")
    import yaml

    from distill.cache import TeacherCache
    from distill.config import parse_config
    from distill.experiment import build_parts, student_builder

    text = f"""
task: super_resolution
data: {{source: textures, textures: {{train_size: 8, eval_size: 4, hr_size: 16}}}}
student: {{arch: span, options: {{channels: 8, num_blocks: 2}}}}
teacher: {{arch: span, weights: random, options: {{channels: 12, num_blocks: 3}},
          cache: {{path: {tmp_path}/c, features: [b1, b2]}}}}
methods: [{{name: l1}}]
train: {{epochs: 1, batch_size: 4, progress: false}}
"""
    cfg = parse_config(yaml.safe_load(text), base_dir=tmp_path)
    parts = build_parts(cfg, student=student_builder(cfg))
    assert isinstance(parts.teacher, TeacherCache)
    task, train = parts.loaded.task, parts.loaded.train
    batch = task.prepare(task.fetch(train, torch.arange(4)), train=False, generator=None)
    cached, live = parts.teacher(batch, task, ["b1", "b2"]), parts.live_teacher(batch, task, ["b1", "b2"])
    torch.testing.assert_close(cached.logits, live.logits.float(), atol=1e-5, rtol=0)
    torch.testing.assert_close(cached.feature("b2"), live.feature("b2").float(), atol=1e-5, rtol=0)


def test_users_folders_of_any_sizes_div2k_lr_names_and_subsets(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from PIL import Image

    from distill.tasks.super_resolution.data import load_sr_data
    from distill.tasks.super_resolution.section import SuperResolutionData

    rng = np.random.default_rng(0)
    photos = tmp_path / "photos"
    photos.mkdir()
    for i, (h, w) in enumerate([(20, 36), (33, 17), (16, 16)]):  # users' photos come in many sizes
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(photos / f"p{i}.png")
    (photos / "._p0.png").write_bytes(b"\x00\x05\x16\x07")  # a macOS resource fork: skipped
    with pytest.raises(ConfigError, match=r"several sizes \(p0.png: 20 x 36.*data.patch_size"):
        read_pair_folder(photos, 2, "data.train")
    tiled = read_pair_folder(photos, 2, "data.train", patch_size=8)
    assert tiled.hr.shape == (2 * 4 + 4 * 2 + 2 * 2, 3, 8, 8) and tiled.lr.shape[-2:] == (4, 4)
    first = torch.from_numpy(np.array(Image.open(photos / "p0.png"))).permute(2, 0, 1)
    assert torch.equal(tiled.hr[1], first[:, 0:8, 8:16])  # row-major tiles of the first image
    assert torch.equal(tiled.lr, bicubic_down(tiled.hr, 2))
    with pytest.raises(ConfigError, match=r"data.patch_size: 18 px is larger than p1.png .*\(33 x 17\)"):
        read_pair_folder(photos, 2, "data.train", patch_size=18)
    # hr/ + lr/ as DIV2K ships them: lr/0001x2.png beside hr/0001.png, an odd HR size cropped to fit
    div2k = tmp_path / "div2k"
    (div2k / "hr").mkdir(parents=True)
    (div2k / "lr").mkdir()
    for stem, (h, w) in (("0001", (17, 24)), ("0002", (16, 16))):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(div2k / "hr" / f"{stem}.png")
        Image.fromarray(rng.integers(0, 255, (h // 2, w // 2, 3), dtype=np.uint8)).save(div2k / "lr" / f"{stem}x2.png")
    pairs = read_pair_folder(div2k, 2, "data.train", patch_size=8)
    assert pairs.hr.shape == (6 + 4, 3, 8, 8) and pairs.lr.shape == (10, 3, 4, 4)
    # train_size / eval_size keep a seeded subset of folder data too (they were ignored)
    data = SuperResolutionData(source="folders", train=str(photos), eval=str(div2k), patch_size=8, train_size=5,
                               eval_size=3)
    train, evald = load_sr_data(SimpleNamespace(data=data, base_dir=None))
    assert len(train) == 5 and evald is not None and len(evald) == 3


def test_patch_size_outside_folders_or_off_the_scale_is_refused(tmp_path: Path) -> None:
    from distill.config import load_config

    cfg = tmp_path / "c.yaml"
    for data, match in (("{source: textures, patch_size: 8}", "data.patch_size: cuts"),
                        ("{source: folders, train: x, scale: 3, patch_size: 8}", "data.patch_size: 8 does not divide")):
        cfg.write_text(f"task: super_resolution\ndata: {data}\nstudent: {{arch: span}}\nmethods: [{{name: l1}}]\n")
        with pytest.raises((ConfigError, ValueError), match=match):
            load_config(str(cfg))
