"""``data.streaming`` for the folder sources of super_resolution and semantic_segmentation: the streamed set holds
paths only, its batches are those of the in-memory path where both cut the same examples, random patches are
aligned crops of the right files drawn from the trainer's generator, workers and resume change nothing, and bad
settings are refused naming the key (tiny generated images)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml

from distill.config import ConfigError, parse_config
from distill.core.family import FAMILIES
from distill.experiment import build_experiment
from distill.train.loader import fetch_batches

Image = pytest.importorskip("PIL.Image")


def save(path: Path, array: np.ndarray, exif_orientation: int | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(array)
    if exif_orientation is None:
        im.save(path)
    else:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        im.save(path, exif=exif)


def rgb(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def holds_no_pixels(obj: object) -> bool:
    """No tensor or array among the attributes, nor inside their lists (paths and sizes only)."""
    values = [x for v in vars(obj).values() for x in (v if isinstance(v, list) else [v])]
    return not any(isinstance(x, (torch.Tensor, np.ndarray)) for x in values)


# -- super-resolution --------------------------------------------------------------------------------------------
def sr_cfg(tmp_path: Path, **data) -> SimpleNamespace:
    from distill.tasks.super_resolution.section import SuperResolutionData

    train = SimpleNamespace(eval_batch_size=data.pop("eval_batch_size", 4))
    return SimpleNamespace(data=SuperResolutionData(source="folders", **data), base_dir=str(tmp_path), train=train,
                           teacher=None)


@pytest.fixture(scope="module")
def sr_folders(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sr")
    rng = np.random.default_rng(0)
    for i in range(5):  # equal sizes (17 x 20: cut to 16 x 20 at scale 2)
        save(root / "same" / f"a{i}.png", rgb(rng, 17, 20))
    for i, (h, w) in enumerate([(20, 36), (33, 18), (16, 16)]):  # DIV2K-style hr/ + lr/0001x2.png
        save(root / "div2k" / "hr" / f"{i:04d}.png", rgb(rng, h, w))
        save(root / "div2k" / "lr" / f"{i:04d}x2.png", rgb(rng, h // 2, w // 2))
    for i, (h, w) in enumerate([(20, 36), (33, 18), (16, 16)]):
        save(root / "mixed" / f"m{i}.png", rgb(rng, h, w))
    save(root / "mixed" / "m3.jpg", rgb(rng, 24, 16), exif_orientation=6)  # shown 16 x 24, turned upright
    return root


@pytest.mark.parametrize("folder", ["same", "div2k_whole"])
def test_sr_streamed_whole_images_equal_the_in_memory_batches(tmp_path, sr_folders, folder):
    from distill.tasks.super_resolution.task import SuperResolution

    root = sr_folders / "same"
    if folder == "div2k_whole":  # one size per side: hr 20 x 36 only
        root = tmp_path / "d"
        rng = np.random.default_rng(1)
        for i in range(4):
            save(root / "hr" / f"{i}.png", rgb(rng, 21, 36))
            save(root / "lr" / f"{i}.png", rgb(rng, 10, 18))
    family = FAMILIES.get("super_resolution")
    memory = family.load(sr_cfg(tmp_path, train=str(root), eval=str(root), train_size=3))
    streamed = family.load(sr_cfg(tmp_path, train=str(root), eval=str(root), train_size=3, streaming=True))
    assert holds_no_pixels(streamed.train) and holds_no_pixels(streamed.eval)
    assert len(streamed.train) == len(memory.train) == 3 and streamed.info == memory.info
    task = SuperResolution(2)
    for a, b in ((memory.train, streamed.train), (memory.eval, streamed.eval)):
        idx = torch.tensor([2, 0, 1])
        m, s = task.fetch(a, idx), task.fetch(b, idx)
        assert torch.equal(m.inputs, s.inputs) and torch.equal(m.labels, s.labels)


def test_sr_streamed_patches_are_aligned_crops_of_the_right_files(tmp_path, sr_folders):
    from distill.tasks.super_resolution.data import bicubic_down
    from distill.tasks.super_resolution.task import SuperResolution

    family = FAMILIES.get("super_resolution")
    task = SuperResolution(2)
    for folder in ("div2k", "mixed"):
        loaded = family.load(sr_cfg(tmp_path, train=str(sr_folders / folder), patch_size=8, streaming=True))
        data = loaded.train
        assert len(data) == len(data.hr_files) and holds_no_pixels(data) and loaded.info["input_shape"] == [3, 4, 4]
        idx = torch.arange(len(data)).flip(0)
        views = [task.prepare(task.fetch(data, idx), train=True, generator=torch.Generator().manual_seed(s))
                 for s in (7, 7, 8)]
        assert torch.equal(views[0].inputs, views[1].inputs) and torch.equal(views[0].labels, views[1].labels)
        assert not torch.equal(views[0].meta["corners"], views[2].meta["corners"])  # another step, other patches
        batch = views[0]
        assert batch.inputs.shape == (len(data), 3, 4, 4) and batch.labels.shape == (len(data), 3, 8, 8)
        for row, k in enumerate(idx.tolist()):
            y, x = batch.meta["corners"][row].tolist()
            assert y % 2 == 0 and x % 2 == 0
            hr_file = np.array(Image.open(data.hr_files[k]).convert("RGB"))
            if folder == "mixed" and data.hr_files[k].suffix == ".jpg":  # EXIF 6: stored 24 x 16, shown 16 x 24
                hr_file = np.rot90(hr_file, k=-1)
                assert data.sizes[k] == (16, 24)
            hr = torch.from_numpy(np.ascontiguousarray(hr_file[y:y + 8, x:x + 8])).permute(2, 0, 1)
            assert torch.equal(batch.labels[row], hr.float() / 255)
            if folder == "div2k":
                lr_file = np.array(Image.open(data.lr_files[k]))
                lr = torch.from_numpy(np.ascontiguousarray(lr_file[y // 2:y // 2 + 4, x // 2:x // 2 + 4]))
                assert torch.equal(batch.inputs[row], lr.permute(2, 0, 1).float() / 255)
            else:
                assert torch.equal(batch.inputs[row], bicubic_down(hr[None], 2)[0].float() / 255)


def test_sr_streamed_eval_tiles_equal_the_in_memory_tiles(tmp_path, sr_folders):
    family = FAMILIES.get("super_resolution")
    for folder in ("div2k", "mixed"):
        kw = dict(train=str(sr_folders / folder), eval=str(sr_folders / folder), patch_size=8, eval_size=9)
        memory, streamed = family.load(sr_cfg(tmp_path, **kw)), family.load(sr_cfg(tmp_path, streaming=True, **kw))
        assert len(memory.eval) == len(streamed.eval) == 9
        whole = torch.arange(len(memory.eval))
        m, s = memory.task.fetch(memory.eval, whole), streamed.task.fetch(streamed.eval, whole)
        assert torch.equal(m.inputs, s.inputs) and torch.equal(m.labels, s.labels)


def test_sr_workers_fetch_the_same_patches(tmp_path, sr_folders):
    loaded = FAMILIES.get("super_resolution").load(sr_cfg(tmp_path, train=str(sr_folders / "div2k"), patch_size=8,
                                                          streaming=True))
    chunks = [torch.tensor([0, 1]), torch.tensor([2]), torch.tensor([1, 2])]
    task, data = loaded.task, loaded.train

    def prepared(workers: int) -> list:
        return [task.prepare(b, train=True, generator=torch.Generator().manual_seed(i))
                for i, b in enumerate(fetch_batches(task, data, chunks, workers))]

    for a, b in zip(prepared(0), prepared(2), strict=True):
        assert torch.equal(a.inputs, b.inputs) and torch.equal(a.labels, b.labels)


def test_sr_streaming_bad_settings_name_the_key_and_file(tmp_path, sr_folders):
    from distill.data.image_tables import DataReadError

    family = FAMILIES.get("super_resolution")
    with pytest.raises(ConfigError, match=r"^data\.train: the images in .*mixed have several sizes \(m0\.png: "
                                          r"20 x 36.*data\.patch_size"):
        family.load(sr_cfg(tmp_path, train=str(sr_folders / "mixed"), streaming=True))
    with pytest.raises(ConfigError, match=r"^data\.eval: .*several sizes.*train\.eval_batch_size: 1"):
        family.load(sr_cfg(tmp_path, train=str(sr_folders / "same"), eval=str(sr_folders / "mixed"), streaming=True))
    one = family.load(sr_cfg(tmp_path, train=str(sr_folders / "same"), eval=str(sr_folders / "mixed"),
                             streaming=True, eval_batch_size=1))
    assert one.task.fetch(one.eval, torch.tensor([3])).labels.shape == (1, 3, 16, 24)  # whole, upright
    with pytest.raises(ConfigError, match=r"^data\.patch_size: 18 px is larger than 0002\.png"):
        family.load(sr_cfg(tmp_path, train=str(sr_folders / "div2k"), patch_size=18, streaming=True))
    broken = tmp_path / "broken"
    for i in range(2):
        save(broken / f"b{i}.png", rgb(np.random.default_rng(i), 8, 8))
    loaded = family.load(sr_cfg(tmp_path, train=str(broken), streaming=True))
    (broken / "b1.png").write_bytes((broken / "b1.png").read_bytes()[:50])  # truncated after the header
    with pytest.raises(DataReadError, match=r"^data\.train: b1\.png: "):
        loaded.task.fetch(loaded.train, torch.tensor([0, 1]))
    for data, match in (
            ({"source": "textures", "streaming": True}, r"data\.streaming: reads the image files of source: folders"),
            ({"source": "folders", "train": "x", "streaming": "maybe"}, r"data\.streaming")):
        raw = {"task": "super_resolution", "data": data, "student": {"arch": "span"}, "methods": [{"name": "l1"}]}
        with pytest.raises((ConfigError, ValueError), match=match):
            parse_config(raw, base_dir=tmp_path)
    raw = {"task": "super_resolution", "student": {"arch": "span"}, "methods": [{"name": "l1"}],
           "data": {"source": "folders", "train": "x", "patch_size": 8, "streaming": True},
           "teacher": {"arch": "span", "weights": "random", "cache": {"path": str(tmp_path / "c")}}}
    with pytest.raises((ConfigError, ValueError), match=r"teacher\.cache: .*random patch"):
        parse_config(raw, base_dir=tmp_path)


def fit_config(tmp_path: Path, raw: dict):
    """Train ``raw`` (through YAML, as a user's file) and return the student's weights and the run's summary."""
    exp = build_experiment(parse_config(yaml.safe_load(yaml.safe_dump(raw)), base_dir=tmp_path))
    summary = exp.fit()
    return {k: v.clone() for k, v in exp.student.state_dict().items()}, summary


def fit_sr(tmp_path: Path, root: Path, name: str, max_steps: int | None = None, workers: int = 0):
    raw = {"task": "super_resolution", "output_dir": str(tmp_path / name), "seed": 3, "deterministic": True,
           "data": {"source": "folders", "train": str(root), "eval": str(root), "patch_size": 8, "streaming": True},
           "student": {"arch": "span", "options": {"channels": 4, "num_blocks": 1}}, "methods": [{"name": "l1"}],
           "train": {"epochs": 3, "batch_size": 2, "lr": 0.01, "checkpoint_every": 2, "progress": False,
                     "max_steps": max_steps, "cpu": True, "num_workers": workers, "log_every": 1}}
    return fit_config(tmp_path, raw)


def test_sr_streamed_run_resumes_bit_identically(tmp_path, sr_folders):
    root = sr_folders / "div2k"
    full, summary = fit_sr(tmp_path, root, "full")
    assert summary["steps"] == 3  # 3 images, batches of 2 (the last dropped), 3 epochs
    assert set(summary["final"]) >= {"psnr", "ssim"}  # the streamed evaluation tiles were scored
    _, first = fit_sr(tmp_path, root, "split", max_steps=2)
    assert first["steps"] == 2
    resumed, last = fit_sr(tmp_path, root, "split")
    assert last["steps"] == 3
    for k in full:
        assert torch.equal(full[k], resumed[k]), k


# -- semantic segmentation ---------------------------------------------------------------------------------------
def seg_cfg(tmp_path: Path, **data) -> SimpleNamespace:
    from distill.tasks.segmentation.section import SegmentationData

    train = SimpleNamespace(eval_batch_size=data.pop("eval_batch_size", 4))
    return SimpleNamespace(data=SegmentationData(source="folders", **data), base_dir=str(tmp_path), train=train,
                           teacher=None)


def save_pair(root: Path, stem: str, image: np.ndarray, mask: np.ndarray, orientation: int | None = None) -> None:
    save(root / "images" / f"{stem}.{'jpg' if orientation else 'png'}", image, orientation)
    save(root / "masks" / f"{stem}.png", mask, orientation)


@pytest.fixture(scope="module")
def seg_folders(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("seg")
    rng = np.random.default_rng(2)
    for i in range(5):  # one size, masks 0..2 and 255 (ignored)
        mask = rng.choice(np.array([0, 1, 2, 255], np.uint8), (20, 24))
        save_pair(root / "same", f"s{i}", rgb(rng, 20, 24), mask)
    for i, (h, w) in enumerate([(20, 36), (33, 18), (16, 16), (24, 20)]):
        mask = rng.integers(0, 3, (h, w), dtype=np.uint8)
        save_pair(root / "mixed", f"m{i}", rgb(rng, h, w), mask, orientation=6 if i == 3 else None)
    return root


@pytest.mark.parametrize("kw", [{"crop_size": 12}, {"image_size": 16, "crop_size": 8, "resize": "stretch"},
                                {"image_size": 16, "crop_size": 8}, {"image_size": 16},
                                {"image_size": 16, "resize": "longer_side_pad"}, {}])
def test_seg_streamed_batches_equal_the_in_memory_batches(tmp_path, seg_folders, kw):
    family = FAMILIES.get("semantic_segmentation")
    root = seg_folders / ("mixed" if "image_size" in kw else "same")
    common = dict(train=str(root), eval=str(root), num_classes=3, **kw)
    memory = family.load(seg_cfg(tmp_path, **common))
    streamed = family.load(seg_cfg(tmp_path, streaming=True, **common))
    assert holds_no_pixels(streamed.train) and holds_no_pixels(streamed.eval)
    assert streamed.info == memory.info and len(streamed.train) == len(memory.train)
    idx = torch.tensor([3, 0, 2])
    for train, (a, b) in ((True, (memory.train, streamed.train)), (False, (memory.eval, streamed.eval))):
        gen = [torch.Generator().manual_seed(11) for _ in range(2)] if train else [None, None]
        m = memory.task.prepare(memory.task.fetch(a, idx), train=train, generator=gen[0])
        s = streamed.task.prepare(streamed.task.fetch(b, idx), train=train, generator=gen[1])
        assert torch.equal(m.inputs, s.inputs) and torch.equal(m.labels, s.labels)
        square = kw.get("resize", "shorter_side") != "shorter_side"  # images of several sizes after shorter_side
        side = kw.get("crop_size", kw.get("image_size")) if train else (kw.get("image_size") if square else None)
        if side:
            assert m.inputs.shape[-2:] == (side, side)
        if train and (kw.get("crop_size") or (side and not square)):  # random crops (shorter_side: image_size)
            assert torch.equal(m.meta["corners"], s.meta["corners"])
    if root.name == "same":
        assert bool((m.labels == -100).any())  # the masks' 255 -> ignored, in both paths


def test_seg_streamed_crops_of_any_sizes_are_aligned_with_their_masks(tmp_path, seg_folders):
    family = FAMILIES.get("semantic_segmentation")
    loaded = family.load(seg_cfg(tmp_path, train=str(seg_folders / "mixed"), num_classes=3, crop_size=16,
                                 streaming=True, normalize={"mean": [0, 0, 0], "std": [1, 1, 1]}))
    data = loaded.train
    assert loaded.info["input_shape"] == [3, 16, 16] and data.sizes[3] == (20, 24)  # EXIF 6: shown 20 x 24
    idx = torch.arange(len(data))
    batch = loaded.task.prepare(loaded.task.fetch(data, idx), train=True, generator=torch.Generator().manual_seed(4))
    for row, k in enumerate(idx.tolist()):
        y, x = batch.meta["corners"][row].tolist()
        image = np.array(Image.open(data.image_files[k]).convert("RGB"))
        mask = np.array(Image.open(data.mask_files[k]))
        if k == 3:  # stored 24 x 20 with orientation 6: turned upright, image and mask alike
            image, mask = np.rot90(image, k=-1), np.rot90(mask, k=-1)
        want = torch.from_numpy(np.ascontiguousarray(image[y:y + 16, x:x + 16])).permute(2, 0, 1).float() / 255
        assert torch.allclose(batch.inputs[row], want, atol=1e-6)
        assert torch.equal(batch.labels[row], torch.from_numpy(np.ascontiguousarray(mask[y:y + 16, x:x + 16])).long())


def test_seg_streaming_bad_settings_name_the_key_and_file(tmp_path, seg_folders):
    from distill.data.image_tables import DataReadError

    family = FAMILIES.get("semantic_segmentation")
    mixed = str(seg_folders / "mixed")
    with pytest.raises(ConfigError, match=r"^data\.num_classes: required with data\.streaming"):
        family.load(seg_cfg(tmp_path, train=mixed, streaming=True, crop_size=8))
    with pytest.raises(ConfigError, match=r"^data\.train: the images have several sizes \(m0\.png: 20 x 36.*"
                                          r"data\.image_size or data\.crop_size"):
        family.load(seg_cfg(tmp_path, train=mixed, streaming=True, num_classes=3))
    with pytest.raises(ConfigError, match=r"^data\.crop_size: 18 px is larger than m2\.png"):
        family.load(seg_cfg(tmp_path, train=mixed, streaming=True, num_classes=3, crop_size=18))
    with pytest.raises(ConfigError, match=r"^data\.crop_size: 30 px is larger than the training images"):
        family.load(seg_cfg(tmp_path, train=str(seg_folders / "same"), num_classes=3, crop_size=30))
    one = family.load(seg_cfg(tmp_path, train=mixed, eval=mixed, streaming=True, num_classes=3, crop_size=8,
                              eval_batch_size=1))
    assert one.task.fetch(one.eval, torch.tensor([0])).labels.shape == (1, 20, 36)  # evaluation: whole images
    two = family.load(seg_cfg(tmp_path, train=mixed, streaming=True, num_classes=2, crop_size=8))
    with pytest.raises(DataReadError, match=r"^data\.num_classes: 2, but the mask m\d_?\w*\.png of data\.train "
                                            r"holds the value 2"):
        two.task.fetch(two.train, torch.arange(4))
    for data, match in (({"source": "texmosaic", "streaming": True}, r"data\.streaming: reads the image and mask"),
                        ({"source": "folders", "train": "x", "crop_size": 2}, r"data\.crop_size")):
        raw = {"task": "semantic_segmentation", "data": data, "student": {"arch": "seg_resnet_student"},
               "methods": [{"name": "ce"}]}
        with pytest.raises((ConfigError, ValueError), match=match):
            parse_config(raw, base_dir=tmp_path)


def fit_seg(tmp_path: Path, root: Path, name: str, max_steps: int | None = None, workers: int = 0):
    raw = {"task": "semantic_segmentation", "output_dir": str(tmp_path / name), "seed": 5, "deterministic": True,
           "data": {"source": "folders", "train": str(root), "eval": str(root), "num_classes": 3, "crop_size": 16,
                    "streaming": True},
           "student": {"arch": "seg_resnet", "options": {"widths": [4, 4, 4, 4], "decoder": 4}},
           "methods": [{"name": "ce"}],
           "train": {"epochs": 2, "batch_size": 2, "lr": 0.01, "checkpoint_every": 2, "progress": False,
                     "max_steps": max_steps, "cpu": True, "num_workers": workers, "log_every": 1,
                     "eval_batch_size": 1}}  # whole evaluation images of several sizes, one per batch
    return fit_config(tmp_path, raw)


def test_seg_streamed_run_resumes_bit_identically_and_workers_change_nothing(tmp_path, seg_folders):
    root = seg_folders / "mixed"
    full, summary = fit_seg(tmp_path, root, "full")
    assert summary["steps"] == 4  # 4 image pairs, batches of 2, 2 epochs
    assert 0.0 <= summary["final"]["miou"] <= 1.0  # whole evaluation images of several sizes, one per batch
    _, first = fit_seg(tmp_path, root, "split", max_steps=3)
    assert first["steps"] == 3
    resumed, last = fit_seg(tmp_path, root, "split")
    assert last["steps"] == 4
    workers, _ = fit_seg(tmp_path, root, "workers", workers=2)
    for k in full:
        assert torch.equal(full[k], resumed[k]) and torch.equal(full[k], workers[k]), k
