"""Image datasets in the formats users actually bring, decoded to one uint8 tensor.

Every loader returns an :class:`ImageArrays`: ``images`` (uint8, N x C x H x W), ``labels`` (int64, N), the class
names and a human-readable ``source``. Supported inputs:

* the official CIFAR-10 / CIFAR-100 "python version" pickles (:func:`load_cifar_pickle`), from the extracted folder,
  its parent, or the ``.tar.gz`` archive itself, unpickled with a restricted unpickler that refuses any global
  except numpy's array-reconstruction functions;
* an image folder ``root/<class>/*.png`` or ``root/<split>/<class>/*.png`` (:func:`load_image_folder`);
* a ``.tar`` / ``.tar.gz`` / ``.tgz`` archive holding such a folder, read as a stream (:func:`load_image_tar`);
* a ``.npz`` file of arrays (:func:`load_npz`).

:func:`load_images` picks the right loader from what the path is, and can keep a decoded cache of the slow formats
(image folders and image archives) so that the second load of the same data is a single ``np.load``.

Samples of folder and archive datasets are ordered by (class, path inside the dataset), so the order does not
depend on the file system or the order of the archive's members.
"""

from __future__ import annotations

import hashlib
import inspect
import io
import json
import os
import re
import sys
import tarfile
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from distill.core.batch import IGNORE_INDEX
from distill.core.safe_pickle import NUMPY_ARRAY_GLOBALS, UnsafeFileError, UnsafePickleError, restricted_load
from distill.data.labels import class_name_list, npz_class_key

__all__ = [
    "IMAGE_EXTENSIONS",
    "to_rgb",
    "ImageArrays",
    "UnsafePickleError",
    "load_cifar_pickle",
    "load_image_folder",
    "load_image_tar",
    "load_images",
    "load_npz",
    "upright",
]

#: File name endings (lower case) that the folder and archive loaders treat as images.
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

# Folder names that mark a split; a lone folder with one of these names is never taken for another split.
_SPLIT_NAMES = frozenset({"train", "training", "test", "testing", "val", "valid", "validation", "dev", "eval"})

_CHUNK = 64  # images decoded per thread-pool task: large enough to amortise the task overhead
_CACHE_VERSION = 2  # 2: EXIF orientation applied (caches of version 1 hold photos as stored, unturned)


def _default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


# --------------------------------------------------------------------------------------------------------------
# ImageArrays
# --------------------------------------------------------------------------------------------------------------


#: the label of an unlabelled example (PyTorch's default ``ignore_index``, so cross-entropy skips it)
UNLABELED = IGNORE_INDEX


