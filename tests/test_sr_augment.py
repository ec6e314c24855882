"""``data.augment`` of super_resolution: a random flip / 90-degree rotation applied identically to the LR input and
its HR target (pixel (i, j) and the HR block (s i, s j) move together), seeded draws of the 8 orientations, flips
only on non-square images, a resumed run bit-identical to an uninterrupted one, and a teacher cache that stores
the teacher's real outputs on the augmented views the student is shown (tiny generated images)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from distill.config import ConfigError, parse_config
from distill.core.batch import Batch
from distill.data.augment import RandomFlipRot
from distill.experiment import build_experiment
from distill.tasks.super_resolution.data import bicubic_down
from distill.tasks.super_resolution.task import SuperResolution

Image = pytest.importorskip("PIL.Image")


def nearest_up(x: torch.Tensor, s: int) -> torch.Tensor:
    return x.repeat_interleave(s, -2).repeat_interleave(s, -1)


def codes(params: torch.Tensor) -> torch.Tensor:
    return params[:, 0] * 4 + params[:, 1] * 2 + params[:, 2]


def test_the_same_parameters_keep_lr_and_hr_aligned() -> None:
    g = torch.Generator().manual_seed(0)
    aug = RandomFlipRot()
    lr = torch.randint(0, 256, (16, 3, 5, 5), generator=g, dtype=torch.uint8)
    params = torch.tensor([[a, b, c] for a in (0, 1) for b in (0, 1) for c in (0, 1)] * 2)  # all 8, twice
    for s in (2, 3):
        hr = nearest_up(lr, s)  # each LR pixel is its s x s HR block
        assert torch.equal(aug.apply(hr, params), nearest_up(aug.apply(lr, params), s))
    # real bicubic pairs: downsampling the transformed HR gives the transformed LR
    hr = torch.randint(0, 256, (16, 3, 16, 16), generator=g, dtype=torch.uint8)
    for s in (2, 4):
        diff = (bicubic_down(aug.apply(hr, params), s).int() - aug.apply(bicubic_down(hr, s), params).int()).abs()
        assert int(diff.max()) <= 1 and float((diff == 0).float().mean()) > 0.999
    # the 8 parameter sets are the 8 distinct orientations; (0, 0, 1) is the transpose, (1, 0, 1) a rotation
    views = aug.apply(lr[:1].expand(8, -1, -1, -1), params[:8])
    assert len({v.numpy().tobytes() for v in views}) == 8
    assert torch.equal(views[1], lr[0].transpose(-1, -2)) and torch.equal(views[5], lr[0].rot90(1, (-2, -1)))


def test_draws_are_seeded_and_uniform_over_the_8_orientations() -> None:
    aug = RandomFlipRot()
    a = aug.sample(8000, torch.Generator().manual_seed(1))
    assert torch.equal(a, aug.sample(8000, torch.Generator().manual_seed(1)))
    assert not torch.equal(a, aug.sample(8000, torch.Generator().manual_seed(2)))
    freq = torch.bincount(codes(a), minlength=8).float() / 8000
    assert float((freq - 0.125).abs().max()) < 0.02
    flips = RandomFlipRot(rotate=False)
    b = flips.sample(8000, torch.Generator().manual_seed(1))
    assert torch.equal(b[:, :2], a[:, :2]) and not bool(b[:, 2].any())  # same coins, no transpose
    wide = torch.zeros(2, 3, 4, 6)
    assert flips.apply(wide, b[:2]).shape == wide.shape
    with pytest.raises(ValueError, match="square"):
        aug.apply(wide, a[:2])


def test_task_augments_training_pairs_only_and_replays_given_parameters() -> None:
    g = torch.Generator().manual_seed(3)
    hr = torch.randint(0, 256, (6, 3, 8, 8), generator=g, dtype=torch.uint8)
    lr = bicubic_down(hr, 2)
    raw = Batch(inputs=lr, labels=hr, indices=torch.arange(6), meta={})
    task = SuperResolution(2, augment=RandomFlipRot())
    batch = task.prepare(raw, train=True, generator=torch.Generator().manual_seed(5))
    params = batch.meta["augment"]
    assert torch.equal(params, RandomFlipRot().sample(6, torch.Generator().manual_seed(5)))
    assert len(set(codes(params).tolist())) > 1  # not all identity
    assert torch.equal(batch.inputs, task.augment.apply(lr, params).float() / 255)
    assert torch.equal(batch.labels, task.augment.apply(hr, params).float() / 255)
    evald = task.prepare(raw, train=False, generator=None)
    assert torch.equal(evald.inputs, lr.float() / 255) and "augment" not in evald.meta
    preset = Batch(inputs=lr, labels=hr, indices=torch.arange(6), meta={"augment": torch.ones(6, 3, dtype=torch.long)})
    again = task.prepare(preset, train=True, generator=None)
    assert torch.equal(again.labels, hr.flip(-1).flip(-2).transpose(-1, -2).float() / 255)
    assert task.describe()["augment"] == "RandomFlipRot(rotate=True)"
    assert "augment" not in SuperResolution(2).describe()  # caches built without the option keep their fingerprint


# -- runs ----------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sr_aug")
    rng = np.random.default_rng(0)
    for name, (h, w), n in (("square", (16, 16), 6), ("wide", (16, 24), 4), ("big", (20, 28), 3)):
        (root / name).mkdir()
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


def raw_cfg(tmp_path: Path, root: Path, name: str, **data) -> dict:
    return {"task": "super_resolution", "output_dir": str(tmp_path / name), "seed": 4, "deterministic": True,
            "data": {"source": "folders", "train": str(root), "eval": str(root), "augment": True, **data},
            "student": {"arch": "span", "options": {"channels": 4, "num_blocks": 1}}, "methods": [{"name": "l1"}],
            "train": {"epochs": 3, "batch_size": 2, "lr": 0.01, "checkpoint_every": 2, "progress": False,
                      "cpu": True, "log_every": 1}}


def fit(tmp_path: Path, raw: dict, max_steps: int | None = None):
    raw = {**raw, "train": {**raw["train"], "max_steps": max_steps}}
    exp = build_experiment(parse_config(yaml.safe_load(yaml.safe_dump(raw)), base_dir=tmp_path))
    summary = exp.fit()
    return {k: v.clone() for k, v in exp.student.state_dict().items()}, summary, exp


@pytest.mark.parametrize("data", [{}, {"streaming": True, "patch_size": 8}], ids=["in_memory", "streamed_patches"])
def test_augmented_run_resumes_bit_identically(tmp_path: Path, folders: Path, data: dict) -> None:
    root = folders / ("big" if data else "square")
    full, summary, exp = fit(tmp_path, raw_cfg(tmp_path, root, "full", **data))
    assert exp.loaded.task.augment is not None and exp.loaded.task.augment.rotate  # square inputs: rotations too
    _, first, _ = fit(tmp_path, raw_cfg(tmp_path, root, "split", **data), max_steps=2)
    assert first["steps"] == 2
    resumed, last, _ = fit(tmp_path, raw_cfg(tmp_path, root, "split", **data))
    assert last["steps"] == summary["steps"]
    assert all(torch.equal(full[k], resumed[k]) for k in full)
    plain, _, _ = fit(tmp_path, raw_cfg(tmp_path, root, "plain", **{**data, "augment": False}))
    assert any(not torch.equal(full[k], plain[k]) for k in full)  # the option changes what is trained on


def test_non_square_images_get_flips_only(tmp_path: Path, folders: Path) -> None:
    raw = raw_cfg(tmp_path, folders / "wide", "wide")
    exp = build_experiment(parse_config(raw, base_dir=tmp_path))
    task, train = exp.loaded.task, exp.loaded.train
    assert not task.augment.rotate
    batch = task.prepare(task.fetch(train, torch.arange(4)), train=True, generator=torch.Generator().manual_seed(0))
    assert batch.inputs.shape == (4, 3, 8, 12) and not bool(batch.meta["augment"][:, 2].any())


def test_teacher_cache_stores_the_teachers_outputs_on_the_augmented_views(tmp_path: Path, folders: Path) -> None:
    from distill.cache import TeacherCache
    from distill.experiment import build_parts, student_builder

    raw = raw_cfg(tmp_path, folders / "square", "cached")
    raw["teacher"] = {"arch": "span", "weights": "random", "options": {"channels": 6, "num_blocks": 2},
                      "cache": {"path": str(tmp_path / "cache"), "views": 4, "features": ["b1"]}}
    cfg = parse_config(raw, base_dir=tmp_path)
    parts = build_parts(cfg, student=student_builder(cfg))
    task, train = parts.loaded.task, parts.loaded.train
    assert isinstance(parts.teacher, TeacherCache) and task.augment_source is parts.teacher
    shown = []
    for epoch in range(4):
        raw_batch = task.fetch(train, torch.arange(6))
        raw_batch.meta["epoch"] = epoch
        batch = task.prepare(raw_batch, train=True, generator=None)  # the views come from the cache
        plain = task.prepare(task.fetch(train, torch.arange(6)), train=False, generator=None)
        assert torch.equal(batch.labels, task.augment.apply(plain.labels, batch.meta["augment"]))
        cached, live = parts.teacher(batch, task, ["b1"]), parts.live_teacher(batch, task, ["b1"])
        torch.testing.assert_close(cached.logits, live.logits.float(), atol=1e-5, rtol=0)
        torch.testing.assert_close(cached.feature("b1"), live.feature("b1").float(), atol=1e-5, rtol=0)
        shown.append(codes(batch.meta["augment"]))
    assert len({tuple(c.tolist()) for c in shown}) > 1  # the orientation shown changes with the epoch
    other = Batch(inputs=batch.inputs, labels=batch.labels, indices=batch.indices,
                  meta={**batch.meta, "augment": 1 - batch.meta["augment"]})  # a view the cache does not hold
    with pytest.raises(Exception, match="augmentation parameters differ"):
        parts.teacher(other, task, [])


def test_cache_views_without_augment_are_refused_naming_data_augment(tmp_path: Path, folders: Path) -> None:
    raw = raw_cfg(tmp_path, folders / "square", "x", augment=False)
    raw["teacher"] = {"arch": "span", "weights": "random", "cache": {"path": str(tmp_path / "c"), "views": 2}}
    with pytest.raises(ConfigError, match=r"teacher\.cache\.views.*data\.augment"):
        parse_config(raw, base_dir=tmp_path)
