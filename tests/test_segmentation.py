"""task: semantic_segmentation: TexMosaic (split rows kept apart, labels = the texture a pixel came from), the
images/ + masks/ folder loader, mIoU by hand, the models' taps, and a tiny real run through `distill train` with a
teacher cache and a FitNet hint."""

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

from distill.config import ConfigError, load_config
from distill.core.batch import Batch
from distill.data.textures import load_textures, row_split
from distill.tasks.segmentation.data import IGNORE_INDEX, read_mask_folders, texmosaic
from distill.tasks.segmentation.models import seg_resnet_student
from distill.tasks.segmentation.task import SegmentationMetrics, confusion_matrix, mean_iou

REPO = Path(__file__).resolve().parents[1]


def fake_textures() -> dict[str, np.ndarray]:
    """Three 'photographs' whose every pixel tells its texture and split: train rows (0-319) hold 10, 20, 30 and
    test rows hold 110, 120, 130 (divided by 255)."""
    out = {}
    for i, name in enumerate(("brick", "grass", "gravel")):
        img = np.full((512, 512), (10 * (i + 1)) / 255.0, dtype=np.float32)
        img[320:] = (110 + 10 * i) / 255.0
        out[name] = img
    return out


def test_texmosaic_labels_are_the_textures_and_splits_never_share_rows() -> None:
    src = fake_textures()
    train = texmosaic(40, 0, "train", sources=src, size=32)
    test = texmosaic(40, 1, "test", sources=src, size=32)
    assert train.images.shape == (40, 3, 32, 32) and train.masks.shape == (40, 32, 32)
    assert torch.equal(train.images[:, 0], train.images[:, 2])  # gray copied to 3 channels
    assert set(train.images.unique().tolist()) <= {10, 20, 30}
    assert set(test.images.unique().tolist()) <= {110, 120, 130}
    assert torch.equal(train.images[:, 0].long(), 10 * (train.masks + 1))  # a pixel's label is its texture
    assert torch.equal(test.images[:, 0].long(), 110 + 10 * test.masks)
    # 2-4 Voronoi regions: never more than 4 classes in an image, several classes over the set
    assert all(len(m.unique()) <= 4 for m in train.masks) and len(train.masks.unique()) == 3
    again = texmosaic(40, 0, "train", sources=src, size=32)
    assert torch.equal(again.images, train.images) and torch.equal(again.masks, train.masks)


def test_texmosaic_from_the_real_scikit_image_textures() -> None:
    pytest.importorskip("skimage")
    photos = load_textures()
    assert {k: v.shape for k, v in photos.items()} == {"brick": (512, 512), "grass": (512, 512),
                                                        "gravel": (512, 512)}
    assert row_split(photos["brick"], "train").shape == (320, 512)
    assert row_split(photos["brick"], "test").shape == (192, 512)
    data = texmosaic(6, 3, "test", sources=photos)
    assert data.images.shape == (6, 3, 64, 64) and data.num_classes == 3
    assert data.images.float().std() > 5  # real texture, not a constant


def test_mean_iou_hand_case_and_ignored_pixels() -> None:
    # true 0 0 0 1 | predicted 0 0 1 1 : TP0 = 2, FN0 = 1; TP1 = 1, FP1 = 1 -> IoU 2/3 and 1/2, mIoU 7/12
    labels = torch.tensor([[[0, 0, 0, 1, IGNORE_INDEX]]])
    pred = torch.tensor([[[0, 0, 1, 1, 0]]])
    logits = torch.nn.functional.one_hot(pred, 3).permute(0, 3, 1, 2).float()
    cm = confusion_matrix(logits, labels, 3)
    assert cm.tolist() == [[2, 1, 0], [0, 1, 0], [0, 0, 0]]
    miou, iou = mean_iou(cm)
    assert math.isclose(miou, 7 / 12) and math.isnan(float(iou[2]))  # class 2: absent and never predicted
    m = SegmentationMetrics(3)
    m.update(logits, Batch(inputs=None, labels=labels))
    out = m.compute()
    assert math.isclose(out["miou"], 7 / 12) and math.isclose(out["accuracy"], 3 / 4)


