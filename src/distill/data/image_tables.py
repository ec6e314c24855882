"""Images from a ``datasets`` table (an image folder, parquet, JSONL, CSV or an Arrow folder), decoded per batch.

:class:`TableImages` holds the labels (8 bytes an image) and the memory-mapped table; the pixels of a batch are read
and decoded when the batch is fetched, so memory does not grow with the number of images. It answers what the
image family asks of an :class:`~distill.data.images.ImageArrays` (``images[indices]``, ``labels``, ``classes``,
class-balanced subsets); :meth:`TableImages.to_arrays` decodes everything into memory instead.

The image column may hold ``datasets`` ``Image`` values (``{"bytes", "path"}``), file paths (relative ones are
taken from the table file's folder) or encoded bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distill.data.images import UNLABELED, ImageArrays, _decode_image
from distill.data.tables import check_columns, import_datasets, labels_of


class DataReadError(ValueError):
    """An image of a streamed set that cannot be read or decoded when its batch is fetched; one line naming the
    file (or the table row)."""


class LazyImages:
    """``images[indices]`` of a :class:`TableImages`: decodes the rows asked for into N x C x H x W uint8."""

    def __init__(self, owner: TableImages):
        self.owner = owner

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.owner), *self.owner.image_shape())

    def __len__(self) -> int:
        return len(self.owner)

    def __getitem__(self, indices: Any) -> torch.Tensor:
        idx = torch.arange(len(self.owner))[indices] if not isinstance(indices, torch.Tensor) else indices
        return self.owner.decode(idx.reshape(-1))


@dataclass
class TableImages:
    """Labelled images read from ``table`` (a ``datasets.Dataset``) batch by batch.

    ``rows``: the table rows of this set, in order (a subset keeps its parent's table); ``labels``: int64, one per
    row (``UNLABELED`` for a hidden label); ``identity``: what names the table's content (the ``datasets``
    fingerprint, the column and the size), so that a teacher cache built on it is tied to it."""

    table: Any
    image_column: str
    labels: torch.Tensor
    rows: torch.Tensor
    classes: list[str]
    image_size: int | None = None
    base_dir: str | None = None
    source: str = ""
    identity: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._shape: tuple[int, ...] | None = None

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    def __repr__(self) -> str:
        return f"TableImages({len(self)} images, {self.num_classes} classes, source={self.source!r})"

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def images(self) -> LazyImages:
        return LazyImages(self)

    def image_shape(self) -> tuple[int, ...]:
        """(C, H, W) of the first image (every image must share it, or ``image_size`` resizes them)."""
        if self._shape is None:
            self._shape = tuple(self.decode(torch.zeros(1, dtype=torch.int64)).shape[1:])
        return self._shape

    def _blob(self, value: Any, row: int) -> tuple[bytes, str]:
        if isinstance(value, dict):
            if value.get("bytes"):
                return value["bytes"], value.get("path") or f"row {row}"
            value = value.get("path")
        if isinstance(value, (bytes, bytearray)):
            return bytes(value), f"row {row}"
        if isinstance(value, str) and value:
            path = Path(value)
            if not path.is_absolute() and self.base_dir is not None:
                path = Path(self.base_dir) / path
            return path.read_bytes(), str(path)
        raise ValueError(f"row {row} of column {self.image_column!r} holds no image ({type(value).__name__})")

    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        """The images at ``indices`` (positions in this set) as N x 3 x H x W uint8."""
        rows = self.rows[indices].tolist()
        values = self.table[rows][self.image_column] if rows else []
        arrays = []
        for row, value in zip(rows, values):
            try:
                data, name = self._blob(value, row)
                arrays.append(_decode_image(data, name, self.image_size))
            except (OSError, ValueError) as e:
                first = str(e).splitlines()[0] if str(e) else type(e).__name__
                raise DataReadError(f"data: {self.source}, row {row}: {first}") from None
        if not arrays:
            c, h, w = self.image_shape() if len(self) else (3, 0, 0)
            return torch.zeros((0, c, h, w), dtype=torch.uint8)
        first = arrays[0].shape
        for row, arr in zip(rows, arrays):
            if arr.shape != first:
                raise DataReadError(f"data: {self.source}: images differ in size: row {rows[0]} is "
                                    f"{first[1]}x{first[0]}, row {row} is {arr.shape[1]}x{arr.shape[0]}; set "
                                    "data.image_size to resize them all")
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()

    def with_rows(self, positions: torch.Tensor, labels: torch.Tensor | None = None, note: str = "") -> TableImages:
        positions = positions.to(torch.int64)
        return TableImages(self.table, self.image_column,
                           (self.labels[positions] if labels is None else labels).clone(), self.rows[positions],
                           list(self.classes), self.image_size, self.base_dir, f"{self.source}{note}",
                           list(self.identity))

    def subset(self, indices: Any) -> TableImages:
        idx = torch.as_tensor(np.asarray(indices) if not isinstance(indices, torch.Tensor) else indices)
        if idx.dtype == torch.bool:
            idx = idx.nonzero().flatten()
        return self.with_rows(idx, note=f" [subset of {idx.numel()}]")

    # the class-balanced draws look at the labels only: the same functions as for images held in memory
    balanced_indices = ImageArrays.balanced_indices
    balanced_subset = ImageArrays.balanced_subset
    split_off = ImageArrays.split_off

    def hide_labels(self, keep_per_class: int, seed: int) -> TableImages:
        hidden = torch.ones(len(self), dtype=torch.bool)
        hidden[self.balanced_indices(keep_per_class, seed)] = False
        labels = self.labels.clone()
        labels[hidden] = UNLABELED
        return self.with_rows(torch.arange(len(self)), labels, f" [{keep_per_class} labels per class]")

    def to_arrays(self, chunk: int = 256) -> ImageArrays:
        """Every image decoded into memory."""
        parts = [self.decode(torch.arange(s, min(s + chunk, len(self)))) for s in range(0, len(self), chunk)]
        images = torch.cat(parts) if parts else self.decode(torch.zeros(0, dtype=torch.int64))
        return ImageArrays(images, self.labels.clone(), list(self.classes), self.source)


def table_images(table: Any, path: Path, *, image_column: str, label_column: str, key: str,
                 column_keys: tuple[str, str] = ("data.image_column", "data.label_column"),
                 image_size: int | None = None, classes: list[str] | None = None,
                 integer_labels: str = "strict") -> TableImages:
    """The :class:`TableImages` of a ``datasets`` table read from ``path`` (``key``: the config key of ``path``;
    ``column_keys``: the keys naming the columns, cited when one is missing)."""
    check_columns(table, dict(zip(column_keys, (image_column, label_column))), path)
    feature = table.features[image_column]
    if type(feature).__name__ == "Image":  # keep the encoded bytes or paths; the batch decodes them
        table = table.cast_column(image_column, import_datasets(key).Image(decode=False))
    labels, names = labels_of(table, label_column, key, path, classes, integer_labels)
    base = str(path if path.is_dir() else path.parent)
    identity = [str(getattr(table, "_fingerprint", "")), image_column, label_column, str(image_size)]
    return TableImages(table.select_columns([image_column]), image_column, torch.from_numpy(labels),
                       torch.arange(len(labels), dtype=torch.int64), names, image_size, base, f"table {path}",
                       identity)