@dataclass
class ImageArrays:
    """A labelled image dataset held in memory.

    Attributes:
        images: uint8 tensor of shape (N, C, H, W), contiguous (made contiguous if it is not).
        labels: int64 tensor of shape (N,), each in ``[0, len(classes))``, or ``UNLABELED`` (-100).
        classes: class names; ``classes[k]`` is the name of label ``k``.
        source: human-readable description of where the data came from.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    source: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.images, torch.Tensor):
            raise TypeError(f"ImageArrays.images must be a torch.Tensor, got {type(self.images).__name__}")
        if not isinstance(self.labels, torch.Tensor):
            raise TypeError(f"ImageArrays.labels must be a torch.Tensor, got {type(self.labels).__name__}")
        if self.images.dtype != torch.uint8:
            raise TypeError(f"ImageArrays.images must be uint8 (pixel values 0-255), got {self.images.dtype}")
        if self.images.ndim != 4:
            raise ValueError(f"ImageArrays.images must have shape N x C x H x W, got shape {tuple(self.images.shape)}")
        if self.labels.dtype != torch.int64:
            raise TypeError(f"ImageArrays.labels must be int64, got {self.labels.dtype}")
        if self.labels.ndim != 1 or self.labels.shape[0] != self.images.shape[0]:
            raise ValueError(
                f"ImageArrays.labels must have shape ({self.images.shape[0]},) to match the images, "
                f"got {tuple(self.labels.shape)}"
            )
        if isinstance(self.classes, str) or not isinstance(self.classes, Sequence):
            raise TypeError("ImageArrays.classes must be a list of class names")
        self.classes = list(self.classes)
        bad = [c for c in self.classes if not isinstance(c, str)]
        if bad:
            raise TypeError(f"ImageArrays.classes must hold strings, got {bad[0]!r}")
        if len(set(self.classes)) != len(self.classes):
            dup = sorted({c for c in self.classes if self.classes.count(c) > 1})
            raise ValueError(f"ImageArrays.classes has duplicate names: {dup}")
        labelled = self.labels[self.labels != UNLABELED]
        if labelled.numel():
            lo, hi = int(labelled.min()), int(labelled.max())
            if lo < 0 or hi >= len(self.classes):
                raise ValueError(
                    f"ImageArrays.labels must lie in [0, {len(self.classes)}) for {len(self.classes)} classes "
                    f"(or be {UNLABELED} for an unlabelled image), got values from {lo} to {hi}"
                )
        self.images = self.images.contiguous()
        self.labels = self.labels.contiguous()

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __repr__(self) -> str:
        n, c, h, w = self.images.shape
        return f"ImageArrays({n} images of {c}x{h}x{w}, {self.num_classes} classes, source={self.source!r})"

    @property
    def num_classes(self) -> int:
        """Number of classes (``len(classes)``), including any class without images."""
        return len(self.classes)

    def subset(self, indices: Sequence[int] | np.ndarray | torch.Tensor) -> ImageArrays:
        """The samples at ``indices`` (a sequence of non-negative ints, or a boolean mask of length N)."""
        idx = torch.as_tensor(np.asarray(indices) if not isinstance(indices, torch.Tensor) else indices)
        if idx.dtype == torch.bool:
            if idx.shape != (len(self),):
                raise ValueError(f"a boolean mask must have shape ({len(self)},), got {tuple(idx.shape)}")
            idx = idx.nonzero().flatten()
        if idx.numel() == 0:
            idx = idx.to(torch.int64)
        if idx.ndim != 1:
            raise ValueError(f"indices must be one-dimensional, got shape {tuple(idx.shape)}")
        if idx.dtype.is_floating_point or idx.dtype.is_complex:
            raise TypeError(f"indices must be integers, got {idx.dtype}")
        idx = idx.to(torch.int64)
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= len(self)):
            raise IndexError(
                f"indices must lie in [0, {len(self)}), got values from {int(idx.min())} to {int(idx.max())}"
            )
        return ImageArrays(
            images=self.images.index_select(0, idx),
            labels=self.labels.index_select(0, idx),
            classes=list(self.classes),
            source=f"{self.source} [subset of {idx.numel()}]",
        )

    def balanced_indices(self, per_class: int, seed: int) -> torch.Tensor:
        """Sorted indices of ``per_class`` samples of every class, drawn at random with ``seed``."""
        if isinstance(per_class, bool) or not isinstance(per_class, int) or per_class < 1:
            raise ValueError(f"per_class must be a positive int, got {per_class!r}")
        gen = torch.Generator().manual_seed(int(seed))
        chosen = []
        for k, name in enumerate(self.classes):
            members = (self.labels == k).nonzero().flatten()
            if members.numel() < per_class:
                raise ValueError(
                    f"class {name!r} (label {k}) has only {members.numel()} images, fewer than per_class={per_class}"
                )
            chosen.append(members[torch.randperm(members.numel(), generator=gen)[:per_class]])
        return torch.cat(chosen).sort().values if chosen else torch.zeros(0, dtype=torch.int64)

    def balanced_subset(self, per_class: int, seed: int) -> ImageArrays:
        """``per_class`` samples of every class, drawn at random with ``seed``; indices kept in sorted order.

        The draw depends only on the labels, ``per_class`` and ``seed``, so it is the same on every run.

        Raises:
            ValueError: if ``per_class`` < 1 or some class has fewer than ``per_class`` samples.
        """
        out = self.subset(self.balanced_indices(per_class, seed))
        out.source = f"{self.source} [balanced: {per_class} per class, seed {seed}]"
        return out

    def split_off(self, per_class: int, seed: int) -> tuple[ImageArrays, ImageArrays]:
        """(held-out ``per_class`` per class, the rest), e.g. a validation split taken from a training set."""
        chosen = self.balanced_indices(per_class, seed)
        rest = torch.ones(len(self), dtype=torch.bool)
        rest[chosen] = False
        return self.subset(chosen), self.subset(rest)

    def hide_labels(self, keep_per_class: int, seed: int) -> ImageArrays:
        """A copy in which only ``keep_per_class`` labels per class are kept and the others are ``UNLABELED``."""
        hidden = torch.ones(len(self), dtype=torch.bool)
        hidden[self.balanced_indices(keep_per_class, seed)] = False
        labels = self.labels.clone()
        labels[hidden] = UNLABELED
        source = f"{self.source} [{keep_per_class} labels per class]"
        return ImageArrays(self.images, labels, list(self.classes), source)

    def save_npz(self, path: str | os.PathLike[str]) -> Path:
        """Write ``images`` (N x C x H x W uint8), ``labels`` (int64) and ``classes`` (str) to an uncompressed .npz.

        The file is written atomically (temporary file, then rename) at exactly ``path``. :func:`load_npz` reads
        it back (for images of at most 4 x 4 pixels pass ``layout="NCHW"`` there, since the layout is ambiguous).
        """
        path = Path(path)
        _atomic_savez(
            path,
            images=self.images.numpy(),
            labels=self.labels.numpy(),
            classes=np.array(self.classes, dtype=np.str_).reshape(len(self.classes)),
        )
        return path


def _atomic_savez(path: Path, **arrays: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


# --------------------------------------------------------------------------------------------------------------
# Restricted unpickling (CIFAR)
# --------------------------------------------------------------------------------------------------------------


# The restricted unpickler lives in distill.core.safe_pickle (shared with the Planetoid reader); CIFAR batches
# need only NUMPY_ARRAY_GLOBALS: they hold dicts, lists, ints, byte strings and numpy arrays.


def _unpickle(f: BinaryIO, what: str) -> dict[str, Any]:
    obj = restricted_load(f, NUMPY_ARRAY_GLOBALS, what, "CIFAR")
    if not isinstance(obj, dict):
        raise UnsafeFileError(what, f"not a CIFAR batch: it holds a {type(obj).__name__}, not a dict")
    return {k.decode("latin-1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


# --------------------------------------------------------------------------------------------------------------
# CIFAR
# --------------------------------------------------------------------------------------------------------------

_CIFAR_LAYOUTS: dict[str, dict[str, Any]] = {
    "cifar-10-batches-py": {
        "name": "CIFAR-10",
        "train": [f"data_batch_{i}" for i in range(1, 6)],
        "test": ["test_batch"],
        "meta": "batches.meta",
    },
    "cifar-100-python": {"name": "CIFAR-100", "train": ["train"], "test": ["test"], "meta": "meta"},
}
_CIFAR_ARCHIVES = {"cifar-10-python.tar.gz": "cifar-10-batches-py", "cifar-100-python.tar.gz": "cifar-100-python"}


def _cifar_folder_kind(folder: Path) -> str | None:
    """Which official CIFAR layout ``folder`` holds (by its files, whatever the folder is called)."""
    if (folder / "batches.meta").is_file() and (
        (folder / "data_batch_1").is_file() or (folder / "test_batch").is_file()
    ):
        return "cifar-10-batches-py"
    if (folder / "meta").is_file() and ((folder / "train").is_file() or (folder / "test").is_file()):
        return "cifar-100-python"
    return None


def _cifar_archive_kind(path: Path) -> str | None:
    """Which official CIFAR layout the tar archive at ``path`` holds, from its first members (cheap)."""
    try:
        with tarfile.open(path, "r|*") as tf:
            for i, member in enumerate(tf):
                top = member.name.lstrip("./").split("/", 1)[0]
                if top in _CIFAR_LAYOUTS:
                    return top
                if i >= 8:
                    break
    except (tarfile.TarError, OSError, EOFError):
        return None
    return None


def _resolve_cifar(root: Path) -> tuple[str, Path, str] | None:
    """(``"dir"`` or ``"tar"``, path, layout key) for a CIFAR folder, its parent, or the official archive."""
    if root.is_file():
        if tarfile.is_tarfile(root):
            kind = _cifar_archive_kind(root)
            if kind is not None:
                return "tar", root, kind
        return None
    if not root.is_dir():
        return None
    kind = _cifar_folder_kind(root)
    if kind is not None:
        return "dir", root, kind
    found: dict[str, tuple[str, Path, str]] = {}
    for archive, key in _CIFAR_ARCHIVES.items():
        if (root / archive).is_file() and _cifar_archive_kind(root / archive) == key:
            found[key] = ("tar", root / archive, key)
    for key in _CIFAR_LAYOUTS:  # an extracted folder wins over the archive of the same dataset
        if (root / key).is_dir() and _cifar_folder_kind(root / key) == key:
            found[key] = ("dir", root / key, key)
    if len(found) > 1:
        raise ValueError(
            f"{root} holds both CIFAR-10 and CIFAR-100; pass the path of one of "
            f"{sorted(str(v[1]) for v in found.values())}"
        )
    return next(iter(found.values()), None)


def _cifar_from_dicts(
    batches: list[dict[str, Any]], meta: dict[str, Any], key: str, label: str, split: str, where: str
) -> ImageArrays:
    name = _CIFAR_LAYOUTS[key]["name"]
    if key == "cifar-10-batches-py":
        label_key, names_key = "labels", "label_names"
    else:
        label_key, names_key = f"{label}_labels", f"{label}_label_names"
    if names_key not in meta:
        raise ValueError(f"{name} meta file in {where} has no {names_key!r} entry (found {sorted(meta)})")
    classes = [c.decode("utf-8") if isinstance(c, bytes) else str(c) for c in meta[names_key]]
    images, labels = [], []
    for i, batch in enumerate(batches):
        what = f"{name} {split} batch {i + 1} in {where}"
        if "data" not in batch or label_key not in batch:
            raise ValueError(f"{what} lacks 'data' or {label_key!r} (found {sorted(batch)})")
        data = batch["data"]
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            shape = getattr(data, "shape", None)
            raise ValueError(f"{what}: 'data' must be an N x 3072 uint8 array, got {type(data).__name__} {shape}")
        lab = np.asarray(batch[label_key], dtype=np.int64)
        if lab.shape != (data.shape[0],):
            raise ValueError(f"{what}: {lab.shape[0] if lab.ndim else 0} labels for {data.shape[0]} images")
        images.append(data.reshape(-1, 3, 32, 32))  # rows are the R, G, B planes, each 32 x 32 row-major
        labels.append(lab)
    return ImageArrays(
        images=torch.from_numpy(np.ascontiguousarray(np.concatenate(images))),
        labels=torch.from_numpy(np.concatenate(labels)),
        classes=classes,
        source=f"{name} {split}{' (' + label + ' labels)' if key == 'cifar-100-python' else ''} from {where}",
    )


def load_cifar_pickle(root: str | os.PathLike[str], split: str = "train", label: str = "fine") -> ImageArrays:
    """Load the official CIFAR-10 or CIFAR-100 "python version".

    Args:
        root: the extracted folder (``cifar-10-batches-py`` or ``cifar-100-python``, recognised by its files),
            its parent folder, or the official archive (``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz``),
            which is read directly without extracting it to disk.
        split: ``"train"`` (CIFAR-10 ``data_batch_1..5``; CIFAR-100 ``train``) or ``"test"``.
        label: CIFAR-100 only: ``"fine"`` (100 classes) or ``"coarse"`` (20 superclasses).

    Only the official file names are unpickled, with an unpickler that refuses every global except numpy's
    array reconstruction (pickles can run code; the official files need nothing else).

    Returns:
        :class:`ImageArrays` with 3 x 32 x 32 images, classes from the meta file in label order.

    Raises:
        FileNotFoundError: ``root`` does not exist.
        ValueError: no CIFAR data at ``root``, bad ``split``/``label``, or malformed files.
        UnsafePickleError: a file asks for a forbidden global.
    """
    root = Path(root)
    if split not in ("train", "test"):
        raise ValueError(f"CIFAR split must be 'train' or 'test', got {split!r}")
    if label not in ("fine", "coarse"):
        raise ValueError(f"CIFAR label must be 'fine' or 'coarse', got {label!r}")
    if not root.exists():
        raise FileNotFoundError(f"no such file or folder: {root}")
    resolved = _resolve_cifar(root)
    if resolved is None:
        raise ValueError(
            f"no CIFAR python-version data at {root}: expected the folder cifar-10-batches-py (batches.meta, "
            "data_batch_1..5, test_batch) or cifar-100-python (meta, train, test), its parent folder, or the "
            "official archive cifar-10-python.tar.gz / cifar-100-python.tar.gz"
        )
    how, path, key = resolved
    layout = _CIFAR_LAYOUTS[key]
    if key == "cifar-10-batches-py" and label == "coarse":
        raise ValueError("label='coarse' exists only for CIFAR-100; CIFAR-10 has one set of labels")
    wanted = [*layout[split], layout["meta"]]
    loaded: dict[str, dict[str, Any]] = {}
    if how == "dir":
        for fname in wanted:
            fpath = path / fname
            if not fpath.is_file():
                raise ValueError(f"{layout['name']} folder {path} lacks the file {fname}")
            with open(fpath, "rb") as f:
                loaded[fname] = _unpickle(f, str(fpath))
    else:
        with tarfile.open(path, "r|*") as tf:
            for member in tf:
                parts = member.name.lstrip("./").split("/")
                if len(parts) == 2 and parts[0] == key and parts[1] in wanted and member.isfile():
                    f = tf.extractfile(member)
                    assert f is not None
                    loaded[parts[1]] = _unpickle(f, f"{path}:{member.name}")
        missing = [n for n in wanted if n not in loaded]
        if missing:
            raise ValueError(f"{layout['name']} archive {path} lacks {', '.join(key + '/' + m for m in missing)}")
    return _cifar_from_dicts([loaded[n] for n in layout[split]], loaded[layout["meta"]], key, label, split, str(path))


# --------------------------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------------------------

_JPEG_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})


_EXIF_ORIENTATION = 0x0112


def upright(im: Any) -> Any:
    """The Pillow image ``im`` turned as its EXIF Orientation tag (0x0112) says, as it is displayed; ``im`` itself
    (same object, same pixels) when it has no such tag or the tag is 1 (already upright).

    Phones and cameras store the sensor's pixels and record how to turn them in this tag; ``Image.open`` does not
    apply it. Every reader of user image files (and masks) in distill goes through this function.
    """
    from PIL import ImageOps

    try:
        orientation = im.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # an unreadable EXIF block: the image as stored, as before
        return im
    if orientation not in range(2, 9):  # 1: upright; anything else is not an orientation
        return im
    return ImageOps.exif_transpose(im)


def to_rgb(im: Any) -> Any:
    """The Pillow image ``im`` as 8-bit RGB: gray, palette and RGBA images converted (alpha dropped, not
    composited; a palette with a transparent entry through RGBA), and 16-bit images (``I;16`` modes: 16-bit PNG
    and TIFF, as microscopes and medical scanners write them) scaled from 0-65535 to 0-255 (``round(v / 257)``)
    rather than clipped, which would turn every value above 255 white. Every reader of user image files goes
    through this function (after :func:`upright`)."""
    from PIL import Image

    if im.mode.startswith("I;16"):
        arr = np.asarray(im).astype(np.float64)
        im = Image.fromarray(np.rint(arr / 257.0).astype(np.uint8))  # 2-D uint8: mode L
    elif im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    return im.convert("RGB")  # a new image (a copy when already RGB), usable after ``im``'s file is closed


def _jpeg_rgb_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of an 8-bit 3-component JPEG, read from its frame header; None for anything else, and for a
    JPEG with an APP1 block (EXIF or XMP, which may hold an orientation), left to the path through :func:`upright`."""
    if data[:2] != b"\xff\xd8":
        return None
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if 0xD0 <= marker <= 0xD8 or marker == 0x01:  # markers without a length
            i += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image / start of scan before any frame header
            return None
        length = (data[i + 2] << 8) | data[i + 3]
        if marker == 0xE1:  # APP1: EXIF or XMP
            return None
        if marker in _JPEG_SOF:
            if i + 10 > n:
                return None
            precision, height = data[i + 4], (data[i + 5] << 8) | data[i + 6]
            width, components = (data[i + 7] << 8) | data[i + 8], data[i + 9]
            if precision != 8 or components != 3 or not height or not width:
                return None
            return width, height
        i += 2 + length
    return None


