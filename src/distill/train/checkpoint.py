"""Exact, atomic, checksummed checkpoints.

A checkpoint is a folder ``checkpoints/step-00000123`` holding ``student.safetensors``,
``methods.safetensors`` (the methods' parameters and buffers, i.e. their learned parts and their state),
``optimizer.pt`` and ``trainer.pt`` (position in the data order, RNG streams, early-stopping state), the two
``.pt`` files holding only tensors and plain containers and read back with ``weights_only=True``, and
``checksums.json`` (the size and sha256 of each of those four files), written last.

Writing: the folder is written under a temporary name (``.tmp-step-...``), flushed, and renamed into place under
a name no other checkpoint has (a step checkpointed a second time, e.g. at an epoch end that is also a
``checkpoint_every`` step, gets ``step-00000123-2``); the ``latest`` pointer is then replaced atomically, and only
then are older checkpoints pruned. A crash at any moment leaves every checkpoint that ``latest`` may name intact.

Reading (:func:`find_checkpoint`): every checkpoint folder is verified against its checksums before use; a damaged
one (a checksum, size or unreadable file, a missing file) is skipped with a one-line warning naming the file, and
the newest intact older one is used; when none is intact the run stops with one line naming the damaged file.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from distill.cache.store import sha256_file
from distill.core.safe_pickle import UnsafeFileError, load_safetensors, load_torch_weights_only

LATEST = "latest"
CHECKSUMS = "checksums.json"
PARTS = ("student.safetensors", "methods.safetensors", "optimizer.pt", "trainer.pt")
_NAME = re.compile(r"^step-(\d{8})(?:-(\d+))?$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used (damaged, incomplete); ``str(e)`` is one line naming the file."""


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


def _order(name: str) -> tuple[int, int] | None:
    """(step, n-th save of that step) of a checkpoint folder name; None for other names."""
    m = _NAME.match(name)
    return (int(m.group(1)), int(m.group(2) or 1)) if m else None


def checkpoint_folders(root: Path) -> list[Path]:
    """The checkpoint folders under ``root``, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(o, p) for p in root.iterdir() if p.is_dir() and (o := _order(p.name)) is not None]
    return [p for _, p in sorted(found)]


def checksums_digest(body: dict[str, Any]) -> str:
    """sha256 of the checksum list itself (canonical JSON without its ``self`` key)."""
    rest = {k: v for k, v in body.items() if k != "self"}
    return hashlib.sha256(json.dumps(rest, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _write_checksums(folder: Path) -> None:
    files = {name: {"bytes": (folder / name).stat().st_size, "sha256": sha256_file(folder / name)} for name in PARTS}
    body: dict[str, Any] = {"format": "distill-checkpoint", "version": 1, "files": files}
    body["self"] = checksums_digest(body)
    path = folder / CHECKSUMS
    with open(path, "w") as f:
        json.dump(body, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())


def save_checkpoint(
    root: Path,
    step: int,
    student: dict[str, torch.Tensor],
    methods: dict[str, torch.Tensor],
    optimizer: dict[str, Any],
    trainer: dict[str, Any],
    keep: int = 2,
) -> Path:
    """Write a checkpoint of ``step`` (see the module docstring for the order of the writes); returns its folder."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:08d}"
    taken = {p.name for p in root.iterdir()}
    n = 1
    while (name if n == 1 else f"{name}-{n}") in taken:
        n += 1
    if n > 1:
        name = f"{name}-{n}"
    tmp = root / f".tmp-{name}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_file(tensors_for_safetensors(student), str(tmp / "student.safetensors"))
    save_file(tensors_for_safetensors(methods), str(tmp / "methods.safetensors"))
    torch.save(optimizer, tmp / "optimizer.pt")
    torch.save({**trainer, "checksummed": True}, tmp / "trainer.pt")  # so a lost checksums.json is noticed
    for part in PARTS:
        _fsync_file(tmp / part)
    _hook("before_checksums", name)
    _write_checksums(tmp)  # last: a folder with a valid checksums.json is complete
    _fsync_dir(tmp)
    final = root / name
    _hook("before_rename", name)
    os.replace(tmp, final)  # ``name`` is new: nothing that ``latest`` may name is touched
    _fsync_dir(root)
    _hook("before_pointer", name)
    pointer_tmp = root / f".{LATEST}.tmp"
    pointer_tmp.write_text(name + "\n")
    _fsync_file(pointer_tmp)
    os.replace(pointer_tmp, root / LATEST)
    _fsync_dir(root)
    _hook("before_prune", name)
    _prune(root, keep, current=name)
    return final


def _hook(point: str, name: str) -> None:
    """Crash tests: ``DISTILL_TEST_CHECKPOINT_KILL=<point>:<folder name>`` (e.g. ``before_pointer:step-00000010-2``)
    kills this process with SIGKILL at that point of writing that checkpoint."""
    if os.environ.get("DISTILL_TEST_CHECKPOINT_KILL") == f"{point}:{name}":
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def _prune(root: Path, keep: int, current: str) -> None:
    done = checkpoint_folders(root)
    for old in done[: max(0, len(done) - keep)]:
        if old.name != current:
            shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".tmp-step-*"):
        shutil.rmtree(stale, ignore_errors=True)


