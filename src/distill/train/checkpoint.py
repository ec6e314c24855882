"""Exact, atomic checkpoints.

A checkpoint is a folder ``checkpoints/step-00000123`` holding ``student.safetensors``,
``methods.safetensors`` (the methods' parameters and buffers, i.e. their learned parts and their state),
``optimizer.pt`` and ``trainer.pt`` (position in the data order, RNG streams, early-stopping state), the two
``.pt`` files holding only tensors and plain containers and read back with ``weights_only=True``.
The folder is written under a temporary name, flushed, and renamed into place; the ``latest`` pointer is then
replaced atomically. A crash at any moment leaves the previous checkpoint intact and pointed to.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from distill.core.safe_pickle import load_safetensors, load_torch_weights_only

LATEST = "latest"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def tensors_for_safetensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU copies (safetensors refuses shared or non-contiguous storage)."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def save_weights(path: Path, state: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file atomically (temporary name, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors_for_safetensors(state), str(tmp), metadata=metadata)
    _fsync_file(tmp)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def load_weights(path: Path | str) -> dict[str, torch.Tensor]:
    """A safetensors file as CPU tensors; anything else (e.g. a renamed pickle) raises
    :class:`~distill.core.safe_pickle.UnsafeFileError` naming the file."""
    return load_safetensors(path)


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": (np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_to_tuple(state["python"]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_tuple(x: Any) -> Any:
    if isinstance(x, (list, tuple)):
        return tuple(_to_tuple(v) for v in x)
    return x


def save_checkpoint(
    root: Path,
    step: int,
    student: dict[str, torch.Tensor],
    methods: dict[str, torch.Tensor],
    optimizer: dict[str, Any],
    trainer: dict[str, Any],
    keep: int = 2,
) -> Path:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:08d}"
    final = root / name
    tmp = root / f".tmp-{name}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_file(tensors_for_safetensors(student), str(tmp / "student.safetensors"))
    save_file(tensors_for_safetensors(methods), str(tmp / "methods.safetensors"))
    torch.save(optimizer, tmp / "optimizer.pt")
    torch.save(trainer, tmp / "trainer.pt")
    for f in tmp.iterdir():
        _fsync_file(f)
    _fsync_dir(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(root)
    pointer_tmp = root / f".{LATEST}.tmp"
    pointer_tmp.write_text(name + "\n")
    _fsync_file(pointer_tmp)
    os.replace(pointer_tmp, root / LATEST)
    _fsync_dir(root)
    _prune(root, keep, current=name)
    return final


def _prune(root: Path, keep: int, current: str) -> None:
    done = sorted(p for p in root.glob("step-*") if p.is_dir())
    for old in done[: max(0, len(done) - keep)]:
        if old.name != current:
            shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".tmp-step-*"):
        shutil.rmtree(stale, ignore_errors=True)


def latest_checkpoint(root: Path) -> Path | None:
    pointer = Path(root) / LATEST
    if not pointer.exists():
        return None
    path = Path(root) / pointer.read_text().strip()
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint pointer {pointer} names {path.name}, which does not exist")
    return path


def load_checkpoint(path: Path) -> dict[str, Any]:
    """The four parts of a checkpoint folder: the two safetensors files, and the optimiser and trainer state read
    with ``torch.load(weights_only=True)``. A tampered part raises
    :class:`~distill.core.safe_pickle.UnsafeFileError` naming the file (no code in it runs)."""
    path = Path(path)
    return {
        "student": load_weights(path / "student.safetensors"),
        "methods": load_weights(path / "methods.safetensors"),
        "optimizer": load_torch_weights_only(path / "optimizer.pt"),
        "trainer": load_torch_weights_only(path / "trainer.pt"),
    }
