"""Streamed super-resolution patches cut in the loader worker (``task.draw_positions`` + ``fetch(positions=...)``):
the corners are drawn in the training process before the fetch, the worker's patches equal the ones the training
process cut from the whole images for the same generator, only the patches cross the worker boundary, and runs are
the same with 0 and 2 workers and after a resume, with ``data.augment`` too (tiny generated images)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml

from distill.config import parse_config
from distill.core.family import FAMILIES
from distill.experiment import build_experiment
from distill.train.loader import Placed, fetch_batches

Image = pytest.importorskip("PIL.Image")

PATCH = 8


def save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("srcut")
    rng = np.random.default_rng(0)
    sizes = [(40, 64), (66, 30), (16, 16), (48, 48)]  # much larger than the patch, of several sizes
    for i, (h, w) in enumerate(sizes):
        save(root / "plain" / f"p{i}.png", rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        save(root / "div2k" / "hr" / f"{i:04d}.png", rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        save(root / "div2k" / "lr" / f"{i:04d}x2.png", rng.integers(0, 256, (h // 2, w // 2, 3), dtype=np.uint8))
    return root


def load(tmp_path: Path, root: Path, **data):
    from distill.tasks.super_resolution.section import SuperResolutionData

    cfg = SimpleNamespace(data=SuperResolutionData(source="folders", train=str(root), patch_size=PATCH,
                                                   streaming=True, **data),
                          base_dir=str(tmp_path), train=SimpleNamespace(eval_batch_size=4), teacher=None)
    return FAMILIES.get("super_resolution").load(cfg)


@pytest.mark.parametrize("folder", ["plain", "div2k"])
def test_worker_cut_patches_equal_the_training_process_cut(tmp_path, folders, folder):
    loaded = load(tmp_path, folders / folder)
    task, data = loaded.task, loaded.train
    idx = torch.tensor([3, 0, 2, 1])
    for seed in (0, 1, 2):
        corners = task.draw_positions(data, idx, torch.Generator().manual_seed(seed))
        assert corners.shape == (4, 2) and bool((corners % 2 == 0).all())
        cut_in_worker = task.prepare(task.fetch(data, idx, positions=corners), train=True, generator=None)
        whole = task.fetch(data, idx)  # the previous path: whole images, cut by prepare from the same generator
        assert "uncut" in whole.meta
        cut_here = task.prepare(whole, train=True, generator=torch.Generator().manual_seed(seed))
        assert torch.equal(cut_in_worker.meta["corners"], cut_here.meta["corners"])
        assert torch.equal(cut_in_worker.inputs, cut_here.inputs) and torch.equal(cut_in_worker.labels,
                                                                                    cut_here.labels)
    other = task.draw_positions(data, idx, torch.Generator().manual_seed(3))
    assert not torch.equal(other, corners)  # another generator, other patches
    assert task.draw_positions(data.subset(torch.arange(2)), torch.arange(2), torch.Generator()).shape == (2, 2)
    with pytest.raises(ValueError, match=r"corner \(1, 0\) .* not on the 2-pixel grid"):
        task.fetch(data, idx[:1], positions=torch.tensor([[1, 0]]))


def test_only_patches_cross_the_worker_boundary_and_workers_change_nothing(tmp_path, folders):
    loaded = load(tmp_path, folders / "div2k")
    task, data = loaded.task, loaded.train
    orders = [torch.tensor([0, 1]), torch.tensor([3, 2]), torch.tensor([1, 3, 0])]
    chunks = [Placed(c, task.draw_positions(data, c, torch.Generator().manual_seed(i))) for i, c in enumerate(orders)]

    def fetched(workers: int) -> list:
        return list(fetch_batches(task, data, chunks, workers))

    inline, workers = fetched(0), fetched(2)
    for c, a, b in zip(chunks, inline, workers, strict=True):
        n = len(c.indices)
        # what crossed the boundary: (n, 3, p/s, p/s) LR and (n, 3, p, p) HR uint8, whatever the images' sizes
        assert b.inputs.shape == (n, 3, PATCH // 2, PATCH // 2) and b.labels.shape == (n, 3, PATCH, PATCH)
        assert b.inputs.dtype == b.labels.dtype == torch.uint8
        assert b.inputs.nbytes + b.labels.nbytes == n * 3 * (PATCH**2 + (PATCH // 2) ** 2)
        assert "uncut" not in b.meta and torch.equal(b.meta["corners"], c.positions)
        assert torch.equal(a.inputs, b.inputs) and torch.equal(a.labels, b.labels)
    whole = task.fetch(data, orders[2])  # without positions: the whole images (66 x 64 padded), as before
    assert whole.inputs.shape == (3, 3, 66, 64)


def fit(tmp_path: Path, root: Path, name: str, max_steps: int | None = None, workers: int = 0, augment=False):
    raw = {"task": "super_resolution", "output_dir": str(tmp_path / name), "seed": 4, "deterministic": True,
           "data": {"source": "folders", "train": str(root), "patch_size": PATCH, "streaming": True,
                    "augment": augment},
           "student": {"arch": "span", "options": {"channels": 4, "num_blocks": 1}}, "methods": [{"name": "l1"}],
           "train": {"epochs": 2, "batch_size": 2, "lr": 0.01, "checkpoint_every": 3, "progress": False,
                     "max_steps": max_steps, "cpu": True, "num_workers": workers, "log_every": 1}}
    exp = build_experiment(parse_config(yaml.safe_load(yaml.safe_dump(raw)), base_dir=tmp_path))
    summary = exp.fit()
    return {k: v.clone() for k, v in exp.student.state_dict().items()}, summary, exp


def test_trainer_fetches_cut_patches_and_runs_are_identical_with_workers_and_resume(tmp_path, folders):
    root = folders / "plain"
    full, summary, exp = fit(tmp_path, root, "full", augment=True)
    assert summary["steps"] == 4  # 4 images, batches of 2, 2 epochs
    trainer = exp.trainer
    raw = next(iter(trainer._epoch_fetches(1, 0)))  # what the trainer's fetch (a worker's, with num_workers) gives
    assert raw.labels.shape == (2, 3, PATCH, PATCH) and "uncut" not in raw.meta
    prepared, _ = trainer._micro_batches(1, 0)[0]
    assert torch.equal(prepared.meta["corners"], raw.meta["corners"]) and "augment" in prepared.meta
    workers, _, _ = fit(tmp_path, root, "workers", workers=2, augment=True)
    _, first, _ = fit(tmp_path, root, "split", max_steps=3, augment=True)
    assert first["steps"] == 3
    resumed, last, _ = fit(tmp_path, root, "split", augment=True)
    assert last["steps"] == 4
    for k in full:
        assert torch.equal(full[k], workers[k]) and torch.equal(full[k], resumed[k]), k
