"""Tests for distill.data.images (dataset loaders) and distill.data.augment (batch augmentation).

Fixtures are written in the official formats: CIFAR pickles exactly as the Python 2 originals (protocol 2, byte
string keys, ``numpy.core`` globals), image folders of PNGs, tar archives with top and split folders, npz files.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from distill.data import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageArrays,
    Normalize,
    RandomCropFlip,
    UnsafePickleError,
    load_cifar_pickle,
    load_image_folder,
    load_image_tar,
    load_images,
    load_npz,
)
from distill.data import images as images_mod

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
CIFAR10_JPEG = SHARED / "data" / "cifar10-jpeg.tar.gz"
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


# ----------------------------------------------------------------------------------------------------------------
# Official-format writers
# ----------------------------------------------------------------------------------------------------------------


class _Py2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Writes pickles as Python 2's cPickle did for CIFAR: protocol 2, strings as BINSTRING, numpy.core globals."""

    dispatch = dict(pickle._Pickler.dispatch)  # type: ignore[attr-defined]

    def _save_py2_str(self, obj: bytes | str) -> None:
        raw = obj if isinstance(obj, bytes) else obj.encode("latin-1")
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str
    dispatch[str] = _save_py2_str

    def save_global(self, obj: object, name: str | None = None) -> None:
        name = name or obj.__qualname__  # type: ignore[attr-defined]
        module = pickle.whichmodule(obj, name).replace("numpy._core", "numpy.core")
        self.write(pickle.GLOBAL + f"{module}\n{name}\n".encode())
        self.memoize(obj)


def py2_pickle(obj: object) -> bytes:
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def cifar_rows(images: np.ndarray) -> np.ndarray:
    """The official row layout: 1024 red values, then 1024 green, then 1024 blue, each plane row-major."""
    return np.stack([np.concatenate([img[0].ravel(), img[1].ravel(), img[2].ravel()]) for img in images])


