"""One run per output folder: ``output_dir/.lock`` holds the pid, host and start time of the run that owns it.

A second run on the same folder is refused with one line naming the folder and the owner's pid. A lock whose
process is gone (its pid no longer alive on this host, or alive but started at another time, i.e. a reused pid) is
stale: it is taken over with a note, so a run killed with SIGKILL resumes without help. A lock written on another
host cannot be checked from here and is refused (remove it by hand once that run is gone). Under
``torch.distributed`` only rank 0 locks (the callers decide). Re-entrant within one process: the command line and
:meth:`~distill.train.trainer.Trainer.fit` both take the lock of the same folder.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

LOCK = ".lock"

_held: dict[Path, int] = {}


class RunLockedError(RuntimeError):
    """The output folder is in use by another run; ``str(e)`` is one line naming the folder and its pid."""


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), or None where /proc cannot tell."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22, counted after the command name


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return False
    return True


def _owner() -> dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname(), "start": _start_time(os.getpid())}


def _read(path: Path) -> dict[str, Any] | None:
    try:
        info = json.loads(path.read_text())
        return info if isinstance(info, dict) and isinstance(info.get("pid"), int) else None
    except (OSError, ValueError, UnicodeDecodeError):
        return None


def _stale_reason(info: dict[str, Any] | None) -> str | None:
    """Why a lock can be taken over, or None when its run may still be going."""
    if info is None:
        return "unreadable"
    if info.get("host") != socket.gethostname():
        return None
    pid = int(info["pid"])
    if not _alive(pid):
        return f"pid {pid} is no longer running"
    start = _start_time(pid)
    if info.get("start") is not None and start is not None and start != info["start"]:
        return f"pid {pid} is now another process"
    return None


def acquire(folder: str | Path) -> Path:
    """Take the lock of ``folder`` (created if needed) for this process; returns the lock file's path.

    Raises:
        RunLockedError: another live run holds it."""
    folder = Path(folder).resolve()
    path = folder / LOCK
    if folder in _held:
        _held[folder] += 1
        return path
    folder.mkdir(parents=True, exist_ok=True)
    body = json.dumps(_owner())
    for _ in range(3):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            info = _read(path)
            reason = _stale_reason(info)
            if reason is None:
                assert info is not None
                where = "" if info.get("host") == socket.gethostname() else f" on host {info.get('host')}"
                raise RunLockedError(
                    f"{folder}: in use by another run (pid {info['pid']}{where}, lock file {path}); wait for it to "
                    f"finish or use another output_dir (delete {path} only if that run is gone)") from None
            print(f"note: {path}: taking over a stale lock ({reason})", file=sys.stderr)
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            continue
        with os.fdopen(fd, "w") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        _held[folder] = 1
        return path
    raise RunLockedError(f"{folder}: could not take the lock {path} (another run keeps taking it)")


def release(folder: str | Path) -> None:
    """Give the lock of ``folder`` back (the last release of this process removes the file)."""
    folder = Path(folder).resolve()
    count = _held.get(folder, 0)
    if count > 1:
        _held[folder] = count - 1
        return
    _held.pop(folder, None)
    if count == 1:
        path = folder / LOCK
        info = _read(path)
        if info is not None and info.get("pid") == os.getpid():
            path.unlink(missing_ok=True)


class RunLock:
    """``with RunLock(folder, enabled):`` holds the folder's lock for the block (``enabled=False``: a no-op, for
    ranks other than 0)."""

    def __init__(self, folder: str | Path, enabled: bool = True):
        self.folder = Path(folder)
        self.enabled = enabled

    def __enter__(self) -> RunLock:
        if self.enabled:
            acquire(self.folder)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            release(self.folder)