def _decode_image(data: bytes, name: str, image_size: int | None) -> np.ndarray:
    """Decode one image to an H x W x 3 uint8 array (RGB), resized bilinearly to image_size if given.

    Three-component JPEGs (nearly all of them) go straight to Pillow's libjpeg decoder with the size read from
    the frame header: the same decoder and arguments as ``Image.open(...).load()`` (identical pixels), without
    Pillow's Python-level header parsing, which dominates the cost for small images. Images with an EXIF
    orientation tag are turned upright (:func:`upright`); the others are decoded exactly as stored.
    """
    from PIL import Image

    try:
        im = None
        size = _jpeg_rgb_size(data)
        if size is not None:
            try:
                im = Image.frombytes("RGB", size, data, "jpeg", "RGB", "")
            except (OSError, ValueError):
                im = None  # let Image.open report (or handle) whatever was unusual
        if im is None:
            im = Image.open(io.BytesIO(data))
            im.load()
            im = to_rgb(upright(im))
        if image_size is not None and im.size != (image_size, image_size):
            im = im.resize((image_size, image_size), Image.Resampling.BILINEAR)
        return np.frombuffer(im.tobytes(), dtype=np.uint8).reshape(im.height, im.width, 3)
    except Exception as e:
        raise ValueError(f"cannot decode image {name}: {e}") from e


