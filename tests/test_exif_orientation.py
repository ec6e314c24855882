"""Photos carrying an EXIF Orientation tag (phones, cameras) load as they are displayed, in every reader of user
image files: the classification folder / archive / table decoder, segmentation images and masks, super-resolution
and anomaly folders. Images without the tag load exactly as before (same pixels, the fast JPEG path)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from distill.data import images as images_mod
from distill.data.images import load_image_folder, load_images, upright

ORIENTATION = 0x0112


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    return exif.tobytes()


def _save(path: Path | io.BytesIO, arr: np.ndarray, orientation: int | None, fmt: str = "JPEG") -> None:
    kw = {"exif": _exif(orientation)} if orientation is not None else {}
    if fmt == "JPEG":
        kw["quality"] = 95
    Image.fromarray(arr).save(path, fmt, **kw)


def _stored(path: Path | bytes) -> np.ndarray:
    """The pixels as stored in the file (Pillow's plain decode, the tag not applied), H x W x 3."""
    src = io.BytesIO(path) if isinstance(path, bytes) else path
    with Image.open(src) as im:
        return np.asarray(im.convert("RGB"))


def _displayed(stored: np.ndarray, orientation: int) -> np.ndarray:
    """What a viewer shows for each tag, written with numpy (not with the code under test)."""
    return {1: stored, 2: stored[:, ::-1], 3: stored[::-1, ::-1], 4: stored[::-1],
            5: np.swapaxes(stored, 0, 1), 6: np.rot90(stored, -1), 7: np.rot90(stored, -1)[::-1],
            8: np.rot90(stored, 1)}[orientation]


def _rng_image(h: int, w: int, seed: int) -> np.ndarray:
    # smooth gradients plus a little noise: survives JPEG, and every orientation gives different pixels
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([yy * 255 // max(h - 1, 1), xx * 255 // max(w - 1, 1), (yy + 2 * xx) % 256], -1)
    noise = np.random.default_rng(seed).integers(0, 20, (h, w, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_the_decoder_turns_every_orientation_as_a_viewer_shows_it(orientation: int) -> None:
    buf = io.BytesIO()
    _save(buf, _rng_image(6, 10, orientation), orientation)
    data = buf.getvalue()
    assert images_mod._jpeg_rgb_size(data) is None  # an EXIF block leaves the fast path
    out = images_mod._decode_image(data, "x.jpg", None)
    expect = _displayed(_stored(data), orientation)
    assert out.shape == expect.shape == ((6, 10, 3) if orientation <= 4 else (10, 6, 3))
    np.testing.assert_array_equal(out, expect)
    with Image.open(io.BytesIO(data)) as im:  # the helper agrees with Pillow's own exif_transpose
        np.testing.assert_array_equal(out, np.asarray(ImageOps.exif_transpose(im).convert("RGB")))


def test_images_without_the_tag_are_untouched_and_keep_the_fast_path() -> None:
    buf = io.BytesIO()
    _save(buf, _rng_image(6, 10, 0), None)
    data = buf.getvalue()
    assert images_mod._jpeg_rgb_size(data) == (10, 6)
    np.testing.assert_array_equal(images_mod._decode_image(data, "x.jpg", None), _stored(data))
    with Image.open(io.BytesIO(data)) as im:
        assert upright(im) is im


def test_classification_folder_tar_and_cache_load_photos_upright(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
    # a portrait phone photo stored landscape (12 x 20) with tag 6, displayed 20 x 12 like the others
    _save(root / "cat" / "a.jpg", _rng_image(12, 20, 1), 6)
    _save(root / "dog" / "b.jpg", _rng_image(20, 12, 2), None)
    _save(root / "dog" / "c.jpg", _rng_image(20, 12, 3), 3)
    _save(root / "dog" / "d.png", _rng_image(20, 12, 4), None, "PNG")
    expect = [_displayed(_stored(root / "cat" / "a.jpg"), 6), _stored(root / "dog" / "b.jpg"),
              _displayed(_stored(root / "dog" / "c.jpg"), 3), _stored(root / "dog" / "d.png")]
    data = load_image_folder(root, num_workers=1)
    assert tuple(data.images.shape) == (4, 3, 20, 12) and data.labels.tolist() == [0, 1, 1, 1]
    for got, want in zip(data.images, expect, strict=True):
        np.testing.assert_array_equal(got.permute(1, 2, 0).numpy(), want)
    # the same from a tar archive of the folder, and through the cached reader (a cache written before the tag
    # was applied, version 1, is not reused)
    archive = tmp_path / "photos.tar"
    with tarfile.open(archive, "w") as tf:
        tf.add(root, arcname="photos")
    assert np.array_equal(load_images(archive, split=None).images.numpy(), data.images.numpy())
    cached = load_images(root, split=None, cache_dir=tmp_path / "cache")
    again = load_images(root, split=None, cache_dir=tmp_path / "cache")
    assert np.array_equal(cached.images.numpy(), data.images.numpy())
    assert np.array_equal(again.images.numpy(), data.images.numpy())


def test_segmentation_image_is_turned_so_its_mask_lines_up(tmp_path: Path) -> None:
    from distill.tasks.segmentation.data import read_mask_folders

    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    # a square photo (the size check cannot catch it) stored sideways with tag 8; the mask was drawn on the
    # displayed photo: left half class 1, right half class 2
    _save(tmp_path / "images" / "a.jpg", _rng_image(8, 8, 5), 8)
    mask = np.ones((8, 8), np.uint8)
    mask[:, 4:] = 2
    Image.fromarray(mask).save(tmp_path / "masks" / "a.png")
    # a second mask stored sideways too, with its own orientation tag (PNG eXIf): it follows the same rule
    _save(tmp_path / "images" / "b.jpg", _rng_image(8, 8, 6), None)
    _save(tmp_path / "masks" / "b.png", np.ascontiguousarray(np.rot90(mask, -1)), 8, "PNG")
    data = read_mask_folders(tmp_path, "data.train")
    np.testing.assert_array_equal(data.images[0].permute(1, 2, 0).numpy(),
                                  _displayed(_stored(tmp_path / "images" / "a.jpg"), 8))
    np.testing.assert_array_equal(data.masks[0].numpy(), mask)
    np.testing.assert_array_equal(data.images[1].permute(1, 2, 0).numpy(), _stored(tmp_path / "images" / "b.jpg"))
    np.testing.assert_array_equal(data.masks[1].numpy(), mask)
    assert data.num_classes == 3


def test_super_resolution_and_anomaly_folders_load_photos_upright(tmp_path: Path) -> None:
    from distill.tasks.anomaly.data import read_mvtec_folder
    from distill.tasks.super_resolution.data import read_pair_folder

    sr = tmp_path / "sr"
    sr.mkdir()
    _save(sr / "a.jpg", _rng_image(8, 16, 7), 6)
    pairs = read_pair_folder(sr, 2, "data.train")
    np.testing.assert_array_equal(pairs.hr[0].permute(1, 2, 0).numpy(), _displayed(_stored(sr / "a.jpg"), 6))

    mv = tmp_path / "bottle"
    for sub in ("train/good", "test/good", "test/crack", "ground_truth/crack"):
        (mv / sub).mkdir(parents=True)
    for sub in ("train/good", "test/good"):
        _save(mv / sub / "000.png", _rng_image(16, 24, 8), None, "PNG")
    # the defective photo is stored 24 x 16 with tag 6 (displayed 16 x 24); its mask was drawn on the displayed one
    _save(mv / "test" / "crack" / "000.jpg", _rng_image(24, 16, 9), 6)
    m = np.zeros((16, 24), np.uint8)
    m[2:6, 3:9] = 255
    Image.fromarray(m).save(mv / "ground_truth" / "crack" / "000_mask.png")
    _, evald = read_mvtec_folder(mv, 16)
    assert evald is not None
    shown = Image.fromarray(_displayed(_stored(mv / "test" / "crack" / "000.jpg"), 6))
    want = np.asarray(shown.resize((16, 16), Image.BILINEAR)).transpose(2, 0, 1)
    crack = 0  # test/crack sorts before test/good
    np.testing.assert_array_equal(evald.images[crack].numpy(), want)
    assert int(evald.masks[crack].sum()) > 0
