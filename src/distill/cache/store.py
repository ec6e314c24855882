"""A sharded, checksummed store of named tensors keyed by (example index, view).

Layout of a cache directory::

    manifest.json               written last, atomically (temp file + rename): no manifest, no cache
    shard-00000.t0.npy          one .npy file per (shard, tensor); shard s holds examples [s*S, (s+1)*S)
    shard-00000.t1.npy          array shape (rows, views, *shape) in the stored dtype
    ...
    extra-head_weight.npy       optional tensors stored once per store (not per example), e.g. a model's output
                                head; checksummed in the manifest like the shards

Every tensor has a fixed per-(example, view) shape and dtype, so shards are plain NumPy arrays that can be
memory-mapped. The manifest records each file's size and sha256. :meth:`TensorStore.open` checks all of them
before the first read (a truncated, bit-flipped or missing shard is refused, naming the file) and compares
the fingerprint the caller expects with the one the cache was built for (a stale cache is refused, naming what
changed), so a damaged cache is never partly used. Nothing here knows about teachers or tasks.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distill.core.safe_pickle import load_npy

FORMAT = "distill-tensor-cache"
VERSION = 1
MANIFEST = "manifest.json"
#: the manifest's own checksum: sha256 of its other keys as canonical JSON (a flipped bit anywhere in it is refused)
SELF_SUM = "manifest_sha256"

#: stored dtypes; bfloat16 has no NumPy type and is stored as its 16-bit pattern (uint16)
_NUMPY = {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16, "float64": np.float64,
          "int16": np.int16, "int32": np.int32, "int64": np.int64, "uint8": np.uint8}
_TORCH = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64,
          "int16": torch.int16, "int32": torch.int32, "int64": torch.int64, "uint8": torch.uint8}


class CacheError(ValueError):
    """A cache that cannot be used: missing, unfinished, damaged or built for something else."""


@dataclass(frozen=True)
class TensorSpec:
    """Shape of one (example, view) entry and its stored dtype."""

    shape: tuple[int, ...]
    dtype: str

    def __post_init__(self) -> None:
        if self.dtype not in _NUMPY:
            raise ValueError(f"unsupported cache dtype {self.dtype!r}; allowed: {', '.join(_NUMPY)}")


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _to_numpy(x: torch.Tensor, dtype: str) -> np.ndarray:
    x = x.detach().to("cpu", _TORCH[dtype]).contiguous()
    if dtype == "bfloat16":
        return x.view(torch.int16).numpy().view(np.uint16)
    return x.numpy()


def _to_torch(a: np.ndarray, dtype: str) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(a))
    return t.view(torch.bfloat16) if dtype == "bfloat16" else t


def _shard_file(shard: int, tensor: int) -> str:
    return f"shard-{shard:05d}.t{tensor}.npy"


def _extra_file(name: str) -> str:
    return f"extra-{name}.npy"


def _dtype_name(t: torch.Tensor) -> str:
    for name, dt in _TORCH.items():
        if dt == t.dtype:
            return name
    raise ValueError(f"unsupported cache dtype {t.dtype}; allowed: {', '.join(_TORCH)}")


def _manifest_digest(manifest: Mapping[str, Any]) -> str:
    body = {k: v for k, v in manifest.items() if k != SELF_SUM}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class TensorStoreWriter:
    """Write a store: preallocated memory-mapped shards, filled by :meth:`write`, sealed by :meth:`close`.

    The old manifest (if any) is deleted first, so an interrupted build leaves a directory that
    :meth:`TensorStore.open` refuses as unfinished rather than a mix of old and new shards.
    """

    def __init__(self, path: str | Path, num_examples: int, views: int, specs: Mapping[str, TensorSpec],
                 shard_size: int = 8192, reopen: bool = False):
        """``reopen``: continue filling the shards an interrupted writer left (same examples, views, specs and
        shard size; each file's shape and dtype are checked, a mismatch raises ``ValueError``); nothing counts as
        written until :meth:`mark_filled` says so."""
        if num_examples <= 0 or views <= 0 or shard_size <= 0:
            raise ValueError(f"num_examples, views and shard_size must be positive, got {num_examples}, {views}, "
                             f"{shard_size}")
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / MANIFEST).unlink(missing_ok=True)
        if not reopen:
            for old in [*self.path.glob("shard-*.npy"), *self.path.glob("extra-*.npy")]:
                old.unlink()
        self.num_examples, self.views, self.shard_size = num_examples, views, shard_size
        self.specs = dict(specs)
        self.names = list(self.specs)
        self.num_shards = -(-num_examples // shard_size)
        self._arrays: list[list[np.ndarray]] = []
        for s in range(self.num_shards):
            rows = min(shard_size, num_examples - s * shard_size)
            arrays = []
            for j, spec in enumerate(self.specs.values()):
                f, shape, dtype = self.path / _shard_file(s, j), (rows, views, *spec.shape), _NUMPY[spec.dtype]
                if not reopen:
                    arrays.append(np.lib.format.open_memmap(f, mode="w+", dtype=dtype, shape=shape))
                    continue
                a = np.load(f, mmap_mode="r+", allow_pickle=False)
                if a.shape != shape or a.dtype != dtype:
                    raise ValueError(f"{f}: {a.shape} {a.dtype}, expected {shape} {np.dtype(dtype)}")
                arrays.append(a)
            self._arrays.append(arrays)
        self._filled = np.zeros((num_examples, views), dtype=bool)

    def mark_filled(self, view: int, stop: int) -> None:
        """Count every entry of the views before ``view``, and examples [0, stop) of ``view``, as written."""
        self._filled[:, :view] = True
        if view < self.views:
            self._filled[:stop, view] = True

    def flush(self) -> None:
        """Push what :meth:`write` stored to the files (before a progress record says it is there)."""
        for arrays in self._arrays:
            for a in arrays:
                a.flush()

    def write(self, indices: torch.Tensor, view: int, values: Mapping[str, torch.Tensor]) -> None:
        """Store ``values[name][i]`` as the entry of example ``indices[i]``, view ``view``."""
        idx = torch.as_tensor(indices).long().cpu().numpy()
        missing = set(self.names) - set(values)
        if missing:
            raise ValueError(f"values for {sorted(missing)} are missing")
        for j, name in enumerate(self.names):
            spec = self.specs[name]
            arr = _to_numpy(values[name], spec.dtype)
            if arr.shape != (len(idx), *spec.shape):
                raise ValueError(f"{name!r}: expected shape {(len(idx), *spec.shape)}, got {arr.shape}")
            shard, row = np.divmod(idx, self.shard_size)
            for s in np.unique(shard):
                sel = shard == s
                self._arrays[s][j][row[sel], view] = arr[sel]
        self._filled[idx, view] = True

    def close(self, fingerprint: Mapping[str, Any], meta: Mapping[str, Any],
              extras: Mapping[str, torch.Tensor] | None = None) -> dict[str, Any]:
        """Flush the shards, write the ``extras`` (tensors stored once, in their own dtype), checksum them all and
        write the manifest (last, atomically)."""
        if not self._filled.all():
            ex, view = np.argwhere(~self._filled)[0]
            raise ValueError(f"the cache is incomplete: example {ex}, view {view} was never written")
        shards = []
        for s, arrays in enumerate(self._arrays):
            files = {}
            for j, (name, arr) in enumerate(zip(self.names, arrays)):
                arr.flush()
                f = self.path / _shard_file(s, j)
                files[name] = {"file": f.name, "bytes": f.stat().st_size, "sha256": sha256_file(f)}
            start = s * self.shard_size
            shards.append({"start": start, "stop": min(start + self.shard_size, self.num_examples), "files": files})
        self._arrays = []
        extra_files = {}
        for name, t in (extras or {}).items():
            if not name.replace("_", "").isalnum():
                raise ValueError(f"extra tensor name {name!r}: letters, digits and underscores only")
            dtype = _dtype_name(t)
            f = self.path / _extra_file(name)
            np.save(f, _to_numpy(t, dtype), allow_pickle=False)
            extra_files[name] = {"file": f.name, "bytes": f.stat().st_size, "sha256": sha256_file(f),
                                 "shape": list(t.shape), "dtype": dtype}
        manifest = {
            "format": FORMAT, "version": VERSION, "num_examples": self.num_examples, "views": self.views,
            "shard_size": self.shard_size,
            "tensors": {n: {"shape": list(s.shape), "dtype": s.dtype} for n, s in self.specs.items()},
            "shards": shards, "fingerprint": dict(fingerprint), "meta": dict(meta),
        }
        if extra_files:
            manifest["extras"] = extra_files
        manifest[SELF_SUM] = _manifest_digest(manifest)
        _write_json_atomic(self.path / MANIFEST, manifest)
        return manifest


def read_manifest(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    file = path / MANIFEST
    if not path.is_dir():
        raise CacheError(f"{path}: no cache here (not a directory); build one with `distill cache build`")
    if not file.exists():
        raise CacheError(f"{path}: no {MANIFEST}; the cache is missing or its build did not finish "
                         "(`distill cache build` builds it, or finishes an interrupted build)")
    try:
        manifest = json.loads(file.read_bytes().decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CacheError(f"{file}: not valid JSON ({' '.join(str(e).split())}); the manifest is damaged, rebuild "
                         "the cache") from None
    if not isinstance(manifest, dict):
        raise CacheError(f"{file}: not a {FORMAT} manifest (a JSON {type(manifest).__name__}); rebuild the cache")
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise CacheError(f"{file}: not a {FORMAT} v{VERSION} manifest (format {manifest.get('format')!r}, "
                         f"version {manifest.get('version')!r})")
    if SELF_SUM in manifest and manifest[SELF_SUM] != _manifest_digest(manifest):
        raise CacheError(f"{file}: checksum mismatch ({SELF_SUM} differs from the manifest's content): the manifest "
                         "is corrupted; rebuild the cache")
    try:
        _check_manifest(manifest)
    except (KeyError, TypeError, ValueError) as e:
        raise CacheError(f"{file}: malformed manifest ({type(e).__name__}: {' '.join(str(e).split())}); rebuild "
                         "the cache") from None
    return manifest


def _check_manifest(m: dict[str, Any]) -> None:
    """The fields every reader uses, with their types (a manifest without its own checksum, or edited by hand)."""
    n, views, size = int(m["num_examples"]), int(m["views"]), int(m["shard_size"])
    if n <= 0 or views <= 0 or size <= 0:
        raise ValueError("num_examples, views and shard_size must be positive")
    tensors = m["tensors"]
    for t in tensors.values():
        TensorSpec(tuple(int(d) for d in t["shape"]), str(t["dtype"]))
    shards = m["shards"]
    if len(shards) != -(-n // size):
        raise ValueError(f"{len(shards)} shards for {n} examples in shards of {size}")
    for i, shard in enumerate(shards):
        if int(shard["start"]) != i * size or int(shard["stop"]) != min((i + 1) * size, n):
            raise ValueError(f"shard {i} covers [{shard['start']}, {shard['stop']})")
        if set(shard["files"]) != set(tensors):
            raise ValueError(f"shard {i} has files for {sorted(shard['files'])}, not {sorted(tensors)}")
        for f in shard["files"].values():
            name = f["file"]
            if not isinstance(name, str) or "/" in name or "\\" in name or name.startswith("."):
                raise ValueError(f"shard {i}: bad file name {name!r}")
            int(f["bytes"])
            str(f["sha256"])
    for f in m.get("extras", {}).values():
        name = f["file"]
        if not isinstance(name, str) or "/" in name or "\\" in name or name.startswith("."):
            raise ValueError(f"bad extra file name {name!r}")
        TensorSpec(tuple(int(d) for d in f["shape"]), str(f["dtype"]))
        int(f["bytes"])
        str(f["sha256"])
    if not isinstance(m["fingerprint"], dict) or not isinstance(m["meta"], dict):
        raise TypeError("fingerprint and meta must be objects")


def describe_mismatch(expected: Mapping[str, Any], found: Mapping[str, Any]) -> list[str]:
    """Human-readable differences between two fingerprints (nested dicts compared key by key)."""
    out = []
    for key in sorted(set(expected) | set(found)):
        e, f = expected.get(key), found.get(key)
        if e == f:
            continue
        if isinstance(e, dict) and isinstance(f, dict):
            out += [f"{key}.{d}" for d in describe_mismatch(e, f)]
        elif isinstance(e, str) and isinstance(f, str) and len(e) == 64:  # a hash
            out.append(f"{key} (cache {f[:12]}..., expected {e[:12]}...)")
        else:
            out.append(f"{key} (cache {f!r}, expected {e!r})")
    return out


class TensorStore:
    """A verified store opened for reading.

    ``in_memory``: load every shard into RAM after verification (fast gathers; the default when the store is at
    most ``memory_limit`` bytes), else read entries from memory-mapped shards on each :meth:`get`.
    """

    def __init__(self, path: Path, manifest: dict[str, Any], in_memory: bool):
        self.path = path
        self.manifest = manifest
        self.num_examples = int(manifest["num_examples"])
        self.views = int(manifest["views"])
        self.shard_size = int(manifest["shard_size"])
        self.specs = {n: TensorSpec(tuple(t["shape"]), t["dtype"]) for n, t in manifest["tensors"].items()}
        self.in_memory = in_memory
        shards = manifest["shards"]
        self._maps = [{n: load_npy(path / s["files"][n]["file"], mmap_mode="r") for n in self.specs} for s in shards]
        for s, maps in zip(shards, self._maps):
            for n, arr in maps.items():
                want = (s["stop"] - s["start"], self.views, *self.specs[n].shape)
                if arr.shape != want or arr.dtype != _NUMPY[self.specs[n].dtype]:
                    raise CacheError(f"{path / s['files'][n]['file']}: holds {arr.dtype}{list(arr.shape)}, the "
                                     f"manifest says {self.specs[n].dtype}{list(want)}")
        self._full: dict[str, torch.Tensor] = {}
        if in_memory:
            for n, spec in self.specs.items():
                self._full[n] = torch.cat([_to_torch(np.array(m[n]), spec.dtype) for m in self._maps])
            self._maps = []

    @classmethod
    def open(cls, path: str | Path, expected: Mapping[str, Any] | None = None, verify: bool = True,
             in_memory: bool | None = None, memory_limit: int = 2 << 30) -> TensorStore:
        """Open and check a store. ``expected``: the fingerprint the caller needs (compared key by key);
        ``verify``: check every shard's sha256 (sizes are always checked)."""
        path = Path(path)
        manifest = read_manifest(path)
        if expected is not None:
            diff = describe_mismatch(dict(expected), manifest.get("fingerprint", {}))
            if diff:
                raise CacheError(f"{path}: stale cache, built for something else: {'; '.join(diff)}. Rebuild it "
                                 "(`distill cache build CONFIG --force`) or point teacher.cache.path elsewhere")
        total = 0
        files = [(name, f) for shard in manifest["shards"] for name, f in shard["files"].items()]
        files += [(f"extra {name}", f) for name, f in manifest.get("extras", {}).items()]
        for name, f in files:
            file = path / f["file"]
            if not file.exists():
                raise CacheError(f"{file}: shard file of {name!r} is missing; rebuild the cache")
            size = file.stat().st_size
            if size != f["bytes"]:
                raise CacheError(f"{file}: truncated or overwritten shard: {size} bytes, the manifest says "
                                 f"{f['bytes']}; rebuild the cache")
            if verify and sha256_file(file) != f["sha256"]:
                raise CacheError(f"{file}: checksum mismatch (sha256 differs from the manifest): the shard is "
                                 "corrupted; rebuild the cache")
            total += size
        if in_memory is None:
            in_memory = total <= memory_limit
        return cls(path, manifest, in_memory)

    @property
    def nbytes(self) -> int:
        return (sum(f["bytes"] for s in self.manifest["shards"] for f in s["files"].values())
                + sum(f["bytes"] for f in self.manifest.get("extras", {}).values()))

    @property
    def extras(self) -> list[str]:
        """The names of the tensors stored once per store."""
        return list(self.manifest.get("extras", {}))

    def extra(self, name: str) -> torch.Tensor:
        """A tensor stored once per store (verified on opening with the shards), in its stored dtype."""
        info = self.manifest.get("extras", {}).get(name)
        if info is None:
            raise CacheError(f"{self.path}: no stored {name!r} (stored once: {self.extras or 'none'})")
        arr = load_npy(self.path / info["file"])
        want = tuple(info["shape"])
        if arr.shape != want or arr.dtype != _NUMPY[info["dtype"]]:
            raise CacheError(f"{self.path / info['file']}: holds {arr.dtype}{list(arr.shape)}, the manifest says "
                             f"{info['dtype']}{list(want)}")
        return _to_torch(arr, info["dtype"])

    def get(self, indices: torch.Tensor, views: torch.Tensor | int = 0,
            names: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """Entries of examples ``indices`` (N,) at ``views`` (N,) or one view for all; tensors in stored dtype."""
        idx = torch.as_tensor(indices).long().cpu()
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.num_examples):
            raise CacheError(f"{self.path}: example index out of range [0, {self.num_examples}) "
                             f"(got {int(idx.min())}..{int(idx.max())}); is this the dataset the cache was built on?")
        v = torch.as_tensor(views).long().cpu().expand(idx.shape)
        if v.numel() and (int(v.min()) < 0 or int(v.max()) >= self.views):
            raise CacheError(f"{self.path}: view out of range [0, {self.views})")
        names = list(self.specs) if names is None else list(names)
        if self.in_memory:
            return {n: self._full[n][idx, v] for n in names}
        out = {}
        idx_np, v_np = idx.numpy(), v.numpy()
        shard, row = np.divmod(idx_np, self.shard_size)
        for n in names:
            spec = self.specs[n]
            buf = np.empty((len(idx_np), *spec.shape), dtype=_NUMPY[spec.dtype])
            for s in np.unique(shard):
                sel = shard == s
                buf[sel] = self._maps[s][n][row[sel], v_np[sel]]
            out[n] = _to_torch(buf, spec.dtype)
        return out