def _decode_chunk(items: list[tuple[str, bytes | Path]], image_size: int | None) -> list[np.ndarray]:
    out = []
    for name, blob in items:
        if isinstance(blob, Path):
            blob = blob.read_bytes()
        out.append(_decode_image(blob, name, image_size))
    return out


class _ParallelDecoder:
    """Collects images (bytes, or paths read by the workers), then decodes them in chunks on a thread pool.

    Pillow's decoders and file reads release the GIL. Decoding starts only once everything is collected: a
    thread streaming an archive while others decode makes them all fight for the GIL (measured: no faster than
    one thread on 2 cores), whereas the compressed bytes held meanwhile are a fraction of the decoded size.
    """

    def __init__(self, image_size: int | None, num_workers: int | None) -> None:
        self.image_size = image_size
        self.workers = _default_workers() if num_workers is None else int(num_workers)
        if self.workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        self.items: list[tuple[str, bytes | Path]] = []

    def add(self, key: str, blob: bytes | Path) -> None:
        self.items.append((key, blob))

    def results(self) -> dict[str, np.ndarray]:
        """{key: H x W x 3 uint8 array}; a key added twice keeps its last image."""
        items, self.items = self.items, []
        chunks = [items[i : i + _CHUNK] for i in range(0, len(items), _CHUNK)]
        if self.workers == 1 or len(chunks) <= 1:
            decoded = [_decode_chunk(chunk, self.image_size) for chunk in chunks]
        else:
            with ThreadPoolExecutor(min(self.workers, len(chunks))) as pool:
                futures = [pool.submit(_decode_chunk, chunk, self.image_size) for chunk in chunks]
                try:
                    decoded = [f.result() for f in futures]
                finally:
                    for f in futures:
                        f.cancel()
        out: dict[str, np.ndarray] = {}
        for chunk, arrays in zip(chunks, decoded):
            out.update(zip((key for key, _ in chunk), arrays))
        return out


def _check_image_size(image_size: int | None) -> None:
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1):
        raise ValueError(f"image_size must be a positive int (the side of the square output), got {image_size!r}")


def _is_image_path(parts: Sequence[str]) -> bool:
    if any(p.startswith(".") or p == "__MACOSX" for p in parts):
        return False  # hidden files, macOS resource forks (._x.jpg) and __MACOSX folders
    return parts[-1].lower().endswith(IMAGE_EXTENSIONS)


def _name_parts(name: str) -> tuple[str, ...]:
    return tuple(p for p in name.split("/") if p not in ("", "."))


def _choose_group(rests: Iterable[tuple[str, ...]], split: str | None, where: str) -> tuple[str, ...]:
    """Pick the folder (as path parts) whose subfolders are the classes, given the requested split.

    ``rests`` are the distinct parent paths of the class folders. One parent means there are no split folders:
    it is used when ``split`` is None, "train", or the parent's own name; another split name is an error (so that
    a test set is never silently the training set). Several parents must be split folders, and ``split`` picks one.
    """
    groups = sorted(set(rests))
    if not groups:
        raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) inside class folders of {where}")
    if len(groups) == 1:
        rest = groups[0]
        last = rest[-1] if rest else ""
        if split is None or last == split or (split == "train" and last.lower() not in _SPLIT_NAMES):
            return rest
        raise ValueError(
            f"{where} has no split folder {split!r}: it holds one set of class folders"
            f"{' (in ' + '/'.join(rest) + ')' if rest else ''}; give the split as null to load all of it "
            "(data.train_split / data.eval_split: null; split=None in Python)"
        )
    names = ["/".join(r) or "." for r in groups]
    if len({len(r) for r in groups}) != 1 or len({r[:-1] for r in groups}) != 1:
        raise ValueError(
            f"cannot tell the layout of {where}: class folders sit in several unrelated folders ({names}); "
            "expected <class>/<image> or <split>/<class>/<image>"
        )
    splits = [r[-1] for r in groups]
    if split is None:
        raise ValueError(f"{where} holds several split folders {splits}; pass split= one of them")
    if split not in splits:
        raise ValueError(f"{where} has no split folder {split!r}; found {splits}")
    return groups[splits.index(split)]


