"""A teacher cache: the teacher's outputs computed once, stored on disk, served by example index.

:func:`build_teacher_cache` runs a teacher over a training set and stores, per example, either its full
logits, its top-k log-probabilities (served as :class:`~distill.core.topk.TopKLogits`, whose divergences keep
the tail mass) or, for a language model (``hidden``), its final hidden states with its output head stored once
(served as :class:`~distill.core.hidden.HiddenStates`: the chunked losses recompute the exact dense logits a few
hundred tokens at a time, at H instead of V values per token), plus any requested features.
:class:`TeacherCache` is a teacher source (``source(batch, task, taps) -> ModelOutput``) that looks the outputs up
by ``batch.indices`` instead of running the teacher.

Random augmentation (the FKD idea, Shen & Xing, ECCV 2022): the build draws K augmentation parameter sets per
example from a seed (a replay) and stores the teacher's output on each of the K views. In training the cache is
also the task's augmentation-parameter source (:meth:`TeacherCache.augment_params`): in epoch ``e`` example ``i``
is shown view ``(offset_i + e) mod K`` (``offset_i`` drawn once from the cache seed), so over K epochs every
stored view is used once, the choice depends only on (seed, epoch, index) and a resumed run replays it exactly.

The cache is keyed by a fingerprint of the teacher's weights, the training data and the transform (task,
normalisation, augmentation, K, seed, what is stored); a cache built for anything else is refused, naming what
differs. As a last guard each entry also stores two sums of the input the teacher saw, checked against every
batch served, so a batch from another split, another view or transformed by a method (mixup) is refused rather
than matched with the wrong teacher output.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from distill.cache.settings import CacheSettings
from distill.cache.store import (
    CacheError,
    TensorSpec,
    TensorStore,
    TensorStoreWriter,
    _write_json_atomic,
    read_manifest,
)
from distill.core.batch import Batch
from distill.core.hidden import HiddenStates
from distill.core.outputs import ModelOutput
from distill.core.teachers import EnsembleTeacher, FrozenTeacher
from distill.core.topk import TopKLogits

__all__ = ["CacheError", "CacheSettings", "TeacherCache", "build_teacher_cache", "cache_fingerprint",
           "data_fingerprint", "ensure_teacher_cache", "teacher_fingerprint"]

FEATURE_PREFIX = "feature:"
#: how far an unfinished build got (removed when the manifest is written)
PROGRESS = "build_progress.json"


# -- fingerprints ----------------------------------------------------------------------------------------------
def _update_tensor(h: Any, t: torch.Tensor | np.ndarray) -> None:
    if isinstance(t, torch.Tensor):
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        if t.dtype == torch.bfloat16:
            t = t.view(torch.int16)
        h.update(t.numpy().tobytes() if t.numel() else b"")
    else:
        a = np.ascontiguousarray(t)
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(a.tobytes())


def _state_hash(h: Any, model: nn.Module) -> None:
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        _update_tensor(h, t)


def teacher_fingerprint(teacher: Any) -> str:
    """sha256 of the teacher's weights and buffers (an ``nn.Module``, a FrozenTeacher or an EnsembleTeacher; for a
    :class:`TeacherCache`, the fingerprint of the teacher it was built from)."""
    if isinstance(teacher, TeacherCache):  # deriving a cache (top-k, fp16) from a full one: the same teacher
        return str(teacher.store.manifest["fingerprint"]["teacher"])
    h = hashlib.sha256()
    if isinstance(teacher, nn.Module):
        _state_hash(h, teacher)
    elif isinstance(teacher, FrozenTeacher):
        _state_hash(h, teacher.model)
    elif isinstance(teacher, EnsembleTeacher):
        h.update(f"ensemble:{teacher.reduce}".encode())
        for m in teacher.members:
            _state_hash(h, m.model)
    elif callable(getattr(teacher, "fingerprint_parts", None)):  # a mixture: how it combines, then each member
        label, members = teacher.fingerprint_parts()
        h.update(label.encode())
        for m in members:
            h.update(teacher_fingerprint(m).encode())
    elif isinstance(getattr(teacher, "model", None), nn.Module):  # other live sources of one frozen model
        _state_hash(h, teacher.model)
    elif callable(getattr(teacher, "fingerprint", None)):  # a source without weights here (a served teacher)
        h.update(str(teacher.fingerprint()).encode())
    else:
        raise TypeError(f"cannot fingerprint a teacher of type {type(teacher).__name__}; pass its nn.Module")
    return h.hexdigest()


def data_fingerprint(data: Any) -> str:
    """sha256 of a dataset's content: its tensors and arrays, numbers and lists of strings (class names),
    walked through dataclass fields, dicts and lists. Plain string fields (such as a ``source`` path) are
    skipped, so moving the data files does not invalidate a cache."""
    h = hashlib.sha256()

    def walk(x: Any, key: str) -> None:
        if isinstance(x, (torch.Tensor, np.ndarray)):
            h.update(key.encode())
            _update_tensor(h, x)
        elif is_dataclass(x) and not isinstance(x, type):
            for f in fields(x):
                walk(getattr(x, f.name), f"{key}.{f.name}")
        elif isinstance(x, Mapping):
            for k in sorted(x, key=str):
                walk(x[k], f"{key}.{k}")
        elif isinstance(x, (list, tuple)):
            if all(isinstance(v, str) for v in x):
                h.update(f"{key}={list(x)!r}".encode())
            else:
                for i, v in enumerate(x):
                    walk(v, f"{key}[{i}]")
        elif isinstance(x, (int, float, bool)) or x is None:
            h.update(f"{key}={x!r}".encode())

    walk(data, "data")
    return h.hexdigest()


def task_transform(task: Any) -> dict[str, Any]:
    """The task's description of how it turns stored data into model inputs (``task.describe()``)."""
    describe = getattr(task, "describe", None)
    return dict(describe()) if callable(describe) else {"task": type(task).__name__}