def verify_checkpoint(path: Path) -> None:
    """Check a checkpoint folder's files against its ``checksums.json``; raise :class:`CheckpointError` naming the
    first missing, truncated or changed file. A folder written before checkpoints carried checksums is only
    checked for its four files (their readers then refuse a damaged one)."""
    path = Path(path)
    sums_file = path / CHECKSUMS
    if not sums_file.exists():
        for part in PARTS:
            if not (path / part).is_file():
                raise CheckpointError(f"{path / part}: checkpoint file is missing")
        trainer = load_torch_weights_only(path / "trainer.pt")
        if isinstance(trainer, dict) and trainer.get("checksummed"):
            raise CheckpointError(f"{sums_file}: checkpoint file is missing")
        return
    try:
        body = json.loads(sums_file.read_bytes().decode("utf-8"))
        if body["self"] != checksums_digest(body):
            raise ValueError("its own checksum differs")
        files = body["files"]
        if set(files) != set(PARTS):
            raise KeyError(sorted(set(PARTS) ^ set(files)))
        expected = {k: (int(v["bytes"]), str(v["sha256"])) for k, v in files.items()}
    except Exception as e:  # noqa: BLE001 - a damaged JSON file fails in many ways
        raise CheckpointError(f"{sums_file}: damaged checksum list ({type(e).__name__}: {_one_line(e)[:80]})") \
            from None
    for part, (size, digest) in expected.items():
        file = path / part
        if not file.is_file():
            raise CheckpointError(f"{file}: checkpoint file is missing")
        actual = file.stat().st_size
        if actual != size:
            raise CheckpointError(f"{file}: truncated or overwritten: {actual} bytes, {CHECKSUMS} says {size}")
        if sha256_file(file) != digest:
            raise CheckpointError(f"{file}: checksum mismatch (sha256 differs from {CHECKSUMS}): the file is "
                                  "corrupted")


def load_checkpoint(path: Path, verify: bool = True) -> dict[str, Any]:
    """The four parts of a checkpoint folder, after :func:`verify_checkpoint` (``verify``): the two safetensors
    files, and the optimiser and trainer state read with ``torch.load(weights_only=True)``. A tampered part raises
    :class:`~distill.core.safe_pickle.UnsafeFileError` naming the file (no code in it runs); a damaged one
    :class:`CheckpointError`."""
    path = Path(path)
    if verify:
        verify_checkpoint(path)
    return {
        "student": load_weights(path / "student.safetensors"),
        "methods": load_weights(path / "methods.safetensors"),
        "optimizer": load_torch_weights_only(path / "optimizer.pt"),
        "trainer": load_torch_weights_only(path / "trainer.pt"),
    }


def _read_pointer(root: Path, warn: Callable[[str], None]) -> str | None:
    pointer = root / LATEST
    if not pointer.exists():
        return None
    try:
        name = pointer.read_bytes().decode("ascii").strip()
    except (OSError, UnicodeDecodeError):
        name = ""
    if _order(name) is None:
        warn(f"{pointer}: unreadable checkpoint pointer (it names no checkpoint folder); using the newest intact "
             "checkpoint")
        return None
    if not (root / name).is_dir():
        warn(f"{pointer}: names {name}, which does not exist; using the newest intact checkpoint")
        return None
    return name


def _recover_tmp(root: Path, warn: Callable[[str], None]) -> None:
    """A ``.tmp-step-*`` folder left by a crash: moved into place when it is complete and verifies (the crash came
    between its last write and its rename), else removed."""
    for tmp in sorted(root.glob(".tmp-step-*")):
        name = tmp.name[len(".tmp-"):]
        try:
            if _order(name) is None or (root / name).exists() or not (tmp / CHECKSUMS).exists():
                raise CheckpointError("incomplete")
            verify_checkpoint(tmp)
            os.replace(tmp, root / name)
            _fsync_dir(root)
        except (CheckpointError, OSError):
            shutil.rmtree(tmp, ignore_errors=True)


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def find_checkpoint(root: Path, warn: Callable[[str], None] = _warn) -> tuple[Path, dict[str, Any]] | None:
    """The newest intact checkpoint under ``root`` and its loaded parts, or None when there is none at all.

    Candidates, newest first: every ``step-*`` folder (the one ``latest`` names is normally the newest; a newer
    complete one exists when a crash came between its rename and the pointer update). A damaged candidate is
    skipped with ``warn`` (one line naming the damaged file); when every candidate is damaged a
    :class:`CheckpointError` names the newest one's damaged file."""
    root = Path(root)
    if not root.is_dir():
        return None
    _recover_tmp(root, warn)
    _read_pointer(root, warn)
    folders = checkpoint_folders(root)[::-1]
    if not folders:
        if (root / LATEST).exists():
            raise CheckpointError(f"{root / LATEST}: names a checkpoint, but {root} holds no intact checkpoint "
                                  "folder; start over with --restart (Trainer.fit(resume=False))")
        return None
    error: Exception | None = None
    for folder in folders:
        if error is not None:  # the newer one was damaged and this one is older
            warn(f"{_one_line(error)}; falling back to the older checkpoint {folder.name}")
        try:
            return folder, load_checkpoint(folder)
        except (CheckpointError, UnsafeFileError, FileNotFoundError) as e:
            error = e
    raise CheckpointError(f"{_one_line(error)} (no intact checkpoint left in {root}; start over with --restart, "
                          "i.e. Trainer.fit(resume=False), or use another output_dir)")


def _one_line(e: object) -> str:
    return " ".join(str(e).split())


def clear_checkpoints(root: Path) -> None:
    """Remove every checkpoint under ``root`` (a run started over: its checkpoints must not mix with older ones)."""
    root = Path(root)
    if not root.is_dir():
        return
    (root / LATEST).unlink(missing_ok=True)
    _fsync_dir(root)
    for folder in [*checkpoint_folders(root), *root.glob(".tmp-step-*")]:
        shutil.rmtree(folder, ignore_errors=True)


def latest_checkpoint(root: Path) -> Path | None:
    """The folder of the newest intact checkpoint under ``root`` (see :func:`find_checkpoint`), or None."""
    found = find_checkpoint(root)
    return found[0] if found is not None else None