def _class_index(found: Iterable[str], classes: Sequence[str] | None, where: str) -> list[str]:
    found = sorted(set(found))
    if classes is None:
        return found
    classes = list(classes)
    extra = [c for c in found if c not in classes]
    if extra:
        raise ValueError(f"{where} has class folders {extra} that are not in the given classes {classes}")
    return classes


def _assemble(
    entries: list[tuple[str, str]], decoded: dict[str, np.ndarray], classes: list[str], where: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack decoded images (entries = (class, key), already in output order) into N x 3 x H x W uint8."""
    arrays = [decoded[key] for _, key in entries]
    first_shape = arrays[0].shape
    for (_, key), arr in zip(entries, arrays):
        if arr.shape != first_shape:
            raise ValueError(
                f"images in {where} differ in size: {entries[0][1]} is {first_shape[1]}x{first_shape[0]} but "
                f"{key} is {arr.shape[1]}x{arr.shape[0]}; pass image_size=... to resize them all"
            )
    index = {c: i for i, c in enumerate(classes)}
    stacked = torch.from_numpy(np.stack(arrays))
    images = stacked.permute(0, 3, 1, 2).contiguous()
    labels = torch.tensor([index[c] for c, _ in entries], dtype=torch.int64)
    return images, labels


# --------------------------------------------------------------------------------------------------------------
# Streaming tar reader
# --------------------------------------------------------------------------------------------------------------


def _iter_tar_files(path: Path, want: Callable[[str], bool]) -> Iterator[tuple[str, bytes | None]]:
    """Every regular file of the tar archive at path, in order, as (name, data if want(name) else None),
    streaming the archive once with the standard library's ``tarfile`` (any compression it detects)."""
    with tarfile.open(path, "r|*") as tf:
        for member in tf:
            if not member.isfile():
                continue
            if want(member.name):
                f = tf.extractfile(member)
                assert f is not None
                yield member.name, f.read()
            else:
                yield member.name, None


# --------------------------------------------------------------------------------------------------------------
# Image folders and archives
# --------------------------------------------------------------------------------------------------------------

_MAX_DEPTH = 4  # folder levels below the root searched for images (top/split/class/image)


def _walk_images(root: Path, skipped: list[tuple[str, ...]] | None = None) -> Iterator[tuple[str, ...]]:
    """Relative path parts of every image file under root, at most _MAX_DEPTH folders deep (symlinks followed);
    ``skipped`` collects the other files in folders (not hidden ones)."""
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        rel = Path(dirpath).relative_to(root).parts
        dirnames[:] = [] if len(rel) >= _MAX_DEPTH else [d for d in dirnames if not d.startswith(".")]
        for fname in filenames:
            parts = (*rel, fname)
            if len(parts) >= 2 and _is_image_path(parts):
                yield parts
            elif skipped is not None and len(parts) >= 2 and not any(p.startswith(".") for p in parts):
                skipped.append(parts)


def _note_skipped(skipped: Sequence[tuple[str, ...]], where: str) -> None:
    """One note on stderr for files in class folders that are not read (a suffix other than IMAGE_EXTENSIONS)."""
    if not skipped:
        return
    kinds: dict[str, int] = {}
    for parts in skipped:
        suffix = Path(parts[-1]).suffix.lower() or parts[-1]
        kinds[suffix] = kinds.get(suffix, 0) + 1
    listed = ", ".join(f"{k}: {v}" for k, v in sorted(kinds.items(), key=lambda kv: (-kv[1], kv[0])))
    print(f"note: {where}: {len(skipped)} file(s) in class folders skipped, not images ({listed}; e.g. "
          f"{'/'.join(skipped[0])}); images are {', '.join(IMAGE_EXTENSIONS)}", file=sys.stderr)


def load_image_folder(
    root: str | os.PathLike[str],
    split: str | None = None,
    image_size: int | None = None,
    *,
    classes: Sequence[str] | None = None,
    num_workers: int | None = None,
) -> ImageArrays:
    """Load ``root/<class>/*.{png,jpg,jpeg,bmp,webp}``, or ``root/<split>/<class>/...`` when split is given.

    Args:
        root: the folder.
        split: the split folder to load. ``None`` (or ``"train"``, or the root's own name) on a folder without
            split subfolders loads everything; a folder with split subfolders needs one named.
        image_size: resize every image (bilinear) to ``image_size`` x ``image_size``; without it all images must
            share one size.
        classes: class names in label order (default: the sorted class folder names). Every class folder must
            be among them; classes without images are allowed (useful to align a test split with a train split).
        num_workers: decoding threads (default: the number of CPUs, at most 8; 1 decodes in this thread).

    Images are decoded to RGB with Pillow (alpha dropped, palettes expanded, turned upright by their EXIF
    orientation tag: :func:`upright`). Samples are ordered by class, then by path. Hidden files and folders are ignored.
    """
    root = Path(root)
    _check_image_size(image_size)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    by_rest: dict[tuple[str, ...], list[tuple[str, ...]]] = {}
    base = (root.resolve().name,)
    skipped: list[tuple[str, ...]] = []
    for parts in _walk_images(root, skipped):
        by_rest.setdefault(base + parts[:-2], []).append(parts)
    chosen = _choose_group(by_rest, split, f"image folder {root}")
    _note_skipped([p for p in skipped if base + p[:-2] == chosen], f"image folder {root}")
    files = sorted(by_rest[chosen], key=lambda p: (p[-2], p))
    class_names = _class_index((p[-2] for p in files), classes, f"image folder {root}")
    index = {c: i for i, c in enumerate(class_names)}
    files.sort(key=lambda p: (index[p[-2]], p))
    decoder = _ParallelDecoder(image_size, num_workers)
    for parts in files:
        decoder.add("/".join(parts), root.joinpath(*parts))
    decoded = decoder.results()
    entries = [(p[-2], "/".join(p)) for p in files]
    images, labels = _assemble(entries, decoded, class_names, f"image folder {root}")
    where = root / "/".join(chosen[1:]) if len(chosen) > 1 else root
    return ImageArrays(images, labels, class_names, source=f"image folder {where}")


def load_image_tar(
    path: str | os.PathLike[str],
    split: str | None = None,
    image_size: int | None = None,
    classes: Sequence[str] | None = None,
    *,
    num_workers: int | None = None,
) -> ImageArrays:
    """Load an image-folder layout from a ``.tar``, ``.tar.gz``/``.tgz`` (or ``.tar.bz2``/``.tar.xz``) archive.

    The archive is read once as a stream (nothing is extracted to disk); images are decoded on a thread pool while
    the archive is being read. Layouts: ``<class>/<image>``, ``<split>/<class>/<image>``, either under any top
    folders (e.g. ``CIFAR-10-images/train/cat/0001.jpg``).

    Args:
        path: the archive.
        split: the split folder to load (e.g. ``"train"``, ``"test"``); same rules as :func:`load_image_folder`.
        image_size: resize every image (bilinear) to a square of this side; otherwise all must share one size.
        classes: class names in label order (default: the sorted class folder names of that split).
        num_workers: decoding threads (default: the number of CPUs, at most 8).
    """
    path = Path(path)
    _check_image_size(image_size)
    if not path.is_file():
        raise FileNotFoundError(f"image archive not found: {path}")
    if not tarfile.is_tarfile(path):
        raise ValueError(f"{path} is not a tar archive (.tar, .tar.gz, .tgz)")
    where = f"image archive {path}"
    members: dict[tuple[str, ...], dict[str, tuple[str, ...]]] = {}  # parent -> {path: parts}, no duplicates
    decoder = _ParallelDecoder(image_size, num_workers)
    decoded_keys: set[str] = set()

    def want_first(name: str) -> bool:
        # keep the bytes of whatever can belong to the requested split while streaming
        parts = _name_parts(name)
        if len(parts) < 2 or not _is_image_path(parts):
            return False
        return split is None or (len(parts) >= 3 and parts[-3] == split)

    for name, data in _iter_tar_files(path, want_first):
        parts = _name_parts(name)
        if len(parts) < 2 or not _is_image_path(parts):
            continue
        key = "/".join(parts)
        members.setdefault(parts[:-2], {})[key] = parts
        if data is not None:  # a name stored twice: the later copy wins, as when extracting
            decoder.add(key, data)
            decoded_keys.add(key)
    chosen = _choose_group(members, split, where)
    wanted = set(members[chosen]) - decoded_keys
    if wanted:  # e.g. a flat archive loaded as split="train": read it again for the rest
        for name, data in _iter_tar_files(path, lambda n: "/".join(_name_parts(n)) in wanted):
            key = "/".join(_name_parts(name))
            if data is not None and key not in decoded_keys:
                decoder.add(key, data)
                decoded_keys.add(key)
    decoded = decoder.results()
    files = list(members[chosen].values())
    class_names = _class_index((p[-2] for p in files), classes, where)
    index = {c: i for i, c in enumerate(class_names)}
    files.sort(key=lambda p: (index[p[-2]], p))
    entries = [(p[-2], "/".join(p)) for p in files]
    images, labels = _assemble(entries, decoded, class_names, where)
    inside = "/".join(chosen)
    return ImageArrays(images, labels, class_names, source=f"{where}{':' + inside if inside else ''}")


# --------------------------------------------------------------------------------------------------------------
# npz
# --------------------------------------------------------------------------------------------------------------

_NPZ_IMAGE_KEYS = ("images", "image", "imgs", "x", "data", "inputs", "pixels", "features")
_NPZ_LABEL_KEYS = ("labels", "label", "y", "targets", "target")


def _split_keys(kind: str, split: str) -> tuple[str, ...]:
    if kind == "images":
        return (f"x_{split}", f"{split}_x", f"images_{split}", f"{split}_images", f"data_{split}", f"{split}_data")
    return (f"y_{split}", f"{split}_y", f"labels_{split}", f"{split}_labels", f"targets_{split}", f"{split}_targets")


def _find_key(files: Sequence[str], candidates: Iterable[str]) -> str | None:
    lower = {f.lower(): f for f in files}
    for c in candidates:
        if c in lower:
            return lower[c]
    return None


def _to_uint8_nchw(arr: np.ndarray, layout: str | None, where: str) -> np.ndarray:
    if arr.ndim == 3:  # N x H x W grayscale
        arr = arr[:, None]
        layout = "NCHW"
    if arr.ndim != 4:
        raise ValueError(f"images in {where} must be 4-D (NHWC or NCHW) or 3-D (N x H x W), got {arr.shape}")
    if layout is None:
        c_first, c_last = arr.shape[1] in (1, 3, 4), arr.shape[3] in (1, 3, 4)
        if c_last and not c_first:
            layout = "NHWC"
        elif c_first and not c_last:
            layout = "NCHW"
        else:
            raise ValueError(
                f"cannot tell whether images of shape {arr.shape} in {where} are NHWC or NCHW; pass layout="
            )
    if layout not in ("NCHW", "NHWC"):
        raise ValueError(f"layout must be 'NCHW' or 'NHWC', got {layout!r}")
    if layout == "NHWC":
        arr = arr.transpose(0, 3, 1, 2)
    if arr.dtype == np.uint8:
        pass
    elif np.issubdtype(arr.dtype, np.floating):
        lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
        if not (np.isfinite(lo) and np.isfinite(hi)) or lo < 0.0 or hi > 1.0:
            raise ValueError(
                f"float images in {where} must lie in [0, 1] (got {lo} to {hi}); store uint8 0-255 instead"
            )
        arr = np.rint(arr * 255.0).astype(np.uint8)
    elif np.issubdtype(arr.dtype, np.integer) and not np.issubdtype(arr.dtype, np.bool_):
        lo, hi = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
        if lo < 0 or hi > 255:
            raise ValueError(f"integer images in {where} must lie in 0-255, got {lo} to {hi}")
        arr = arr.astype(np.uint8)
    else:
        raise TypeError(f"images in {where} must be uint8, integer 0-255 or float in [0, 1], got {arr.dtype}")
    return np.ascontiguousarray(arr)


def _to_labels(arr: np.ndarray, n: int, where: str) -> np.ndarray:
    if arr.ndim == 2 and arr.shape[0] == n and arr.shape[1] == 1:
        arr = arr[:, 0]
    elif arr.ndim == 2 and arr.shape[0] == n and arr.shape[1] > 1:
        if not (np.isin(arr, (0, 1)).all() and (arr.sum(axis=1) == 1).all()):
            raise ValueError(f"labels in {where} have shape {arr.shape} but are not one-hot rows")
        arr = arr.argmax(axis=1)
    if arr.shape != (n,):
        raise ValueError(f"labels in {where} must have shape ({n},) to match the images, got {arr.shape}")
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise ValueError(f"labels in {where} must be whole numbers")
    elif not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"labels in {where} must be integers, got {arr.dtype}")
    out = arr.astype(np.int64)
    if out.size and out.min() < 0:
        raise ValueError(f"labels in {where} must be >= 0, got {out.min()}")
    return out


