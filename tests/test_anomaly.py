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