def write_cifar10(root: Path, per_batch: int = 6, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    expected: dict[str, list[np.ndarray]] = {"train_x": [], "train_y": [], "test_x": [], "test_y": []}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for i, name in enumerate(names):
        imgs = rng.integers(0, 256, (per_batch, 3, 32, 32), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, per_batch)]
        batch = {
            b"batch_label": f"training batch {i + 1} of 5".encode() if i < 5 else b"testing batch 1 of 1",
            b"labels": labels,
            b"data": cifar_rows(imgs),
            b"filenames": [f"img_{i}_{j}.png".encode() for j in range(per_batch)],
        }
        (folder / name).write_bytes(py2_pickle(batch))
        part = "train" if i < 5 else "test"
        expected[f"{part}_x"].append(imgs)
        expected[f"{part}_y"].append(np.array(labels))
    meta = {b"num_cases_per_batch": per_batch, b"label_names": [c.encode() for c in CIFAR10_CLASSES], b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(py2_pickle(meta))
    (folder / "readme.html").write_text("<html></html>")
    return {k: np.concatenate(v) for k, v in expected.items()}


def write_cifar100(root: Path, n_train: int = 9, n_test: int = 4, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    out: dict[str, np.ndarray] = {}
    for part, n in (("train", n_train), ("test", n_test)):
        imgs = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
        fine = [int(v) for v in rng.integers(0, 100, n)]
        coarse = [int(v) for v in rng.integers(0, 20, n)]
        batch = {
            b"filenames": [f"{part}_{j}.png".encode() for j in range(n)],
            b"batch_label": f"{part}ing batch 1 of 1".encode(),
            b"fine_labels": fine,
            b"coarse_labels": coarse,
            b"data": cifar_rows(imgs),
        }
        (folder / part).write_bytes(py2_pickle(batch))
        out[f"{part}_x"], out[f"{part}_fine"], out[f"{part}_coarse"] = imgs, np.array(fine), np.array(coarse)
    meta = {
        b"fine_label_names": [f"fine{k:02d}".encode() for k in range(100)],
        b"coarse_label_names": [f"coarse{k:02d}".encode() for k in range(20)],
    }
    (folder / "meta").write_bytes(py2_pickle(meta))
    return out


def tar_folder(folder: Path, archive: Path, arcname: str, fmt: int = tarfile.GNU_FORMAT) -> Path:
    with tarfile.open(archive, "w:gz" if archive.name.endswith("gz") else "w", format=fmt) as tf:
        tf.add(folder, arcname=arcname)
    return archive


CLASSES = ["cat", "dog", "frog"]  # written in another order below: loaders must sort them


def write_image_folder(root: Path, splits: dict[str, int], size: tuple[int, int] = (8, 6), seed: int = 2) -> dict:
    """root/<split>/<class>/<k>.png with random RGB pixels; returns {split: (images NCHW, labels)} in load order."""
    rng = np.random.default_rng(seed)
    out = {}
    w, h = size
    for split, per_class in splits.items():
        xs, ys = [], []
        for name in ["frog", "cat", "dog"]:
            (root / split / name).mkdir(parents=True)
            for k in range(per_class):
                arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                Image.fromarray(arr).save(root / split / name / f"{k:03d}.png")
                xs.append((CLASSES.index(name), k, arr.transpose(2, 0, 1)))
        xs.sort(key=lambda t: (t[0], t[1]))
        ys = [t[0] for t in xs]
        out[split] = (np.stack([t[2] for t in xs]), np.array(ys))
    return out


def assert_same(data: ImageArrays, images: np.ndarray, labels: np.ndarray, classes: list[str]) -> None:
    assert data.images.dtype == torch.uint8 and data.labels.dtype == torch.int64
    assert data.images.is_contiguous()
    assert data.classes == classes
    np.testing.assert_array_equal(data.images.numpy(), images)
    np.testing.assert_array_equal(data.labels.numpy(), labels)


# ----------------------------------------------------------------------------------------------------------------
# CIFAR pickles
# ----------------------------------------------------------------------------------------------------------------


def test_fixture_pickles_look_like_the_python2_originals(tmp_path: Path) -> None:
    write_cifar10(tmp_path, per_batch=2)
    raw = (tmp_path / "cifar-10-batches-py" / "data_batch_1").read_bytes()
    assert raw[:2] == b"\x80\x02"
    assert b"cnumpy.core.multiarray\n_reconstruct\n" in raw
    assert b"_codecs" not in raw and b"numpy._core" not in raw
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_1", "rb") as f:
        d = pickle.load(f, encoding="bytes")
    assert set(d) == {b"batch_label", b"labels", b"data", b"filenames"}
    assert d[b"data"].shape == (2, 3072) and d[b"data"].dtype == np.uint8


@pytest.mark.parametrize("where", ["folder", "parent", "archive", "archive_parent"])
def test_cifar10_round_trip(tmp_path: Path, where: str) -> None:
    expected = write_cifar10(tmp_path / "src")
    archive = tar_folder(
        tmp_path / "src" / "cifar-10-batches-py", tmp_path / "cifar-10-python.tar.gz", "cifar-10-batches-py"
    )
    root = {
        "folder": tmp_path / "src" / "cifar-10-batches-py",
        "parent": tmp_path / "src",
        "archive": archive,
        "archive_parent": tmp_path,
    }[where]
    for split in ("train", "test"):
        data = load_cifar_pickle(root, split)
        assert_same(data, expected[f"{split}_x"], expected[f"{split}_y"], CIFAR10_CLASSES)
        assert "CIFAR-10" in data.source
        via_dispatch = load_images(root, split=split)
        assert torch.equal(via_dispatch.images, data.images) and torch.equal(via_dispatch.labels, data.labels)
    assert len(load_cifar_pickle(root, "train")) == 30


def test_cifar10_channel_layout(tmp_path: Path) -> None:
    expected = write_cifar10(tmp_path, per_batch=1)
    data = load_cifar_pickle(tmp_path, "test")
    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "rb") as f:
        raw = pickle.load(f, encoding="bytes")[b"data"][0]
    # red plane first, row-major: pixel (row 1, col 2) of the green plane is at 1024 + 32 + 2
    assert int(data.images[0, 1, 1, 2]) == int(raw[1024 + 32 + 2]) == int(expected["test_x"][0, 1, 1, 2])


def test_cifar100_fine_and_coarse(tmp_path: Path) -> None:
    expected = write_cifar100(tmp_path)
    archive = tar_folder(tmp_path / "cifar-100-python", tmp_path / "cifar-100-python.tar.gz", "cifar-100-python")
    for root in (tmp_path / "cifar-100-python", tmp_path / "cifar-100-python.tar.gz", archive):
        fine = load_cifar_pickle(root, "train")
        assert_same(fine, expected["train_x"], expected["train_fine"], [f"fine{k:02d}" for k in range(100)])
        coarse = load_cifar_pickle(root, "test", label="coarse")
        assert_same(coarse, expected["test_x"], expected["test_coarse"], [f"coarse{k:02d}" for k in range(20)])
    assert load_images(tmp_path / "cifar-100-python", split="test", label="coarse").num_classes == 20


def test_cifar_bad_arguments(tmp_path: Path) -> None:
    write_cifar10(tmp_path, per_batch=1)
    with pytest.raises(ValueError, match="'train' or 'test'"):
        load_cifar_pickle(tmp_path, "val")
    with pytest.raises(ValueError, match="only for CIFAR-100"):
        load_cifar_pickle(tmp_path, "train", label="coarse")
    with pytest.raises(ValueError, match="no CIFAR"):
        load_cifar_pickle(tmp_path / "cifar-10-batches-py" / "readme.html")
    with pytest.raises(FileNotFoundError):
        load_cifar_pickle(tmp_path / "missing")
    with pytest.raises(ValueError, match="split"):
        load_images(tmp_path, split=None)
    # arrays (CIFAR, npz) are resized after loading, as image files are when decoded (this used to be a TypeError)
    assert load_images(tmp_path, split="train", image_size=16).images.shape[1:] == (3, 16, 16)
    with pytest.raises(TypeError, match="no option"):
        load_images(tmp_path, split="train", num_workers=2)


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("as_archive", [False, True])
def test_malicious_pickle_is_refused(tmp_path: Path, as_archive: bool) -> None:
    write_cifar10(tmp_path / "src", per_batch=1)
    marker = tmp_path / "pwned"
    evil = {b"data": _Evil(marker), b"labels": [0]}
    (tmp_path / "src" / "cifar-10-batches-py" / "data_batch_3").write_bytes(pickle.dumps(evil, protocol=4))
    root: Path = tmp_path / "src"
    if as_archive:
        root = tar_folder(root / "cifar-10-batches-py", tmp_path / "cifar-10-python.tar.gz", "cifar-10-batches-py")
    with pytest.raises(UnsafePickleError, match=r"(posix|os)\.system"):
        load_cifar_pickle(root, "train")
    assert not marker.exists()
    # the test split does not touch the bad file, and the unpickler refuses builtins too
    assert len(load_cifar_pickle(root, "test")) == 1
    (tmp_path / "src" / "cifar-10-batches-py" / "test_batch").write_bytes(
        b"\x80\x02cbuiltins\neval\nq\x00X\x04\x00\x00\x001+1 q\x01\x85q\x02Rq\x03."
    )
    with pytest.raises(UnsafePickleError, match=r"builtins\.eval"):
        load_cifar_pickle(tmp_path / "src", "test")


# ----------------------------------------------------------------------------------------------------------------
# Image folders and archives
# ----------------------------------------------------------------------------------------------------------------


def test_image_folder_round_trip(tmp_path: Path) -> None:
    expected = write_image_folder(tmp_path / "imgs", {"train": 3, "test": 2})
    for split in ("train", "test"):
        for workers in (1, 3):
            data = load_image_folder(tmp_path / "imgs", split=split, num_workers=workers)
            assert_same(data, *expected[split], CLASSES)
            assert data.images.shape[1:] == (3, 6, 8)
    # the split folder itself, with or without naming the split
    assert_same(load_image_folder(tmp_path / "imgs" / "test"), *expected["test"], CLASSES)
    assert_same(load_images(tmp_path / "imgs" / "test", split="test"), *expected["test"], CLASSES)
    assert_same(load_images(tmp_path / "imgs", split="train"), *expected["train"], CLASSES)


def test_image_folder_modes_and_resize(tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    gray = np.arange(48, dtype=np.uint8).reshape(6, 8)
    Image.fromarray(gray, "L").save(root / "a" / "gray.png")
    rgba = np.full((6, 8, 4), 200, dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(root / "b" / "alpha.png")
    Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(root / "b" / "x.bmp")
    (root / "b" / "notes.txt").write_text("not an image")
    (root / "b" / ".hidden.png").write_bytes(b"junk")
    data = load_image_folder(root)
    assert data.classes == ["a", "b"] and data.labels.tolist() == [0, 1, 1]
    np.testing.assert_array_equal(data.images[0].numpy(), np.stack([gray] * 3))
    assert int(data.images[1].min()) == 200
    resized = load_image_folder(root, image_size=5)
    assert resized.images.shape == (3, 3, 5, 5)
    ref = np.asarray(Image.fromarray(rgba[..., :3]).resize((5, 5), Image.Resampling.BILINEAR)).transpose(2, 0, 1)
    np.testing.assert_array_equal(resized.images[1].numpy(), ref)


def test_image_folder_errors(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "imgs", {"train": 2, "test": 1})
    with pytest.raises(ValueError, match=r"several split folders \['test', 'train'\]"):
        load_image_folder(tmp_path / "imgs")
    with pytest.raises(ValueError, match="no split folder 'val'"):
        load_image_folder(tmp_path / "imgs", split="val")
    with pytest.raises(ValueError, match="no split folder 'test'"):
        load_image_folder(tmp_path / "imgs" / "train", split="test")
    Image.fromarray(np.zeros((7, 7, 3), np.uint8)).save(tmp_path / "imgs" / "train" / "dog" / "zzz.png")
    with pytest.raises(ValueError, match=r"differ in size: train/cat/000.png is 8x6 but train/dog/zzz.png is 7x7"):
        load_image_folder(tmp_path / "imgs", split="train")
    assert load_image_folder(tmp_path / "imgs", split="train", image_size=4).images.shape == (7, 3, 4, 4)
    (tmp_path / "imgs" / "train" / "dog" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(ValueError, match="cannot decode image train/dog/broken.png"):
        load_image_folder(tmp_path / "imgs", split="train", image_size=4)
    with pytest.raises(ValueError, match="not in the given classes"):
        load_image_folder(tmp_path / "imgs", split="test", classes=["cat", "dog"])
    with pytest.raises(ValueError, match="image_size"):
        load_image_folder(tmp_path / "imgs", split="test", image_size=0)
    with_extra = load_image_folder(tmp_path / "imgs", split="test", classes=["zebra", *CLASSES])
    assert with_extra.classes[0] == "zebra" and with_extra.labels.tolist() == [1, 2, 3]
    empty = tmp_path / "empty"
    (empty / "cat").mkdir(parents=True)
    with pytest.raises(ValueError, match="none of the supported formats"):
        load_images(empty)


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT])
def test_image_tar_round_trip(tmp_path: Path, fmt: int) -> None:
    expected = write_image_folder(tmp_path / "imgs", {"train": 3, "test": 2})
    archive = tar_folder(tmp_path / "imgs", tmp_path / "imgs.tar.gz", "CIFAR-like-images", fmt)
    for split in ("train", "test"):
        data = load_image_tar(archive, split=split)
        assert_same(data, *expected[split], CLASSES)
        assert data.source.endswith(f"CIFAR-like-images/{split}")
        assert_same(load_images(archive, split=split), *expected[split], CLASSES)
    with pytest.raises(ValueError, match="several split folders"):
        load_image_tar(archive)
    with pytest.raises(ValueError, match="no split folder 'val'"):
        load_image_tar(archive, split="val")
    # plain .tar and a flat (no split folder) archive
    plain = tar_folder(tmp_path / "imgs" / "test", tmp_path / "flat.tar", "only-classes", fmt)
    assert_same(load_image_tar(plain), *expected["test"], CLASSES)
    assert_same(load_images(plain), *expected["test"], CLASSES)  # split="train" on a source without splits
    with pytest.raises(ValueError, match=r"give the split as null"):
        load_images(plain, split="val")


def test_tar_reader_matches_tarfile(tmp_path: Path) -> None:
    """The fast header parser gives tarfile's names and bytes, and hands over to tarfile when it must."""
    src = tmp_path / "src"
    long_dir = "d" * 90  # a path over 100 characters: GNU long name, pax path, or ustar prefix
    files = {
        "train/cat/a.png": b"A" * 700,
        f"train/{long_dir}/b.png": b"B" * 513,
        "train/cat/" + "c" * 150 + ".png": b"",
        "test/dog/\u00e9t\u00e9.png": b"E" * 1024,
    }
    for name, data in files.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(data)
    os.symlink("a.png", src / "train" / "cat" / "link.png")
    cases = {f"fmt{fmt}": dict(format=fmt) for fmt in (tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT)}
    cases["global-pax"] = dict(format=tarfile.PAX_FORMAT, pax_headers={"comment": "global header"})
    for label, kwargs in cases.items():
        archive = tmp_path / f"{label}.tar"
        with tarfile.open(archive, "w", **kwargs) as tf:
            if kwargs["format"] == tarfile.USTAR_FORMAT:  # no 150-character file names; long paths use the prefix
                tf.add(src, arcname="top", filter=lambda i: None if len(Path(i.name).name) > 100 else i)
            else:
                tf.add(src, arcname="top")
        with tarfile.open(archive) as tf:
            ref = [(m.name, tf.extractfile(m).read()) for m in tf if m.isfile()]  # type: ignore[union-attr]
        got = list(images_mod._iter_tar_files(archive, lambda n: True))
        assert got == ref, label
        names = [n for n, d in images_mod._iter_tar_files(archive, lambda n: False)]
        assert names == [n for n, _ in ref]
    # a fallback half-way: a name that is not UTF-8 makes tarfile write a pax hdrcharset header
    archive = tmp_path / "binary-name.tar"
    with tarfile.open(archive, "w", format=tarfile.PAX_FORMAT, encoding="utf-8") as tf:
        for name in ("a/x/1.png", "a/x/\udcff.png", "a/x/3.png"):
            info = tarfile.TarInfo(name)
            info.size = 3
            tf.addfile(info, io.BytesIO(name.encode("utf-8", "surrogateescape")[-3:]))
    with tarfile.open(archive) as tf:
        ref = [(m.name, tf.extractfile(m).read()) for m in tf if m.isfile()]  # type: ignore[union-attr]
    assert list(images_mod._iter_tar_files(archive, lambda n: True)) == ref


def test_jpeg_fast_path_matches_pillow(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    for mode, shape in (("RGB", (9, 13, 3)), ("L", (9, 13))):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(buf, "JPEG", quality=80)
        for progressive in (False, True):
            if progressive:
                buf = io.BytesIO()
                Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(
                    buf, "JPEG", quality=80, progressive=True
                )
            data = buf.getvalue()
            assert (images_mod._jpeg_rgb_size(data) is not None) == (mode == "RGB")
            ref = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
            np.testing.assert_array_equal(images_mod._decode_image(data, "x.jpg", None), ref)


# ----------------------------------------------------------------------------------------------------------------
# npz
# ----------------------------------------------------------------------------------------------------------------


def test_npz_layouts_and_keys(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    nchw = rng.integers(0, 256, (5, 3, 7, 9), dtype=np.uint8)
    labels = np.array([0, 2, 1, 2, 0])
    np.savez(tmp_path / "nhwc.npz", x=nchw.transpose(0, 2, 3, 1), y=labels)
    np.savez(tmp_path / "nchw.npz", images=nchw, targets=labels.astype(np.int32), classes=np.array(["a", "b", "c"]))
    np.savez(tmp_path / "float.npz", data=nchw.transpose(0, 2, 3, 1) / 255.0, label=labels.reshape(-1, 1))
    np.savez(tmp_path / "splits.npz", x_train=nchw, y_train=labels, x_test=nchw[:2], y_test=labels[:2], x_val=nchw[:1])
    assert_same(load_npz(tmp_path / "nhwc.npz"), nchw, labels, ["0", "1", "2"])
    assert_same(load_npz(tmp_path / "nchw.npz"), nchw, labels, ["a", "b", "c"])
    assert_same(load_npz(tmp_path / "float.npz", classes=["p", "q", "r"]), nchw, labels, ["p", "q", "r"])
    assert_same(load_npz(tmp_path / "splits.npz"), nchw, labels, ["0", "1", "2"])
    assert_same(load_npz(tmp_path / "splits.npz", split="test"), nchw[:2], labels[:2], ["0", "1", "2"])
    assert_same(load_images(tmp_path / "splits.npz", split="test"), nchw[:2], labels[:2], ["0", "1", "2"])
    assert_same(load_images(tmp_path / "nhwc.npz"), nchw, labels, ["0", "1", "2"])
    with pytest.raises(ValueError, match=r"give the split as null"):
        load_images(tmp_path / "nhwc.npz", split="test")
    with pytest.raises(KeyError, match=r"cannot find the labels array .*\['x_val'\]"):
        np.savez(tmp_path / "nolabels.npz", x_val=nchw)
        load_npz(tmp_path / "nolabels.npz", images_key="x_val")
    np.savez(tmp_path / "weird.npz", pics=nchw, answers=labels)
    with pytest.raises(KeyError, match=r"arrays are \['pics', 'answers'\]"):
        load_npz(tmp_path / "weird.npz")
    assert_same(load_npz(tmp_path / "weird.npz", "pics", "answers"), nchw, labels, ["0", "1", "2"])
    np.savez(tmp_path / "bad.npz", images=nchw.astype(np.float32), labels=labels)  # 0-255 floats
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        load_npz(tmp_path / "bad.npz")
    np.savez(tmp_path / "tiny.npz", images=nchw[:, :, :3, :3], labels=labels)
    with pytest.raises(ValueError, match="NHWC or NCHW"):
        load_npz(tmp_path / "tiny.npz")
    assert load_npz(tmp_path / "tiny.npz", layout="NCHW").images.shape == (5, 3, 3, 3)


def test_save_npz_round_trip(tmp_path: Path) -> None:
    expected = write_image_folder(tmp_path / "imgs", {"train": 2})
    data = load_image_folder(tmp_path / "imgs", split="train")
    path = data.save_npz(tmp_path / "out" / "d.npz")
    with np.load(path) as z:
        assert sorted(z.files) == ["classes", "images", "labels"]
    assert_same(load_npz(path), *expected["train"], CLASSES)
    assert not [p for p in path.parent.iterdir() if p != path]  # no temporary file left behind


def test_load_images_rejects_unknown(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="none of the supported formats.*npz.*CIFAR.*image folder.*tar"):
        load_images(tmp_path / "notes.txt")
    with pytest.raises(FileNotFoundError):
        load_images(tmp_path / "nothing-here")


# ----------------------------------------------------------------------------------------------------------------
# ImageArrays
# ----------------------------------------------------------------------------------------------------------------


def make_arrays(counts: list[int]) -> ImageArrays:
    labels = torch.cat([torch.full((n,), k, dtype=torch.int64) for k, n in enumerate(counts)])
    labels = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))]
    images = torch.arange(len(labels), dtype=torch.uint8).view(-1, 1, 1, 1).expand(-1, 3, 2, 2).contiguous()
    return ImageArrays(images, labels, [f"c{k}" for k in range(len(counts))], "synthetic")


def test_image_arrays_validation() -> None:
    ok = make_arrays([2, 2])
    assert len(ok) == 4 and ok.num_classes == 2
    with pytest.raises(TypeError, match="uint8"):
        ImageArrays(ok.images.float(), ok.labels, ok.classes)
    with pytest.raises(ValueError, match="N x C x H x W"):
        ImageArrays(ok.images[0], ok.labels, ok.classes)
    with pytest.raises(TypeError, match="int64"):
        ImageArrays(ok.images, ok.labels.int(), ok.classes)
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        ImageArrays(ok.images, ok.labels[:3], ok.classes)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        ImageArrays(ok.images, ok.labels, ["only"])
    with pytest.raises(ValueError, match="duplicate"):
        ImageArrays(ok.images, ok.labels, ["a", "a"])
    strided = ImageArrays(ok.images.permute(0, 1, 3, 2), ok.labels, ok.classes)
    assert strided.images.is_contiguous()
    sub = ok.subset([3, 1])
    assert sub.labels.tolist() == [int(ok.labels[3]), int(ok.labels[1])]
    assert torch.equal(sub.images[0], ok.images[3])
    assert len(ok.subset(ok.labels == 0)) == 2
    with pytest.raises(IndexError):
        ok.subset([4])


def test_balanced_subset() -> None:
    data = make_arrays([5, 7, 4])
    a = data.balanced_subset(3, seed=1)
    assert torch.bincount(a.labels).tolist() == [3, 3, 3]
    b = data.balanced_subset(3, seed=1)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    ids = a.images[:, 0, 0, 0].long()  # the synthetic images hold their own index
    assert ids.tolist() == sorted(ids.tolist())
    others = [data.balanced_subset(3, seed=s).images[:, 0, 0, 0].tolist() for s in range(2, 6)]
    assert any(o != ids.tolist() for o in others)
    assert torch.bincount(data.balanced_subset(4, seed=0).labels).tolist() == [4, 4, 4]
    with pytest.raises(ValueError, match="class 'c2' \\(label 2\\) has only 4 images"):
        data.balanced_subset(5, seed=0)
    with pytest.raises(ValueError, match="positive"):
        data.balanced_subset(0, seed=0)


# ----------------------------------------------------------------------------------------------------------------
# Decoded cache
# ----------------------------------------------------------------------------------------------------------------


def _no_decoding(*args: object, **kwargs: object) -> None:
    raise AssertionError("decoded again although the cache is valid")


def test_cache_reused_and_invalidated_tar(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    expected = write_image_folder(tmp_path / "imgs", {"train": 2, "test": 2})
    archive = tar_folder(tmp_path / "imgs", tmp_path / "imgs.tgz", "top")
    cache = tmp_path / "cache"
    first = load_images(archive, split="test", cache_dir=cache)
    assert_same(first, *expected["test"], CLASSES)
    assert len(list(cache.glob("*.npz"))) == 1
    with monkeypatch.context() as m:
        m.setattr(images_mod, "_decode_image", _no_decoding)
        again = load_images(archive, split="test", cache_dir=cache)
        assert_same(again, *expected["test"], CLASSES)
        assert "decoded cache" in again.source
        with pytest.raises(AssertionError, match="decoded again"):  # another split is another cache entry
            load_images(archive, split="train", cache_dir=cache)
        with pytest.raises(AssertionError, match="decoded again"):  # and so is another image size
            load_images(archive, split="test", cache_dir=cache, image_size=4)
    # change the archive: new content, new mtime -> decoded again, old entry replaced
    Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(tmp_path / "imgs" / "test" / "cat" / "999.png")
    tar_folder(tmp_path / "imgs", archive, "top")
    st = archive.stat()
    os.utime(archive, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with monkeypatch.context() as m:
        m.setattr(images_mod, "_decode_image", _no_decoding)
        with pytest.raises(AssertionError, match="decoded again"):
            load_images(archive, split="test", cache_dir=cache)
    changed = load_images(archive, split="test", cache_dir=cache)
    assert len(changed) == len(first) + 1
    assert len(list(cache.glob("imgs.tgz-*-test-None-*.npz"))) == 1
    assert not list(cache.glob(".*"))  # no temporary files left


def test_cache_invalidated_when_a_folder_image_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_image_folder(tmp_path / "imgs", {"train": 2})
    cache = tmp_path / "cache"
    first = load_images(tmp_path / "imgs", cache_dir=cache)
    with monkeypatch.context() as m:
        m.setattr(images_mod, "_decode_image", _no_decoding)
        assert torch.equal(load_images(tmp_path / "imgs", cache_dir=cache).images, first.images)
    target = tmp_path / "imgs" / "train" / "dog" / "001.png"
    Image.fromarray(np.full((6, 8, 3), 7, np.uint8)).save(target)
    st = target.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    second = load_images(tmp_path / "imgs", cache_dir=cache)
    assert not torch.equal(second.images, first.images)
    assert int(second.images[3].min()) == int(second.images[3].max()) == 7  # dog/001 is the 4th image


def test_cache_ignores_a_corrupt_file(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "imgs", {"train": 1})
    cache = tmp_path / "cache"
    first = load_images(tmp_path / "imgs", cache_dir=cache)
    (entry,) = cache.glob("*.npz")
    entry.write_bytes(b"garbage")
    assert torch.equal(load_images(tmp_path / "imgs", cache_dir=cache).images, first.images)


# ----------------------------------------------------------------------------------------------------------------
# Augmentation
# ----------------------------------------------------------------------------------------------------------------


def reference_crop_flip(images: torch.Tensor, params: torch.Tensor, padding: int) -> torch.Tensor:
    """Per-sample loop: pad with zeros, crop H x W at (dy, dx), then flip left-right."""
    n, c, h, w = images.shape
    out = torch.empty_like(images)
    for i in range(n):
        padded = torch.zeros((c, h + 2 * padding, w + 2 * padding), dtype=images.dtype)
        padded[:, padding : padding + h, padding : padding + w] = images[i]
        dy, dx, fl = (int(v) for v in params[i])
        crop = padded[:, dy : dy + h, dx : dx + w]
        out[i] = crop.flip(-1) if fl else crop
    return out


def test_crop_flip_identity_flip_and_shift() -> None:
    images = torch.randint(1, 256, (4, 3, 8, 10), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    aug = RandomCropFlip(padding=4)
    center = torch.tensor([[4, 4, 0]] * 4)
    assert torch.equal(aug.apply(images, center), images)
    assert torch.equal(aug.apply(images, torch.tensor([[4, 4, 1]] * 4)), images.flip(-1))
    shifted = aug.apply(images, torch.tensor([[0, 0, 0]] * 4))
    assert torch.equal(shifted[:, :, 4:, 4:], images[:, :, :-4, :-4])
    assert int(shifted[:, :, :4].abs().sum()) == 0 and int(shifted[:, :, :, :4].abs().sum()) == 0
    far = aug.apply(images, torch.tensor([[8, 8, 0]] * 4))
    assert torch.equal(far[:, :, :-4, :-4], images[:, :, 4:, 4:])
    assert int(far[:, :, -4:].sum()) == 0


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32, torch.float64, torch.int16])
def test_crop_flip_matches_reference_loop(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(5)
    images = (torch.rand(33, 3, 7, 9, generator=gen) * 255).to(dtype)
    aug = RandomCropFlip(padding=3)
    params = aug.sample(33, torch.Generator().manual_seed(1))
    out = aug.apply(images, params)
    assert out.dtype == dtype and out.shape == images.shape
    assert torch.equal(out, reference_crop_flip(images, params, 3))


def test_crop_flip_sampling_is_replayable() -> None:
    aug = RandomCropFlip(padding=4)
    a = aug.sample(256, torch.Generator().manual_seed(7))
    b = aug.sample(256, torch.Generator().manual_seed(7))
    assert a.dtype == torch.int64 and a.shape == (256, 3) and torch.equal(a, b)
    assert int(a[:, :2].min()) == 0 and int(a[:, :2].max()) == 8 and set(a[:, 2].tolist()) == {0, 1}
    assert not torch.equal(a, aug.sample(256, torch.Generator().manual_seed(8)))
    no_flip = RandomCropFlip(padding=4, flip=False).sample(256, torch.Generator().manual_seed(7))
    assert torch.equal(no_flip[:, :2], a[:, :2]) and int(no_flip[:, 2].abs().sum()) == 0
    images = torch.randint(0, 256, (256, 3, 32, 32), dtype=torch.uint8)
    x = aug(images, torch.Generator().manual_seed(7))
    assert torch.equal(x, aug.apply(images, a))
    with pytest.raises(ValueError, match=r"\[0, 8\]"):
        aug.apply(images[:1], torch.tensor([[9, 0, 0]]))
    with pytest.raises(ValueError, match="params must have shape"):
        aug.apply(images, a[:5])


def test_crop_with_size() -> None:
    images = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).view(2, 1, 6, 6)
    aug = RandomCropFlip(padding=1, size=4)
    out = aug.apply(images, torch.tensor([[1, 1, 0], [0, 2, 1]]))
    assert out.shape == (2, 1, 4, 4)
    assert torch.equal(out[0], images[0, :, 1:5, 1:5])
    assert torch.equal(out[1], images[1, :, 0:4, 2:6].flip(-1))


def test_normalize() -> None:
    images = torch.randint(0, 256, (4, 3, 5, 5), dtype=torch.uint8)
    norm = Normalize(CIFAR10_MEAN, CIFAR10_STD)
    out = norm(images)
    mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, (images.float() / 255 - mean) / std)
    torch.testing.assert_close(norm(images.float() / 255), out)
    torch.testing.assert_close(norm(images[0]), out[0])
    assert IMAGENET_MEAN == (0.485, 0.456, 0.406) and IMAGENET_STD == (0.229, 0.224, 0.225)
    with pytest.raises(ValueError, match="channels"):
        norm(images[:, :1])


# ----------------------------------------------------------------------------------------------------------------
# The real CIFAR-10 JPEG archive in shared/
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.skipif(not CIFAR10_JPEG.is_file(), reason=f"real CIFAR-10 JPEG archive not found at {CIFAR10_JPEG}")
def test_shared_cifar10_jpeg_test_split() -> None:
    data = load_images(CIFAR10_JPEG, split="test")
    assert data.images.shape == (10_000, 3, 32, 32)
    assert data.classes == CIFAR10_CLASSES
    assert torch.bincount(data.labels, minlength=10).tolist() == [1000] * 10
    mean = data.images.float().mean(dim=(0, 2, 3)) / 255
    torch.testing.assert_close(mean, torch.tensor(CIFAR10_MEAN), atol=0.01, rtol=0)


# -- every README format as data.train from YAML (issue 23: image_size=None reached loaders without the option) ---
def _yaml_formats(tmp_path: Path) -> dict[str, tuple[Path, int]]:
    """{format: (path, training examples)} for each format the README lists for data.train."""
    write_cifar10(tmp_path / "c10")
    write_cifar100(tmp_path / "c100")
    arrays = np.random.default_rng(5).integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "x.npz", images=arrays, labels=np.array([0, 1, 2, 0, 1, 2]))
    np.savez(tmp_path / "split.npz", x_train=arrays, y_train=np.arange(6) % 3, x_test=arrays[:3],
             y_test=np.arange(3))
    write_image_folder(tmp_path / "folder", {"train": 2, "test": 1})
    tar_folder(tmp_path / "folder", tmp_path / "images.tar.gz", "images")
    return {
        "cifar10_folder": (tmp_path / "c10" / "cifar-10-batches-py", 30),
        "cifar10_archive": (tar_folder(tmp_path / "c10" / "cifar-10-batches-py", tmp_path / "cifar-10-python.tar.gz",
                                       "cifar-10-batches-py"), 30),
        "cifar100_folder": (tmp_path / "c100", 9),
        "npz": (tmp_path / "x.npz", 6),
        "npz_splits": (tmp_path / "split.npz", 6),
        "image_folder": (tmp_path / "folder", 6),
        "image_tar": (tmp_path / "images.tar.gz", 6),
    }


