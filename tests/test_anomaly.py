"""The anomaly-detection family: real texture crops (scikit-image), synthetic defects with exact masks, AUROC
metrics, seeded augmentation, bad configs named by key, and ``distill train`` end to end on a tiny real sample."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

pytest.importorskip("skimage", reason="scikit-image (extra 'vision') holds the texture photographs")

from distill.config import ConfigError, load_config, parse_config  # noqa: E402
from distill.core.batch import Batch  # noqa: E402
from distill.experiment import build_experiment  # noqa: E402
from distill.tasks.anomaly.data import DEFECTS, add_defect, eval_crops, texture, train_crops  # noqa: E402
from distill.tasks.anomaly.task import AnomalyDetection, AnomalyMetrics, auroc  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def test_textures_are_real_photographs():
    for name in ("brick", "grass", "gravel"):
        img = texture(name)
        assert img.shape == (512, 512) and img.dtype == np.uint8 and img.std() > 10


@pytest.mark.parametrize("kind", DEFECTS)
def test_each_defect_changes_only_its_mask(kind):
    rng = np.random.default_rng(0)
    crop = texture("brick")[400:464, 100:164].copy()
    donor = texture("grass")[400:464, 100:164].copy()
    out, mask = add_defect(crop, kind, rng, donor)
    assert out.shape == crop.shape and mask.dtype == np.uint8 and 10 < mask.sum() < crop.size / 2
    assert np.array_equal(out[mask == 0], crop[mask == 0])  # nothing outside the mask moves
    assert np.abs(out[mask == 1].astype(int) - crop[mask == 1]).mean() > 1.0  # the defect is visible


def test_splits_are_disjoint_seeded_and_labelled():
    tr = train_crops("gravel", 5, 64, 320, seed=3)
    img = texture("gravel")
    # every training crop is found in rows 0..319 of the photograph
    found = [any(np.array_equal(img[y:y + 64, :][:, x:x + 64], tr.images[i, 0].numpy())
                 for y in range(0, 257) for x in range(0, 449, 1)
                 if img[y, x] == tr.images[i, 0, 0, 0]) for i in range(2)]
    assert all(found)
    a = eval_crops("gravel", 3, 5, seed=7)
    b = eval_crops("gravel", 3, 5, seed=7)
    assert torch.equal(a.images, b.images) and torch.equal(a.masks, b.masks)
    assert a.labels.tolist() == [0, 0, 0, 1, 1, 1, 1, 1]
    assert not torch.equal(a.images, eval_crops("gravel", 3, 5, seed=8).images)


def test_auroc_hand_values():
    assert auroc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(0.75)
    assert math.isnan(auroc(np.array([0, 0]), np.array([0.1, 0.2])))
    m = AnomalyMetrics()
    masks = torch.zeros(3, 4, 4, dtype=torch.uint8)
    masks[2, 1, 1] = 1
    maps = torch.zeros(3, 4, 4)
    maps[2, 1, 1] = 5.0  # the defect pixel has the largest score: both AUROCs are 1
    m.update(maps, Batch(inputs=None, labels=masks))
    out = m.compute()
    assert out["image_auroc"] == 1.0 and out["pixel_auroc"] == 1.0


def test_training_augmentation_is_seeded_and_eval_is_plain():
    task = AnomalyDetection(flip=True, blur=True)
    x = torch.randint(0, 256, (6, 1, 16, 16), dtype=torch.uint8)
    batch = Batch(inputs=x, labels=torch.zeros(6, 16, 16, dtype=torch.uint8))
    a = task.prepare(batch, train=True, generator=torch.Generator().manual_seed(1)).inputs
    b = task.prepare(batch, train=True, generator=torch.Generator().manual_seed(1)).inputs
    plain = task.prepare(batch, train=False, generator=None).inputs
    assert a.shape == (6, 3, 16, 16) and torch.equal(a, b) and not torch.equal(a, plain)
    # eval: gray copied to 3 channels, ImageNet normalisation
    expect = (x.float()[:, 0] / 255 - 0.485) / 0.229
    assert torch.allclose(plain[:, 0], expect, atol=1e-6)


def _tiny(tmp_path: Path, **changes) -> Path:
    raw = yaml.safe_load((REPO / "configs" / "anomaly" / "brick_dbfad.yaml").read_text())
    raw["data"].update(train_crops=16, eval_normal=4, eval_defect=5)
    raw["train"].update(epochs=1, batch_size=8, eval_every=1, log_every=1)
    raw["student"]["options"].update(encoder="resnet56", embed=32, blocks=1)
    raw["output_dir"] = str(tmp_path / "run")
    for k, v in changes.items():
        raw[k] = v
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_distill_train_end_to_end_on_a_tiny_real_sample(tmp_path):
    cfg = load_config(_tiny(tmp_path))
    exp = build_experiment(cfg)
    teacher = exp.teacher.model
    enc = exp.student.encoder
    assert all(torch.equal(teacher.state_dict()[k], v) for k, v in enc.state_dict().items())
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    summary = exp.fit()
    final = summary["final"]
    assert 0.0 <= final["image_auroc"] <= 1.0 and 0.0 <= final["pixel_auroc"] <= 1.0
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())  # the teacher never moves
    assert all(torch.equal(before[k], v) for k, v in exp.student.encoder.state_dict().items())
    assert (tmp_path / "run" / "student.safetensors").exists()


@pytest.mark.parametrize("key,bad,match", [
    ("student", {"arch": "resnet20"}, "student.arch"),
    ("teacher", {"arch": "mlp", "weights": "random"}, "teacher.arch"),
    ("data", {"texture": "marble"}, "data.texture"),
])
def test_bad_config_names_the_key(key, bad, match):
    raw = {"task": "anomaly_detection", "data": {"texture": "brick"},
           "student": {"arch": "dbfad_student"}, "teacher": {"arch": "resnet56", "weights": "random"},
           "methods": [{"name": "reverse_distillation"}]}
    raw[key] = bad
    with pytest.raises(ConfigError, match=match):
        parse_config(raw)


def test_student_options_are_validated():
    raw = {"task": "anomaly_detection", "data": {"texture": "brick"},
           "student": {"arch": "dbfad_student", "options": {"skipz": True}},
           "teacher": {"arch": "resnet56", "weights": "random"}, "methods": [{"name": "reverse_distillation"}]}
    with pytest.raises(ConfigError, match="student.options"):
        parse_config(raw)


def _mvtec(root: Path, *, gray: bool = False, mask_missing: bool = False) -> Path:
    """A tiny category folder in the MVTec AD layout: 4 normal training images, 2 normal and 2 'crack' test images
    (48 x 40 px, a bright patch on the defects) with their ground_truth/crack/<stem>_mask.png (0/255)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for sub in ("train/good", "test/good", "test/crack", "ground_truth/crack"):
        (root / sub).mkdir(parents=True)

    def save(path: Path, defect: bool) -> None:
        a = rng.integers(90, 110, (48, 40) if gray else (48, 40, 3)).astype(np.uint8)
        if defect:
            a[10:20, 8:16] = 250
        Image.fromarray(a).save(path)

    for i in range(4):
        save(root / "train" / "good" / f"{i:03d}.png", False)
    for i in range(2):
        save(root / "test" / "good" / f"{i:03d}.png", False)
        save(root / "test" / "crack" / f"{i:03d}.png", True)
        if not (mask_missing and i == 1):
            m = np.zeros((48, 40), np.uint8)
            m[10:20, 8:16] = 255
            Image.fromarray(m).save(root / "ground_truth" / "crack" / f"{i:03d}_mask.png")
    return root