def write_pngs(root: Path, n: int = 3, size: int = 8, bad: bool = False) -> None:
    from PIL import Image

    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / "images" / f"im{i}.png")
        mask = np.zeros((size, size), dtype=np.uint8)
        mask[:, size // 2:] = i % 2 + 1
        mask[0, 0] = 255
        if not (bad and i == n - 1):
            Image.fromarray(mask).save(root / "masks" / f"im{i}.png")


def test_mask_folders_load_with_ignore_value_and_missing_masks_are_named(tmp_path: Path) -> None:
    write_pngs(tmp_path / "ok")
    data = read_mask_folders(tmp_path / "ok", "data.train")
    assert data.images.shape == (3, 3, 8, 8) and data.num_classes == 3
    assert int(data.masks[0, 0, 0]) == IGNORE_INDEX and int(data.masks[1, 0, 7]) == 2
    resized = read_mask_folders(tmp_path / "ok", "data.train", image_size=4)
    assert resized.masks.shape == (3, 4, 4) and set(resized.masks.unique().tolist()) <= {IGNORE_INDEX, 0, 1, 2}
    write_pngs(tmp_path / "bad", bad=True)
    with pytest.raises(ConfigError, match=r"data.train: no mask .* im2"):
        read_mask_folders(tmp_path / "bad", "data.train")


def test_model_taps_sit_at_strides_2_4_8_16_and_logits_at_full_size() -> None:
    from distill.core.taps import FeatureTaps

    model = seg_resnet_student(3)
    with FeatureTaps(model, ["f1", "f2", "f3", "f4", "dec"]).capture() as feats:
        out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 3, 64, 64)
    assert [feats[k].shape[-1] for k in ("f1", "f2", "f3", "f4", "dec")] == [32, 16, 8, 4, 16]


def test_bad_config_is_refused_with_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("task: semantic_segmentation\ndata: {source: folders}\nstudent: {arch: seg_resnet_student}\n"
                   "methods: [{name: ce}]\n")
    with pytest.raises((ConfigError, ValueError), match="data.train"):
        load_config(str(cfg))
    cfg.write_text("task: semantic_segmentation\ndata: {texmosaic: {min_regions: 5, max_regions: 3}}\n"
                   "student: {arch: seg_resnet_student}\nmethods: [{name: ce}]\n")
    with pytest.raises((ConfigError, ValueError), match="min_regions"):
        load_config(str(cfg))


def test_distill_train_on_a_tiny_real_texmosaic_with_a_cached_teacher(tmp_path: Path) -> None:
    """The recipe configs/segmentation/fitnet.yaml end to end on 16 real mosaics: the teacher (random weights
    here) is cached once (outputs and f3), the student trains with CE + FitNet and reports mIoU."""
    pytest.importorskip("skimage")
    teacher = tmp_path / "teacher.safetensors"
    from safetensors.torch import save_file

    from distill.tasks.segmentation.models import seg_resnet_teacher

    save_file(seg_resnet_teacher(3).state_dict(), str(teacher))
    cmd = [sys.executable, "-m", "distill", "train", str(REPO / "configs" / "segmentation" / "fitnet.yaml"),
           "--output-dir", str(tmp_path / "run"),
           "--set", "data.texmosaic.train_size=16", "--set", "data.texmosaic.eval_size=8",
           "--set", "train.epochs=1", "--set", "train.eval_every=1", "--set", "train.batch_size=8",
           "--set", f"teacher.weights={teacher}", "--set", f"teacher.cache.path={tmp_path / 'cache'}"]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    final = json.loads(proc.stdout.strip().splitlines()[-1])["final"]
    assert 0.0 <= final["miou"] <= 1.0 and set(final) >= {"miou", "accuracy", "loss"}
    assert (tmp_path / "cache" / "manifest.json").exists()
    manifest = json.loads((tmp_path / "cache" / "manifest.json").read_text())
    assert "feature:f3" in json.dumps(manifest)


def test_teacher_cache_serves_what_the_live_teacher_computes(tmp_path: Path) -> None:
    pytest.importorskip("skimage")
    import yaml

    from distill.cache import TeacherCache
    from distill.config import parse_config
    from distill.experiment import build_parts, student_builder

    text = f"""
task: semantic_segmentation
data: {{texmosaic: {{train_size: 8, eval_size: 4, size: 32}}}}
student: {{arch: seg_resnet_student}}
teacher: {{arch: seg_resnet_teacher, weights: random, cache: {{path: {tmp_path}/c, features: [f3]}}}}
methods: [{{name: ce}}, {{name: fitnet, student: f3, teacher: f3}}]
train: {{epochs: 1, batch_size: 4, progress: false}}
"""
    cfg = parse_config(yaml.safe_load(text), base_dir=tmp_path)
    parts = build_parts(cfg, student=student_builder(cfg))
    assert isinstance(parts.teacher, TeacherCache)
    task, train = parts.loaded.task, parts.loaded.train
    batch = task.prepare(task.fetch(train, torch.arange(4)), train=False, generator=None)
    cached, live = parts.teacher(batch, task, ["f3"]), parts.live_teacher(batch, task, ["f3"])
    torch.testing.assert_close(cached.logits, live.logits.float(), atol=1e-5, rtol=0)
    torch.testing.assert_close(cached.feature("f3"), live.feature("f3").float(), atol=1e-5, rtol=0)