def cache_fingerprint(teacher: Any, task: Any, data: Any, settings: CacheSettings) -> dict[str, Any]:
    """What a cache must match to be used: teacher weights, data, transform and stored settings."""
    return {"teacher": teacher_fingerprint(teacher), "data": data_fingerprint(data),
            "transform": task_transform(task), "stored": settings.as_dict()}


# -- build -----------------------------------------------------------------------------------------------------
def guarded_inputs(task: Any, batch: Batch) -> Any:
    """What the input guard compares: ``task.guard_inputs(batch)`` where the task defines it (a graph task: the
    node ids), else the batch's inputs (images, token ids, feature rows)."""
    fn = getattr(task, "guard_inputs", None)
    return fn(batch) if callable(fn) else batch.inputs


def _leaf_stats(x: torch.Tensor) -> torch.Tensor:
    x = x.detach().reshape(x.shape[0], -1).double()
    return torch.stack([x.sum(1), (x * x).sum(1)], dim=1)


def _input_stats(inputs: Any, n: int) -> torch.Tensor | None:
    """(n, 2) float64 sums of x and x^2 per example over the inputs a teacher saw: a float tensor (images,
    features), an integer tensor (token or node ids; the sums are exact), or a mapping of such tensors summed over
    its entries (``input_ids`` with its ``attention_mask``; an entry with k rows per example, such as the documents
    of a ranking group, counts its k rows for the example). None when there is nothing per-example to compare."""
    leaves = inputs.values() if isinstance(inputs, Mapping) else [inputs]
    stats = []
    for v in leaves:
        if not isinstance(v, torch.Tensor) or v.dim() == 0 or v.dtype == torch.bool or v.is_complex():
            continue
        if n and v.shape[0] % n == 0 and v.numel():
            stats.append(_leaf_stats(v.reshape(n, -1)))
    return torch.stack(stats).sum(0) if stats else None


def _row_width(inputs: Any, n: int) -> int:
    leaves = inputs.values() if isinstance(inputs, Mapping) else [inputs]
    return max(sum(int(v.numel()) // max(n, 1) for v in leaves if isinstance(v, torch.Tensor)), 1)


def cache_index(task: Any, batch: Batch) -> torch.Tensor | None:
    """The rows of the cache a batch reads: ``task.cache_index(batch)`` where the task defines it (a graph task
    whose ``batch.indices`` are node ids), else ``batch.indices`` (positions in the training set)."""
    fn = getattr(task, "cache_index", None)
    return fn(batch) if callable(fn) else batch.indices


def _replay_generator(seed: int, salt: int) -> torch.Generator:
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + salt) % (2**63 - 1))