@pytest.mark.parametrize("fmt", ["cifar10_folder", "cifar10_archive", "cifar100_folder", "npz", "npz_splits",
                                 "image_folder", "image_tar"])
@pytest.mark.parametrize("image_size", [None, 12])
def test_every_readme_format_loads_from_yaml(tmp_path: Path, fmt: str, image_size: int | None) -> None:
    import yaml

    from distill.config import load_config
    from distill.tasks.image.data import load_image_data

    path, n = _yaml_formats(tmp_path)[fmt]
    data: dict[str, object] = {"train": str(path), "eval": str(path),
                               "eval_split": "train" if fmt == "npz" else "test"}  # plain npz: no splits
    if image_size is not None:
        data["image_size"] = image_size
    if fmt.startswith("image"):
        data["cache_dir"] = str(tmp_path / "decoded")
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "run"), "data": data,
                                        "student": {"arch": "resnet20"}, "methods": [{"name": "ce"}]}))
    train, test, _ = load_image_data(load_config(cfg_file))
    assert len(train) == n and test is not None and len(test) > 0
    side = image_size or {"image_folder": 6, "image_tar": 6, "npz": 8, "npz_splits": 8}.get(fmt, 32)
    assert train.images.shape[2] == side and test.images.shape[2] == side
    if image_size is None and fmt == "npz_splits":
        assert torch.equal(train.images, torch.from_numpy(np.load(path)["x_train"]).permute(0, 3, 1, 2))


