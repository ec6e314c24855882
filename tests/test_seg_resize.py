"""``data.resize`` of semantic segmentation folders: the shorter side to ``image_size`` with the aspect ratio kept
(training crops, whole padded evaluation images), or the longer side with padding to a square, or the old stretch;
masks follow by nearest neighbour, padding is ignored by the loss and the mIoU, in memory and streamed alike, with
bit-identical resume and workers (tiny generated images)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml

from distill.config import ConfigError, parse_config
from distill.core.family import FAMILIES
from distill.data.image_files import resized_size
from distill.experiment import build_experiment
from distill.tasks.segmentation.data import IGNORE_INDEX
from distill.tasks.segmentation.task import SegmentationMetrics

Image = pytest.importorskip("PIL.Image")

SIZES = [(20, 36), (33, 18), (16, 16), (24, 40)]  # (H, W): landscape, portrait, square


def blocks(h: int, w: int, seed: int) -> np.ndarray:
    """A mask of 4 x 4 blocks of classes 0..2 (large regions, so a resize keeps most pixels' classes)."""
    rng = np.random.default_rng(seed)
    grid = rng.integers(0, 3, (4, 4), dtype=np.uint8)
    return grid[np.arange(h) * 4 // h][:, np.arange(w) * 4 // w]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """Image/mask pairs whose red channel is 100 x the class (so image and mask alignment can be read back)."""
    root = tmp_path_factory.mktemp("segresize")
    for i, (h, w) in enumerate(SIZES):
        mask = blocks(h, w, i)
        image = np.zeros((h, w, 3), np.uint8)
        image[..., 0] = mask * 100
        image[..., 1] = np.arange(w, dtype=np.uint8)[None] * 5  # something that is not the class
        for sub, arr in (("images", image), ("masks", mask)):
            (root / sub).mkdir(exist_ok=True)
            Image.fromarray(arr).save(root / sub / f"p{i}.png")
    return root


def cfg(tmp_path: Path, root: Path, **data) -> SimpleNamespace:
    from distill.tasks.segmentation.section import SegmentationData

    train = SimpleNamespace(eval_batch_size=data.pop("eval_batch_size", 4))
    d = SegmentationData(source="folders", train=str(root), eval=str(root), num_classes=3,
                         normalize={"mean": [0, 0, 0], "std": [1, 1, 1]}, **data)
    return SimpleNamespace(data=d, base_dir=str(tmp_path), train=train, teacher=None)


def test_resized_sizes_by_hand():
    assert resized_size(20, 36, 16, "shorter_side") == (16, 29)  # 36 * 16 / 20 = 28.8
    assert resized_size(33, 18, 16, "shorter_side") == (29, 16)  # 33 * 16 / 18 = 29.3
    assert resized_size(20, 36, 16, "longer_side_pad") == (9, 16)  # 20 * 16 / 36 = 8.9
    assert resized_size(33, 18, 16, "longer_side_pad") == (16, 9)  # 18 * 16 / 33 = 8.7
    assert resized_size(20, 36, 16, "stretch") == resized_size(7, 7, 16, "shorter_side") == (16, 16)


@pytest.mark.parametrize("streaming", [False, True])
def test_shorter_side_keeps_the_aspect_ratio_and_masks_stay_aligned(tmp_path, folder, streaming):
    loaded = FAMILIES.get("semantic_segmentation").load(cfg(tmp_path, folder, image_size=16, streaming=streaming))
    task = loaded.task
    assert task.crop_size == 16 and loaded.info["input_shape"] == [3, 16, 16]  # training: random 16 squares
    for k, (h, w) in enumerate(SIZES):
        batch = task.prepare(task.fetch(loaded.eval, torch.tensor([k])), train=False, generator=None)
        rh, rw = resized_size(h, w, 16, "shorter_side")
        assert batch.inputs.shape[-2:] == (rh, rw) and min(rh, rw) == 16
        assert abs(rw / rh - w / h) < 0.05  # the aspect ratio is kept
        labels, red = batch.labels[0], batch.inputs[0, 0] * 255
        want = np.array(Image.open(folder / "masks" / f"p{k}.png").resize((rw, rh), Image.NEAREST))
        assert torch.equal(labels, torch.from_numpy(want).long())  # nearest neighbour: classes only, no blends
        image = Image.open(folder / "images" / f"p{k}.png").convert("RGB").resize((rw, rh), Image.BILINEAR)
        assert torch.equal((batch.inputs[0] * 255).round().byte(), torch.from_numpy(np.array(image)).permute(2, 0, 1))
        # aligned with the image: the (bilinear) red channel is 100 x the mask's class away from the blocks' edges
        assert ((red - 100 * labels).abs() < 1).float().mean() > 0.6
    # training: a random crop inside each resized image (no padding reaches it), aligned with its mask
    idx = torch.arange(len(SIZES))
    train = task.prepare(task.fetch(loaded.train, idx), train=True, generator=torch.Generator().manual_seed(0))
    assert train.inputs.shape == (4, 3, 16, 16) and not bool((train.labels == IGNORE_INDEX).any())
    for row, (h, w) in enumerate(SIZES):
        y, x = train.meta["corners"][row].tolist()
        rh, rw = resized_size(h, w, 16, "shorter_side")
        assert 0 <= y <= rh - 16 and 0 <= x <= rw - 16


def test_streamed_and_in_memory_resized_batches_are_equal(tmp_path, folder):
    family = FAMILIES.get("semantic_segmentation")
    for kw in ({"image_size": 16}, {"image_size": 16, "crop_size": 12}, {"image_size": 16, "resize": "longer_side_pad"},
               {"image_size": 12, "resize": "stretch"}):
        memory = family.load(cfg(tmp_path, folder, **kw))
        streamed = family.load(cfg(tmp_path, folder, streaming=True, **kw))
        assert memory.info == streamed.info and memory.task.crop_size == streamed.task.crop_size
        for train in (True, False):
            idx = torch.tensor([1, 3, 0])
            gens = [torch.Generator().manual_seed(5) for _ in range(2)] if train else [None, None]
            a = memory.task.prepare(memory.task.fetch(memory.train if train else memory.eval, idx), train=train,
                                    generator=gens[0])
            b = streamed.task.prepare(streamed.task.fetch(streamed.train if train else streamed.eval, idx),
                                      train=train, generator=gens[1])
            assert torch.equal(a.inputs, b.inputs) and torch.equal(a.labels, b.labels), (kw, train)


def test_longer_side_pad_pads_to_a_square_with_ignored_mask_pixels(tmp_path, folder):
    loaded = FAMILIES.get("semantic_segmentation").load(cfg(tmp_path, folder, image_size=16,
                                                            resize="longer_side_pad"))
    assert loaded.task.crop_size is None and loaded.info["input_shape"] == [3, 16, 16]
    assert loaded.task.describe()["resize"] == "longer_side_pad"  # a teacher cache's fingerprint tells them apart
    batch = loaded.task.fetch(loaded.eval, torch.arange(len(SIZES)))
    assert batch.inputs.shape == (4, 3, 16, 16)
    for row, (h, w) in enumerate(SIZES):
        rh, rw = resized_size(h, w, 16, "longer_side_pad")
        inside = torch.zeros(16, 16, dtype=torch.bool)
        inside[:rh, :rw] = True
        assert bool((batch.labels[row][~inside] == IGNORE_INDEX).all()) and bool((batch.inputs[row][:, ~inside] == 0)
                                                                                  .all())
        assert not bool((batch.labels[row][inside] == IGNORE_INDEX).any())


def test_padding_is_not_scored(tmp_path, folder):
    """An evaluation batch of whole resized images of several sizes is padded to its largest; its mIoU, accuracy
    and loss are those of the images scored one at a time, unpadded."""
    for streaming in (False, True):
        loaded = FAMILIES.get("semantic_segmentation").load(cfg(tmp_path, folder, image_size=16,
                                                                streaming=streaming))
        task = loaded.task
        idx = torch.arange(len(SIZES))
        batch = task.prepare(task.fetch(loaded.eval, idx), train=False, generator=None)
        assert batch.inputs.shape[-2:] == (29, 29)  # the tallest (p1) and the widest (p0) images
        logits = torch.randn((len(SIZES), 3, 29, 29), generator=torch.Generator().manual_seed(1))
        together = SegmentationMetrics(3)
        together.update(logits, batch)
        alone = SegmentationMetrics(3)
        for k in range(len(SIZES)):
            one = task.prepare(task.fetch(loaded.eval, idx[k:k + 1]), train=False, generator=None)
            h, w = one.labels.shape[-2:]
            assert (h, w) != (29, 29) or k in (0, 1)
            alone.update(logits[k:k + 1, :, :h, :w], one)
        assert torch.equal(together.confusion, alone.confusion)
        assert together.compute() == pytest.approx(alone.compute(), rel=1e-6)  # float32 sums, another order
        assert int(together.confusion.sum()) == sum(h * w for h, w in (resized_size(*s, 16, "shorter_side")
                                                                         for s in SIZES))


def test_bad_resize_settings_are_refused_naming_the_key(tmp_path, folder):
    base = {"task": "semantic_segmentation", "student": {"arch": "seg_resnet_student"}, "methods": [{"name": "ce"}]}
    for data, match in (({"source": "folders", "train": "x", "image_size": 16, "resize": "crop"}, r"data\.resize"),
                        ({"source": "folders", "train": "x", "resize": "stretch"}, r"data\.resize: stretch .* not set"),
                        ({"source": "folders", "train": "x", "image_size": 16, "crop_size": 20},
                         r"data\.crop_size: 20 px is larger than data\.image_size \(16\)")):
        with pytest.raises((ConfigError, ValueError), match=match):
            parse_config({**base, "data": data}, base_dir=tmp_path)
    c = cfg(tmp_path, folder, image_size=16)
    c.teacher = SimpleNamespace(cache=SimpleNamespace(path="c"))
    with pytest.raises(ConfigError, match=r"^teacher\.cache: .*data\.resize: shorter_side"):
        FAMILIES.get("semantic_segmentation").load(c)
    c = cfg(tmp_path, folder, image_size=16, resize="longer_side_pad")
    c.teacher = SimpleNamespace(cache=SimpleNamespace(path="c"))
    FAMILIES.get("semantic_segmentation").load(c)  # one square size: a cache is fine


def fit(tmp_path: Path, root: Path, name: str, max_steps: int | None = None, workers: int = 0,
        streaming: bool = True):
    raw = {"task": "semantic_segmentation", "output_dir": str(tmp_path / name), "seed": 5, "deterministic": True,
           "data": {"source": "folders", "train": str(root), "eval": str(root), "num_classes": 3, "image_size": 16,
                    "streaming": streaming},
           "student": {"arch": "seg_resnet", "options": {"widths": [4, 4, 4, 4], "decoder": 4}},
           "methods": [{"name": "ce"}],
           "train": {"epochs": 2, "batch_size": 2, "lr": 0.01, "checkpoint_every": 2, "progress": False,
                     "max_steps": max_steps, "cpu": True, "num_workers": workers, "log_every": 1,
                     "eval_batch_size": 4}}  # whole evaluation images of several sizes, padded
    exp = build_experiment(parse_config(yaml.safe_load(yaml.safe_dump(raw)), base_dir=tmp_path))
    summary = exp.fit()
    return {k: v.clone() for k, v in exp.student.state_dict().items()}, summary, exp


def test_shorter_side_runs_resume_bit_identically_and_match_in_memory(tmp_path, folder):
    full, summary, exp = fit(tmp_path, folder, "full")
    assert summary["steps"] == 4 and 0.0 <= summary["final"]["miou"] <= 1.0
    raw = next(iter(exp.trainer._epoch_fetches(1, 0)))  # the trainer's fetch (a worker's): crops, not photos
    assert raw.inputs.shape == (2, 3, 16, 16) and "corners" in raw.meta and "uncut" not in raw.meta
    memory, msummary, _ = fit(tmp_path, folder, "memory", streaming=False)
    assert msummary["final"]["miou"] == summary["final"]["miou"]
    _, first, _ = fit(tmp_path, folder, "split", max_steps=3)
    assert first["steps"] == 3
    resumed, _, _ = fit(tmp_path, folder, "split")
    workers, _, _ = fit(tmp_path, folder, "workers", workers=2)
    for k in full:
        assert torch.equal(full[k], resumed[k]) and torch.equal(full[k], workers[k]) \
            and torch.equal(full[k], memory[k]), k


@pytest.mark.parametrize("streaming", [False, True])
def test_crops_cut_at_fetch_equal_the_training_process_cut_and_only_crops_cross(tmp_path, folder, streaming):
    from distill.train.loader import Placed, fetch_batches

    # streamed: the photos' own sizes (16 x 16 to 33 x 18); in memory (one size or resized): shorter side 16
    kw = {"streaming": True, "eval_batch_size": 1} if streaming else {"image_size": 16}
    loaded = FAMILIES.get("semantic_segmentation").load(cfg(tmp_path, folder, crop_size=12, **kw))
    task, data = loaded.task, loaded.train
    idx = torch.tensor([3, 0, 2, 1])
    for seed in (0, 1):
        corners = task.draw_positions(data, idx, torch.Generator().manual_seed(seed))
        at_fetch = task.prepare(task.fetch(data, idx, positions=corners), train=True, generator=None)
        here = task.prepare(task.fetch(data, idx), train=True, generator=torch.Generator().manual_seed(seed))
        assert torch.equal(at_fetch.meta["corners"], here.meta["corners"])
        assert torch.equal(at_fetch.inputs, here.inputs) and torch.equal(at_fetch.labels, here.labels)
    with pytest.raises(ValueError, match=r"corner \(5, 0\) of a 12-pixel crop is outside image 2 \(16 x 16\)"):
        task.fetch(data, torch.tensor([2]), positions=torch.tensor([[5, 0]]))
    chunks = [Placed(c, task.draw_positions(data, c, torch.Generator().manual_seed(i)))
              for i, c in enumerate([idx[:2], idx[2:], idx])]
    inline, workers = (list(fetch_batches(task, data, chunks, n)) for n in (0, 2))
    for c, a, b in zip(chunks, inline, workers, strict=True):
        assert b.inputs.shape == (len(c.indices), 3, 12, 12) and b.labels.shape == (len(c.indices), 12, 12)
        assert torch.equal(a.inputs, b.inputs) and torch.equal(a.labels, b.labels)