def _as_source(teacher: Any) -> Any:
    return FrozenTeacher(teacher) if isinstance(teacher, nn.Module) else teacher


@torch.no_grad()
def build_teacher_cache(path: str | Path, teacher: Any, task: Any, data: Any, settings: CacheSettings | None = None,
                        *, batch_size: int = 256, shard_size: int = 8192, device: str | torch.device = "cpu",
                        log: Callable[[str], None] | None = None, resume: bool = True,
                        checkpoint_seconds: float = 60.0) -> dict[str, Any]:
    """Run ``teacher`` (an ``nn.Module`` or a teacher source) over ``data`` and write a cache at ``path``.

    ``teacher`` may itself be a :class:`TeacherCache` built with the same augmentation replay (same seed and views),
    to derive a top-k or half-precision cache from a full one without running the teacher again.
    Without augmentation (``task.augment`` is None) one view per example is stored: the teacher's output on the
    evaluation-style input. With augmentation, ``settings.views`` parameter sets per example are drawn from
    ``settings.seed`` and the teacher is run on each view (the task applies parameters preset in
    ``batch.meta["augment"]``). Returns the manifest.

    Nothing is lost on a crash: every ``checkpoint_seconds`` (and after each view) the shards are flushed and
    ``build_progress.json`` records how far the build got, under a key of the cache's fingerprint and the build's
    batch and shard sizes. A build started again on the folder with the same key (``resume``, the default) goes on
    from there and writes the same files an uninterrupted build writes; any other folder content is started afresh.
    """
    from distill.train.progress import Progress

    settings = settings if settings is not None else CacheSettings()
    start_time = time.perf_counter()
    source = _as_source(teacher)
    source.to(device)
    n = task.num_examples(data)
    augment = getattr(task, "augment", None)
    k_views = settings.views
    if augment is None and k_views > 1:
        raise ValueError(f"views = {k_views} needs a task with random augmentation; this task does not augment")
    replay = None
    if augment is not None:
        replay = augment.sample(n * k_views, _replay_generator(settings.seed, 0xA06)).reshape(n, k_views, -1)
    taps = list(settings.features)
    fingerprint = cache_fingerprint(teacher, task, data, settings)
    key = hashlib.sha256(json.dumps([fingerprint, batch_size, shard_size], sort_keys=True).encode()).hexdigest()
    progress_file = Path(path) / PROGRESS
    writer: TensorStoreWriter | None = None
    num_classes = None
    head: HiddenStates | None = None  # hidden: the teacher's output head, stored once
    start_view, start_lo, seconds_before = 0, 0, 0.0
    state = _read_progress(progress_file) if resume else None
    if state is not None and state.get("key") == key:
        try:
            specs = {name: TensorSpec(tuple(shape), dtype) for name, shape, dtype in state["specs"]}
            writer = TensorStoreWriter(path, n, k_views, specs, shard_size=shard_size, reopen=True)
            start_view, start_lo = int(state["view"]), int(state["next"])
            writer.mark_filled(start_view, start_lo)
            num_classes, seconds_before = state.get("num_classes"), float(state.get("seconds", 0.0))
            if log:
                log(f"cache build resumed at view {start_view + 1}/{k_views}, example {start_lo}/{n}")
        except (ValueError, KeyError, TypeError, OSError):
            writer, start_view, start_lo = None, 0, 0
    if writer is None:
        progress_file.unlink(missing_ok=True)
    last_save = time.perf_counter()
    with Progress("cache build", n * k_views) as bar:
        bar.update(start_view * n + start_lo)
        for view in range(start_view, k_views):
            for lo in range(start_lo if view == start_view else 0, n, batch_size):
                idx = torch.arange(lo, min(lo + batch_size, n))
                raw = task.fetch(data, idx)
                if replay is not None:
                    raw.meta["augment"] = replay[idx, view]
                    raw.meta["view"] = torch.full((len(idx),), view, dtype=torch.long)
                batch = task.prepare(raw.to(device), train=replay is not None, generator=None)
                out = source(batch, task, taps)
                values: dict[str, torch.Tensor] = {}
                if out.logits is None and out.hidden is None and out.topk is not None:  # a source of top-k only
                    if settings.topk is None or settings.topk > out.topk.k:
                        raise CacheError(f"the teacher gives only its top-{out.topk.k} log-probabilities: set "
                                         f"teacher.cache.topk (at most {out.topk.k})")
                    values["topk_indices"] = out.topk.indices[..., :settings.topk]
                    values["topk_logprobs"] = out.topk.logprobs[..., :settings.topk]
                    num_classes = out.topk.num_classes
                elif settings.hidden:
                    if out.hidden is None:
                        raise CacheError(
                            "teacher.cache.hidden: the teacher gave logits, not its final hidden states and output "
                            "head (the task returns them with data.chunk_tokens; a model whose logits are not its head "
                            "applied to its hidden states, with the logit scale and soft-cap its config names, cannot "
                            "be stored this way): drop teacher.cache.hidden")
                    values["hidden"] = out.hidden.hidden.float()
                    head = head if head is not None else out.hidden
                    num_classes = out.hidden.vocab_size
                elif out.hidden is not None and settings.topk is not None:  # hidden states and head: top-k by chunks
                    top = out.hidden.topk(settings.topk)
                    values["topk_indices"], values["topk_logprobs"] = top.indices, top.logprobs
                    num_classes = top.num_classes
                else:
                    logits = (out.logits if out.hidden is None else out.hidden.dense()).float()
                    if settings.topk is None:
                        values["logits"] = logits
                    else:
                        top = TopKLogits.from_logits(logits, settings.topk)
                        values["topk_indices"], values["topk_logprobs"] = top.indices, top.logprobs
                    num_classes = int(logits.shape[-1])
                for name in taps:
                    values[FEATURE_PREFIX + name] = out.feature(name).float()
                stats = _input_stats(guarded_inputs(task, batch), len(idx))
                if stats is not None:
                    values["input_stats"] = stats
                if replay is not None:
                    values["augment"] = replay[idx, view]
                if writer is None:
                    specs = {}
                    for name, v in values.items():
                        if name == "topk_indices":
                            dtype = "int16" if num_classes <= 32767 else "int32"
                        elif name == "input_stats":
                            dtype = "float64"
                        elif name == "augment":
                            dtype = "int32"
                        else:
                            dtype = settings.dtype
                        specs[name] = TensorSpec(tuple(v.shape[1:]), dtype)
                    writer = TensorStoreWriter(path, n, k_views, specs, shard_size=shard_size)
                writer.write(idx, view, values)
                bar.update(len(idx))
                end = idx[-1].item() + 1 >= n
                if end or time.perf_counter() - last_save >= checkpoint_seconds:
                    writer.flush()
                    _write_json_atomic(progress_file, {
                        "key": key, "view": view + 1 if end else view, "next": 0 if end else lo + len(idx),
                        "specs": [[name, list(spec.shape), spec.dtype] for name, spec in writer.specs.items()],
                        "num_classes": num_classes, "seconds": seconds_before + time.perf_counter() - start_time})
                    last_save = time.perf_counter()
            if log:
                log(f"view {view + 1}/{k_views} done ({time.perf_counter() - start_time:.1f} s)")
    assert writer is not None
    if settings.hidden and head is None:  # every batch was written before the interruption: the head, once more
        head = source(task.prepare(task.fetch(data, torch.arange(min(batch_size, n))).to(device), train=False,
                                   generator=None), task, taps).hidden
    kind = "hidden" if settings.hidden else "full" if settings.topk is None else "topk"
    meta = {"kind": kind, "k": settings.topk, "num_classes": num_classes,
            "features": taps, "views": k_views, "augmented": replay is not None, "seed": settings.seed,
            "build_seconds": round(seconds_before + time.perf_counter() - start_time, 3)}
    extras: dict[str, torch.Tensor] = {}
    if head is not None:  # the head as the task applies it (in float32: exact for fp32/bf16/fp16 weights)
        extras["head_weight"] = head.weight.detach().float().cpu()
        if head.bias is not None:
            extras["head_bias"] = head.bias.detach().float().cpu()
        meta["hidden_size"] = int(head.weight.shape[1])
        meta["logit_scale"], meta["logit_softcap"] = float(head.scale), head.softcap
    manifest = writer.close(fingerprint, meta, extras)
    progress_file.unlink(missing_ok=True)
    return manifest