def test_resize_of_arrays_matches_the_image_decoder(tmp_path: Path) -> None:
    """npz/CIFAR arrays resized after loading equal images decoded from files with the same image_size."""
    write_image_folder(tmp_path / "f", {"train": 2}, size=(8, 6))
    decoded = load_images(tmp_path / "f", split="train", image_size=5)
    raw = load_images(tmp_path / "f", split="train")
    from distill.data.images import resize_images

    assert torch.equal(resize_images(raw, 5).images, decoded.images)


def test_a_flat_class_folder_is_the_eval_set_with_eval_split_null(tmp_path):
    from PIL import Image

    from distill.config import ConfigError, parse_config
    from distill.experiment import build_experiment

    for root in ("train", "flat"):
        for c, colour in (("cat", 0), ("dog", 255)):
            (tmp_path / root / c).mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (8, 8), (colour, i * 10, 0)).save(tmp_path / root / c / f"{i}.png")
    raw = {"output_dir": str(tmp_path / "run"), "data": {"train": "train", "eval": "flat"},
           "student": {"arch": "resnet8x4"}, "methods": [{"name": "ce"}],
           "train": {"epochs": 1, "batch_size": 4, "progress": False}}
    with pytest.raises(ConfigError, match=r"^data\.eval: .*give the split as null"):
        build_experiment(parse_config(raw, base_dir=tmp_path))
    raw["data"]["eval_split"] = None
    exp = build_experiment(parse_config(raw, base_dir=tmp_path))
    assert len(exp.eval_data) == 6