def test_users_mvtec_layout_folder_reads_normal_training_and_masked_test_images(tmp_path):
    from distill.tasks.anomaly.data import read_mvtec_folder

    train, evald = read_mvtec_folder(_mvtec(tmp_path / "bottle", gray=True), 32)
    assert train.images.shape == (4, 3, 32, 32) and int(train.masks.sum()) == 0  # gray images become RGB
    assert evald is not None and evald.images.shape == (4, 3, 32, 32)
    assert evald.labels.tolist() == [1, 1, 0, 0]  # test/crack, then test/good (sorted kinds)
    # the mask 0/255 -> 1 on the defect rows 10-19 of 48 (6.7-13.3 of 32), nearest-resized
    assert evald.masks[0, 8, 8] == 1 and evald.masks[0, 0, 0] == 0 and int(evald.masks[2:].sum()) == 0
    with pytest.raises(ConfigError, match=r"data.root: no mask for the defective test image .*crack/001.png"):
        read_mvtec_folder(_mvtec(tmp_path / "nomask", mask_missing=True), 32)
    with pytest.raises(ConfigError, match=r"data.root: .* has no train/good/"):
        read_mvtec_folder(tmp_path / "nomask" / "test", 32)


def test_distill_train_on_a_users_mvtec_folder_with_only_a_yaml_change(tmp_path):
    _mvtec(tmp_path / "bottle")
    raw = yaml.safe_load(_tiny(tmp_path).read_text())
    raw["data"] = {"source": "folders", "root": str(tmp_path / "bottle"), "image_size": 32, "train_blur": True}
    raw["train"]["batch_size"] = 2
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(raw))
    cfg = load_config(str(tmp_path / "tiny.yaml"))
    final = build_experiment(cfg).fit()["final"]
    assert 0.0 <= final["image_auroc"] <= 1.0 and 0.0 <= final["pixel_auroc"] <= 1.0
    with pytest.raises(ConfigError, match="data.root"):
        parse_config({"task": "anomaly_detection", "data": {"source": "folders"},
                      "student": {"arch": "dbfad_student"}, "teacher": {"arch": "resnet56", "weights": "random"},
                      "methods": [{"name": "reverse_distillation"}]})