def _read_progress(path: Path) -> dict[str, Any] | None:
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def _distributed() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def ensure_teacher_cache(path: str | Path, teacher: Any, task: Any, data: Any, settings: CacheSettings,
                         build: str = "if_missing", verify: bool = True, **build_kwargs: Any) -> TeacherCache:
    """Open the cache at ``path`` for this teacher, data and transform, building it first when ``build`` is
    ``"if_missing"`` and there is no finished cache (an unfinished build is resumed: :func:`build_teacher_cache`;
    ``"always"`` rebuilds from scratch, ``"never"`` only opens). A stale or
    damaged cache is refused, never silently rebuilt. Under ``torch.distributed`` rank 0 builds while the other
    ranks wait at a barrier; then every rank opens and verifies the cache."""
    if build not in ("never", "if_missing", "always"):
        raise ValueError(f"build must be 'never', 'if_missing' or 'always', got {build!r}")
    rank, world = _distributed()
    path = Path(path)
    error: str | None = None
    if rank == 0:
        try:
            missing = not (path / "manifest.json").exists()
            if build == "always" or (build == "if_missing" and missing):  # "always": from scratch, no resume
                kwargs = {"resume": build != "always", **build_kwargs}
                build_teacher_cache(path, teacher, task, data, settings, **kwargs)
        except Exception as e:  # reach the barrier even when the build fails, then fail on every rank
            error = f"{type(e).__name__}: {e}"
            if world == 1:
                raise
    if world > 1:
        flag = [error]
        torch.distributed.broadcast_object_list(flag, src=0)
        torch.distributed.barrier()
        if flag[0] is not None:
            raise CacheError(f"building the teacher cache on rank 0 failed: {flag[0]}")
    expected = cache_fingerprint(teacher, task, data, settings)
    return TeacherCache(path, expected=expected, verify=verify)


