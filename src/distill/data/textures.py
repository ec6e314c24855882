"""Texture photographs bundled with scikit-image (``brick``, ``grass``, ``gravel``, ...), as float arrays.

Shared by the families that build real-image data from them: TexMosaic segmentation
(:mod:`distill.tasks.segmentation.data`), texture crops for super-resolution and the anomaly-detection family.
The images ship inside the scikit-image wheel (``skimage/data/*.png``), so nothing is downloaded; scikit-image
is the optional extra ``vision`` (``pip install distill[vision]``).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

#: the 512 x 512 grayscale texture photographs of ``skimage.data`` (the TexMosaic classes, in this order)
TEXTURES: tuple[str, ...] = ("brick", "grass", "gravel")


def _skimage_data():  # noqa: ANN202
    try:
        from skimage import data
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("the texture images come with scikit-image: pip install 'distill[vision]' "
                          "(or pip install scikit-image)") from e
    return data


def load_texture(name: str) -> np.ndarray:
    """The scikit-image image ``name`` as float32 in [0, 1]: (H, W) for grayscale, (H, W, 3) for colour."""
    data = _skimage_data()
    fn = getattr(data, name, None)
    if fn is None or name.startswith("_") or not callable(fn):
        raise ValueError(f"unknown scikit-image texture {name!r}; e.g. {', '.join(TEXTURES)}")
    img = np.asarray(fn())
    if img.dtype == np.uint8:
        out = img.astype(np.float32) / 255.0
    elif img.dtype == np.uint16:
        out = img.astype(np.float32) / 65535.0
    else:
        out = img.astype(np.float32)
        if out.max() > 1.0:
            out = out / out.max()
    if out.ndim == 3 and out.shape[-1] == 4:  # drop alpha
        out = out[..., :3]
    return np.ascontiguousarray(out)


def load_textures(names: Iterable[str] = TEXTURES) -> dict[str, np.ndarray]:
    """``{name: float32 array in [0, 1]}`` for each requested scikit-image image (default: brick, grass, gravel,
    each 512 x 512 grayscale)."""
    return {n: load_texture(n) for n in names}


def row_split(image: np.ndarray, split: str, boundary: int = 320) -> np.ndarray:
    """The rows of ``image`` that a split may crop from: ``train`` rows [0, boundary), ``test`` rows
    [boundary, H) (TexMosaic: 0-319 and 320-511, so no pixel is shared between the splits)."""
    if split == "train":
        return image[:boundary]
    if split == "test":
        return image[boundary:]
    raise ValueError(f"split must be 'train' or 'test', got {split!r}")