def load_npz(
    path: str | os.PathLike[str],
    images_key: str | None = None,
    labels_key: str | None = None,
    classes: Sequence[str] | None = None,
    *,
    split: str | None = None,
    layout: str | None = None,
) -> ImageArrays:
    """Load images and labels from a ``.npz`` file (never unpickling anything: ``allow_pickle=False``).

    Args:
        path: the .npz file.
        images_key: name of the images array; default: the first of ``images, image, imgs, x, data, inputs,
            pixels, features`` present (case-insensitive), or ``x_train``-style keys (see ``split``).
        labels_key: name of the labels array; default: the first of ``labels, label, y, targets, target``.
        classes: class names in label order; default: the file's ``classes`` (or ``class_names``,
            ``label_names``, ``names``) array, else ``"0" .. "K-1"`` with K = the largest label + 1.
        split: with files holding several splits (``x_train``/``x_test``, ``train_images``/...), the split to
            load; arrays named for that split win over the plain names.
        layout: ``"NCHW"`` or ``"NHWC"``; guessed from which axis has 1, 3 or 4 channels when not given.

    Images may be NHWC or NCHW (or N x H x W grayscale), of dtype uint8, another integer type holding 0-255,
    or float in [0, 1]. Float images are converted to uint8 with ``round(x * 255)``, so uint8 -> float -> uint8
    round trips exactly; other float scales (0-255, normalised) are refused with an error. Labels may be
    integers, whole floats, an N x 1 column or one-hot rows.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"npz file not found: {path}")
    where = f"npz file {path}"
    try:
        z = np.load(path, allow_pickle=False)
    except Exception as e:
        if "pickled" in str(e):  # a pickle (e.g. named .npz): np.load refused it, and so do we
            raise UnsafeFileError(path, "a pickle, not a numpy .npz archive (pickles are never loaded: they can "
                                        "run code)") from None
        raise ValueError(f"cannot read {where} as a numpy .npz archive: {e}") from e
    with z:
        files = list(z.files)
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise ValueError(f"{where} holds a single array, not an .npz archive of named arrays")

        def pick(given: str | None, kind: str, generic: Sequence[str]) -> str:
            if given is not None:
                if given not in files:
                    raise KeyError(f"{where} has no array {given!r}; its arrays are {files}")
                return given
            found = None
            if split is not None:
                found = _find_key(files, _split_keys(kind, split))
                if found is None and _find_key(files, generic) is not None and split != "train":
                    raise ValueError(
                        f"{where} has no {split!r} arrays (its arrays are {files}); give the split as null "
                        "(data.*_split: null; split=None in Python) to load the whole file, or name the arrays with "
                        "images_key= / labels_key="
                    )
            if found is None:
                found = _find_key(files, generic)
            if found is None and split in (None, "train"):
                found = _find_key(files, _split_keys(kind, "train"))
            if found is None:
                raise KeyError(
                    f"cannot find the {kind} array in {where}: its arrays are {files}; expected one of "
                    f"{list(generic)} (or x_train/y_train style names), or pass {kind}_key="
                )
            return found

        ikey = pick(images_key, "images", _NPZ_IMAGE_KEYS)
        lkey = pick(labels_key, "labels", _NPZ_LABEL_KEYS)
        try:
            raw_images, raw_labels = z[ikey], z[lkey]
            ckey = npz_class_key(list(files), images=True) if classes is None else None
            raw_classes = z[ckey] if ckey is not None else None
        except ValueError as e:  # object arrays need pickle, which is never allowed
            raise UnsafeFileError(path, f"holds object arrays, which need pickle (never allowed: it can run code); "
                                        f"store plain numeric/str arrays ({e})") from None
    images = _to_uint8_nchw(raw_images, layout, f"{where}[{ikey!r}]")
    labels = _to_labels(raw_labels, images.shape[0], f"{where}[{lkey!r}]")
    if classes is not None:
        names = [str(c) for c in classes]
    elif raw_classes is not None:
        names = class_name_list(raw_classes)
    else:
        names = [str(k) for k in range(int(labels.max()) + 1 if labels.size else 0)]
    if labels.size and labels.max() >= len(names):
        raise ValueError(f"{where}: label {int(labels.max())} has no class name ({len(names)} classes given)")
    return ImageArrays(torch.from_numpy(images), torch.from_numpy(labels), names, source=f"{where}[{ikey}]")


# --------------------------------------------------------------------------------------------------------------
# Dispatch and cache
# --------------------------------------------------------------------------------------------------------------


def detect_image_format(path: Path) -> str:
    """'npz', 'cifar', 'tar' or 'folder' for what is at path; ValueError if none fits."""
    if not path.exists():
        raise FileNotFoundError(f"no such file or folder: {path}")
    if path.is_file():
        with open(path, "rb") as f:
            magic = f.read(4)
        if path.suffix.lower() == ".npz" or magic == b"PK\x03\x04":
            return "npz"
        if tarfile.is_tarfile(path):
            return "cifar" if _cifar_archive_kind(path) else "tar"
    elif path.is_dir():
        if _resolve_cifar(path) is not None:
            return "cifar"
        for _ in _walk_images(path):
            return "folder"
    raise ValueError(
        f"cannot load images from {path}: it is none of the supported formats: a .npz file of arrays; the "
        "official CIFAR-10/100 python version (cifar-10-batches-py / cifar-100-python folder, its parent, or "
        "cifar-10-python.tar.gz / cifar-100-python.tar.gz); an image folder <class>/<image> or "
        f"<split>/<class>/<image> with {', '.join(IMAGE_EXTENSIONS)} files; or a .tar/.tar.gz/.tgz of such a folder"
    )


def _source_state(path: Path) -> dict[str, Any]:
    """What identifies the current content of path: size and mtime, and for a folder those of every image."""
    st = path.stat()
    state: dict[str, Any] = {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    if path.is_dir():
        h = hashlib.sha256()
        for parts in sorted(_walk_images(path)):
            fst = path.joinpath(*parts).stat()
            h.update(f"{'/'.join(parts)}\0{fst.st_size}\0{fst.st_mtime_ns}\n".encode())
        state["tree"] = h.hexdigest()
    return state


def _cache_file(cache_dir: Path, path: Path, fmt: str, params: dict[str, Any]) -> tuple[Path, str]:
    """(cache file for the current content of path, glob of the cache files for older content)."""
    path_id = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:10]
    state = {"version": _CACHE_VERSION, "format": fmt, **_source_state(path), **params}
    digest = hashlib.sha256(json.dumps(state, sort_keys=True, default=str).encode()).hexdigest()[:20]
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", path.name)[:60] or "data"
    split = re.sub(r"[^A-Za-z0-9._-]+", "_", str(params.get("split")))[:30]
    stem = f"{safe}-{path_id}-{split}-{params.get('image_size')}"
    return cache_dir / f"{stem}-{digest}.npz", f"{stem}-*.npz"


def _read_cache(file: Path) -> ImageArrays | None:
    try:
        with np.load(file, allow_pickle=False) as z:
            images, labels, classes, source = z["images"], z["labels"], z["classes"], z["source"]
        return ImageArrays(
            torch.from_numpy(images), torch.from_numpy(labels), [str(c) for c in classes.tolist()], str(source)
        )
    except Exception:  # unreadable or foreign file: decode again and overwrite it
        return None


def resize_images(data: ImageArrays, image_size: int) -> ImageArrays:
    """Every image resized to ``image_size`` x ``image_size`` with Pillow's bilinear filter, channel by channel (the
    filter the image-file loaders use); images already of that size are returned unchanged."""
    from PIL import Image

    _check_image_size(image_size)
    n, c, h, w = data.images.shape
    if (h, w) == (image_size, image_size):
        return data
    src = data.images.numpy()
    out = np.empty((n, c, image_size, image_size), dtype=np.uint8)
    for i in range(n):
        for ch in range(c):
            im = Image.fromarray(np.ascontiguousarray(src[i, ch]))  # 2-D uint8: mode "L"
            out[i, ch] = np.asarray(im.resize((image_size, image_size), Image.Resampling.BILINEAR))
    return ImageArrays(torch.from_numpy(out), data.labels, list(data.classes),
                       f"{data.source} (resized to {image_size}x{image_size})")


def load_images(
    path: str | os.PathLike[str],
    split: str | None = "train",
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    **kw: Any,
) -> ImageArrays:
    """Load an image dataset from whatever ``path`` is, picking the loader by its format.

    * a ``.npz`` file -> :func:`load_npz` (``images_key``, ``labels_key``, ``classes``, ``layout``);
    * a CIFAR-10/100 python-version folder, its parent, or the official ``.tar.gz`` -> :func:`load_cifar_pickle`
      (``label``);
    * another tar archive -> :func:`load_image_tar` (``image_size``, ``classes``, ``num_workers``);
    * a folder of class folders of images -> :func:`load_image_folder` (same options).

    ``split`` selects the split (``"train"``, ``"test"``, ...). A source without splits (a flat image folder, an
    npz of plain ``images``/``labels``) loads whole with ``split="train"`` or ``None``; asking it for another split
    is an error, so a test set is never silently the training data.

    Args:
        cache_dir: for image folders and image archives (slow to decode), keep the decoded arrays here as .npz,
            keyed by the absolute path, size and mtime of the source (for folders: of every image), the split and
            the loader options, and reuse them while the source is unchanged. Written atomically; a cache file of
            older content of the same source is removed. Ignored for npz and CIFAR (already fast).
        **kw: options of the chosen loader (listed above).

    Raises:
        ValueError: the path is none of the supported formats, or the loader's own errors.
        TypeError: an option the chosen loader does not take.
    """
    path = Path(path)
    fmt = detect_image_format(path)
    loader: Callable[..., ImageArrays] = {
        "npz": load_npz,
        "cifar": load_cifar_pickle,
        "tar": load_image_tar,
        "folder": load_image_folder,
    }[fmt]
    accepted = [p for p in inspect.signature(loader).parameters if p not in ("path", "root", "split")]
    resize = None
    if fmt in ("npz", "cifar") and "image_size" in kw:  # arrays, not encoded images: resized after loading
        resize = kw.pop("image_size")
        _check_image_size(resize)
    for key in [k for k, v in kw.items() if v is None and k not in accepted]:
        del kw[key]  # an option left at None (from a config section shared by every format) asks for nothing
    bad = sorted(set(kw) - set(accepted))
    if bad:
        raise TypeError(f"{path} is loaded by {loader.__name__}, which takes no option {bad}; it takes {accepted}")
    if fmt == "cifar" and split is None:
        raise ValueError("CIFAR has the splits 'train' and 'test'; pass split= one of them")
    kw["split"] = split

    if cache_dir is None or fmt not in ("tar", "folder"):
        data = loader(path, **kw)
        return resize_images(data, resize) if resize is not None else data
    params = {
        "split": split,
        "image_size": kw.get("image_size"),
        "classes": list(kw["classes"]) if kw.get("classes") is not None else None,
    }
    cache_dir = Path(cache_dir)
    file, stale_glob = _cache_file(cache_dir, path, fmt, params)
    if file.is_file():
        cached = _read_cache(file)
        if cached is not None:
            return cached
    data = loader(path, **kw)
    _atomic_savez(
        file,
        images=data.images.numpy(),
        labels=data.labels.numpy(),
        classes=np.array(data.classes, dtype=np.str_).reshape(len(data.classes)),
        source=np.array(f"{data.source} (decoded cache {file})"),
    )
    for old in cache_dir.glob(stale_glob):
        if old != file:
            try:
                old.unlink()
            except OSError:
                pass
    return data