def _folder(root: Path, masks: dict[str, np.ndarray], images: dict[str, str] | None = None) -> Path:
    """images/<stem>.jpg (RGB, the masks' sizes) and masks/<name> (uint8 L PNGs) under ``root``."""
    from PIL import Image

    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for name, m in masks.items():
        stem = Path(name).stem.removesuffix("_mask")
        img = np.random.default_rng(0).integers(0, 255, (*m.shape, 3), dtype=np.uint8)
        Image.fromarray(img).save(root / "images" / (images or {}).get(stem, f"{stem}.jpg"))
        Image.fromarray(m.astype(np.uint8)).save(root / "masks" / name)
    return root


def test_users_mask_folders_binary_0_255_masks_mask_suffix_and_bad_values_named(tmp_path: Path) -> None:
    binary = np.zeros((6, 8), np.uint8)
    binary[2:4, 3:6] = 255
    # binary masks saved as 0/255 with the default ignore_value 255: every foreground pixel would be ignored and
    # the run would learn one class; refused with the remedy, which then gives the two classes
    _folder(tmp_path / "bin", {"a.png": binary, "b_mask.png": binary})  # b's mask named <stem>_mask.png
    with pytest.raises(ConfigError, match=r"data.ignore_value: .*0/255.*data.label_map"):
        read_mask_folders(tmp_path / "bin", "data.train")
    fixed = read_mask_folders(tmp_path / "bin", "data.train", label_map={255: 1})
    assert fixed.num_classes == 2 and int(fixed.masks[0, 2, 3]) == 1 and int((fixed.masks == IGNORE_INDEX).sum()) == 0
    # a class id at or above num_classes names the mask file that holds it
    bad = np.zeros((6, 8), np.uint8)
    bad[0, 0] = 7
    _folder(tmp_path / "bad", {"a.png": np.ones((6, 8)), "b.png": bad})
    with pytest.raises(ConfigError, match=r"data.num_classes: 3, but data.train has mask value 7 \(first in b.png\)"):
        read_mask_folders(tmp_path / "bad", "data.train", num_classes=3)
    # two images of one stem are refused (one would silently be dropped); hidden files (macOS ._x) are skipped
    _folder(tmp_path / "dup", {"a.png": np.ones((6, 8))})
    (tmp_path / "dup" / "images" / "._a.jpg").write_bytes(b"\x00\x05\x16\x07")
    assert len(read_mask_folders(tmp_path / "dup", "data.train")) == 1
    (tmp_path / "dup" / "images" / "a.png").write_bytes((tmp_path / "dup" / "masks" / "a.png").read_bytes())
    with pytest.raises(ConfigError, match=r"a.jpg and a.png"):
        read_mask_folders(tmp_path / "dup", "data.train")


def test_ignore_value_null_with_255_in_a_mask_is_refused_unless_num_classes_covers_it(tmp_path: Path) -> None:
    # with ignore_value: null a stored 255 (the usual 'no label' mark) would silently make 256 classes
    plain = np.arange(48).reshape(6, 8) % 3
    marked = plain.copy()
    marked[0, :4] = 255
    _folder(tmp_path / "m", {"a.png": plain, "b.png": marked})
    with pytest.raises(ConfigError, match=r"data.ignore_value: null, but the mask b.png of data.train holds the "
                                          r"value 255.*256 classes"):
        read_mask_folders(tmp_path / "m", "data.train", ignore_value=None)
    # the remedies the message names: ignore 255, map it to a class, or say 256 classes explicitly
    ignored = read_mask_folders(tmp_path / "m", "data.train", ignore_value=255)
    assert ignored.num_classes == 3 and int((ignored.masks == IGNORE_INDEX).sum()) == 4
    mapped = read_mask_folders(tmp_path / "m", "data.train", ignore_value=None, label_map={255: 3})
    assert mapped.num_classes == 4 and int((mapped.masks == 3).sum()) == 4
    explicit = read_mask_folders(tmp_path / "m", "data.train", ignore_value=None, num_classes=256)
    assert explicit.num_classes == 256 and int(explicit.masks[1, 0, 0]) == 255
    with pytest.raises(ConfigError, match=r"data.num_classes: 200, but data.train has mask value 255"):
        read_mask_folders(tmp_path / "m", "data.train", ignore_value=None, num_classes=200)
    # masks without 255 still read their class count with ignore_value: null
    _folder(tmp_path / "p", {"a.png": plain})
    assert read_mask_folders(tmp_path / "p", "data.train", ignore_value=None).num_classes == 3


def test_eval_masks_may_hold_the_highest_class_when_num_classes_is_read(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from distill.tasks.segmentation.data import load_segmentation_data
    from distill.tasks.segmentation.section import SegmentationData

    _folder(tmp_path / "train", {"a.png": np.arange(48).reshape(6, 8) % 3})
    _folder(tmp_path / "val", {"b.png": np.arange(48).reshape(6, 8) % 4})
    data = SegmentationData(source="folders", train=str(tmp_path / "train"), eval=str(tmp_path / "val"))
    train, evald = load_segmentation_data(SimpleNamespace(data=data, base_dir=None))
    assert evald is not None and train.num_classes == evald.num_classes == 4