# -- serve -----------------------------------------------------------------------------------------------------
@dataclass
class _Device:
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))


class TeacherCache:
    """A teacher source that serves stored teacher outputs by ``batch.indices`` (and the view shown).

    Args:
        path: the cache directory.
        expected: the fingerprint the run needs (see :func:`cache_fingerprint`); None skips the staleness check
            (checksums are still verified).
        verify: check every shard's sha256 when opening (sizes are always checked).
        in_memory: load the shards into RAM (default: when they total at most 2 GiB), else read memory-mapped.
        check_inputs: compare each served batch's inputs with the sums stored at build time.
    """

    def __init__(self, path: str | Path, expected: Mapping[str, Any] | None = None, verify: bool = True,
                 in_memory: bool | None = None, check_inputs: bool = True):
        self.path = Path(path)
        self.store = TensorStore.open(self.path, expected=expected, verify=verify, in_memory=in_memory)
        meta = self.store.manifest["meta"]
        self.meta = meta
        try:
            self.kind: str = str(meta["kind"])
            self.num_classes: int = int(meta["num_classes"])
            self.views: int = int(meta["views"])
            self.augmented: bool = bool(meta["augmented"])
            self.features: list[str] = [str(f) for f in meta["features"]]
            int(meta["seed"])
        except (KeyError, TypeError, ValueError) as e:
            raise CacheError(f"{self.path / 'manifest.json'}: malformed manifest meta ({type(e).__name__}: {e}); "
                             "rebuild the cache") from None
        if self.kind not in ("full", "topk", "hidden") or self.views != self.store.views:
            raise CacheError(f"{self.path / 'manifest.json'}: malformed manifest meta (kind {self.kind!r}, "
                             f"{self.views} views); rebuild the cache")
        self.check_inputs = check_inputs
        self._head: dict[torch.device, tuple[torch.Tensor, torch.Tensor | None]] = {}
        if self.kind == "hidden":
            weight = self.store.extra("head_weight")
            bias = self.store.extra("head_bias") if "head_bias" in self.store.extras else None
            if "hidden" not in self.store.specs or weight.dim() != 2 or \
                    weight.shape[1] != self.store.specs["hidden"].shape[-1]:
                raise CacheError(f"{self.path / 'manifest.json'}: malformed hidden-state cache (head "
                                 f"{list(weight.shape)}, tensors {sorted(self.store.specs)}); rebuild the cache")
            self._head[torch.device("cpu")] = (weight, bias)
        self._dev = _Device()
        offsets = torch.randint(0, self.views, (self.store.num_examples,),
                                generator=_replay_generator(int(meta["seed"]), 0x0FF5E7))
        self._view_offset = offsets

    def __repr__(self) -> str:
        what = {"full": "full logits", "hidden": "hidden states + head"}.get(self.kind, f"top-{self.meta['k']}")
        return (f"TeacherCache({str(self.path)!r}, {what}, {self.store.num_examples} examples x {self.views} "
                f"view(s), features={self.features})")

    def identity(self) -> str:
        """What the cache holds, as one string (sha256 of its fingerprint: teacher, data, transform and stored
        settings, not where it lies or how long it took to build): a run's checkpoint
        records it, so resuming against a cache rebuilt with other settings or for another teacher is refused."""
        blob = json.dumps(self.store.manifest.get("fingerprint", {}), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def to(self, *args: object, **kwargs: object) -> TeacherCache:
        """Serve tensors on the given device (dtype and memory-format arguments are ignored)."""
        for a in (*args, kwargs.get("device")):
            if isinstance(a, (str, torch.device)):
                self._dev.device = torch.device(a)
        return self

    # the task's augmentation-parameter source
    def view_of(self, indices: torch.Tensor, epoch: int) -> torch.Tensor:
        """The view each example shows in ``epoch``: ``(offset_i + epoch) mod K``."""
        idx = torch.as_tensor(indices).long().cpu()
        return (self._view_offset[idx] + int(epoch)) % self.views

    def augment_params(self, indices: torch.Tensor, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The stored augmentation parameters of the view each example shows in ``epoch``, and the views."""
        if not self.augmented:
            raise CacheError(f"{self.path}: the cache was built without augmentation, so it holds no augmentation "
                             "parameters to replay")
        views = self.view_of(indices, epoch)
        params = self.store.get(indices, views, ["augment"])["augment"].long()
        return params, views

    def _views_for(self, batch: Batch) -> torch.Tensor | int:
        if not self.augmented:
            if "augment" in batch.meta:
                raise CacheError(f"{self.path}: the batch was randomly augmented, but the cache holds teacher outputs "
                                 "of unaugmented inputs; build it with the run's augmentation (teacher.cache.views) "
                                 "or turn augmentation off")
            return 0
        views = batch.meta.get("view")
        if views is None:
            raise CacheError(f"{self.path}: the cache holds teacher outputs of {self.views} augmented view(s) per "
                             "example, but the batch does not say which view it shows (an unaugmented or freshly "
                             "augmented batch); the task must draw its augmentation from the cache "
                             "(task.augment_source = cache)")
        return torch.as_tensor(views).long().cpu()

    @torch.no_grad()
    def __call__(self, batch: Batch, task: Any, taps: Sequence[str] = ()) -> ModelOutput:
        if batch.meta.get("generated"):
            raise CacheError(f"{self.path}: a teacher cache serves only the training rows it was built on; this batch "
                             "was generated during training (on-policy): use a live teacher for it")
        index = cache_index(task, batch)
        if index is None:
            raise CacheError("a teacher cache looks outputs up by example index, but the batch has no indices")
        missing = [t for t in taps if t not in self.features]
        if missing:
            raise CacheError(f"{self.path}: features {missing} were not stored (stored: {self.features or 'none'}); "
                             "rebuild with them in teacher.cache.features")
        views = self._views_for(batch)
        names = {"topk": ["topk_indices", "topk_logprobs"], "hidden": ["hidden"]}.get(self.kind, ["logits"])
        names += [FEATURE_PREFIX + t for t in taps]
        guarded = guarded_inputs(task, batch)
        stats = _input_stats(guarded, len(index)) if self.check_inputs else None
        if stats is not None and "input_stats" in self.store.specs:
            names.append("input_stats")
        if self.augmented:
            names.append("augment")
        got = self.store.get(index, views, names)
        if self.augmented and "augment" in batch.meta:
            shown = torch.as_tensor(batch.meta["augment"]).cpu().to(got["augment"].dtype)
            if not torch.equal(shown, got["augment"]):
                raise CacheError(f"{self.path}: the batch's augmentation parameters differ from the stored ones of "
                                 "the views it claims to show")
        if "input_stats" in got:
            self._check_inputs(stats.cpu(), got["input_stats"], index, _row_width(guarded, len(index)))
        dev = self._dev.device
        feats = {t: got[FEATURE_PREFIX + t].to(dev, torch.float32, non_blocking=True) for t in taps}
        if self.kind == "topk":
            top = TopKLogits(got["topk_indices"].to(dev, torch.long, non_blocking=True),
                             got["topk_logprobs"].to(dev, torch.float32, non_blocking=True), self.num_classes)
            return ModelOutput(None, feats, top)  # type: ignore[arg-type]
        if self.kind == "hidden":
            return self._hidden_output(got["hidden"].to(dev, torch.float32, non_blocking=True), feats, task)
        return ModelOutput(got["logits"].to(dev, torch.float32, non_blocking=True), feats)

    def head(self, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor | None]:
        """The stored output head (weight (V_model, H), bias or None) on ``device`` (copied there once)."""
        dev = torch.device(device)
        if dev not in self._head:
            w, b = self._head[torch.device("cpu")]
            self._head[dev] = (w.to(dev), None if b is None else b.to(dev))
        return self._head[dev]

    def _hidden_output(self, hidden: torch.Tensor, feats: dict[str, torch.Tensor], task: Any) -> ModelOutput:
        """Stored hidden states served with the head: as :class:`HiddenStates` when the task computes its losses
        in chunks (``task.chunk_tokens``), else as the dense logits they stand for."""
        weight, bias = self.head(hidden.device)
        chunk = getattr(task, "chunk_tokens", None)
        states = HiddenStates(hidden, weight, bias, self.num_classes, int(chunk) if chunk else 256,
                              float(self.meta.get("logit_scale", 1.0)), self.meta.get("logit_softcap"))
        if chunk:
            return ModelOutput(None, feats, hidden=states)  # type: ignore[arg-type]
        return ModelOutput(states.dense(), feats)

    def _check_inputs(self, seen: torch.Tensor, stored: torch.Tensor, indices: torch.Tensor, dim: int) -> None:
        # both are float64 sums of the same float32 values: they agree to ~1e-12 unless the inputs differ
        s1, s2 = seen[:, 0], seen[:, 1]
        t1, t2 = stored[:, 0], stored[:, 1]
        bad = ((s2 - t2).abs() > 1e-6 * (t2.abs() + 1.0)) | ((s1 - t1).abs() > 1e-6 * ((t2.abs() * dim).sqrt() + 1.0))
        if bool(bad.any()):
            i = int(bad.nonzero()[0, 0])
            raise CacheError(f"{self.path}: the inputs of example {int(indices[i])} differ from those the teacher saw "
                             "when the cache was built (another split, another view, or inputs changed by a method "
                             "such as mixup); a cache can only serve the training examples it was built on")

    def info(self) -> dict[str, Any]:
        m = self.store.manifest
        return {"path": str(self.path), "examples": m["num_examples"], "views": m["views"], "meta": m["meta"],
                "tensors": m["tensors"], "bytes": self.store.nbytes, "in_memory": self.store.in_memory,
                "fingerprint": m["fingerprint"]}


def cache_info(path: str | Path) -> dict[str, Any]:
    """The manifest's summary without verifying the shards."""
    m = read_manifest(path)
    nbytes = sum(f["bytes"] for s in m["shards"] for f in s["files"].values())
    return {"path": str(path), "examples": m["num_examples"], "views": m["views"], "shards": len(m["shards"]),
            "bytes": nbytes, "meta": m["meta"], "tensors": m["tensors"], "fingerprint": m["fingerprint"]}
