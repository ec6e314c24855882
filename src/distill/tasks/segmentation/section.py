"""The ``data:`` section of ``task: semantic_segmentation``."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator

from distill.config import Strict
from distill.tasks.image.section import NormalizeConfig
from distill.train.config import Flag


class TexMosaicConfig(Strict):
    """TexMosaic (docs/data.md, spec group D): ``size`` x ``size`` canvases split into ``min_regions`` to
    ``max_regions`` Voronoi regions, each filled from a random crop of one scikit-image texture (the label of a pixel
    is its texture's index in ``textures``). Training crops come from rows [0, ``split_row``) of each photograph and
    test crops from rows [``split_row``, 512). ``train_size`` mosaics drawn with ``train_seed``; ``eval_size`` with
    ``eval_seed`` (fixed: the test set is the same for every run)."""

    textures: list[str] = Field(default_factory=lambda: ["brick", "grass", "gravel"], min_length=2)
    size: int = Field(64, ge=8, le=512)
    min_regions: int = Field(2, ge=1)
    max_regions: int = Field(4, ge=1)
    split_row: int = Field(320, gt=0)
    train_size: int = Field(2000, gt=0)
    eval_size: int = Field(500, gt=0)
    train_seed: int = 0
    eval_seed: int = 12345


class SegmentationData(Strict):
    """Images with one class label per pixel.

    ``source: texmosaic`` builds the TexMosaic data from scikit-image's texture photographs (``texmosaic``: its
    settings). ``source: folders``: ``train`` (and ``eval``) are folders holding ``images/`` and ``masks/``, one mask
    PNG per image with the same file stem (or the stem + ``_mask``), each mask pixel a class index (``ignore_value``,
    e.g. 255, marks pixels without a label; ``label_map`` maps stored values to classes first, e.g. ``{255: 1}``
    for binary masks saved as 0/255; with ``ignore_value: null`` a mask holding 255 is refused unless ``num_classes``
    covers it); ``num_classes`` is read from the masks (train and eval) unless given. Colour-coded RGB masks
    (CamVid, VOC drawn in colour) need ``mask_colors``, each colour's stored value (``{"0,0,0": 0, "128,0,0": 1,
    "#E0E0C0": 255}``; then ``label_map`` and ``ignore_value`` apply as to a one-channel mask), a colour not listed
    refused naming the file; an RGB mask whose three channels are equal (gray saved as RGB) is read as gray.
    Images and masks are turned upright by their EXIF orientation tag.
    ``image_size`` resizes (images bilinear, masks nearest neighbour), as ``resize`` says; without it every image
    must have the same size (or, streamed, ``crop_size`` is set). ``resize``: ``shorter_side`` (default: the
    shorter side becomes ``image_size``, the aspect ratio kept, as mmsegmentation's ``Resize(keep_ratio=True)``;
    when the resized training images differ in size, training cuts a random ``image_size`` square from each unless
    ``crop_size`` is set, and evaluation scores each whole resized image, a batch padded to its largest image with
    the padding ignored by the loss and the mIoU); ``longer_side_pad`` (the longer side becomes ``image_size``,
    then the image is padded at the bottom and right to ``image_size`` square: black pixels, mask pixels ignored);
    ``stretch`` (``image_size`` square, the aspect ratio lost: the behaviour before this option). On square images
    all three are the same resize.
    ``normalize``: as in ``image_classification`` (``imagenet``: the ResNet mean/std).
    ``crop_size``: training cuts one random ``crop_size`` square from each image and the same square from its mask
    (after ``image_size``; at most ``image_size``), its corner drawn from the run's seeded generator before the
    batch is fetched and the crop cut where the image is read (a loader worker's, streamed); evaluation sees whole
    images.
    ``streaming`` (``folders`` only; the name and idea of ``image_classification``'s): keep the file list and the
    sizes read from the headers, and decode each pair when its batch is fetched (``num_classes`` is then
    required); with ``crop_size`` the training images may have any sizes, and evaluation may mix sizes with
    ``train.eval_batch_size: 1``."""

    source: Literal["texmosaic", "folders"] = "texmosaic"
    texmosaic: TexMosaicConfig = TexMosaicConfig()
    train: str | None = None
    eval: str | None = None
    num_classes: int | None = Field(None, gt=0, le=10_000)
    ignore_value: int | None = 255
    label_map: dict[Annotated[int, Field(ge=0)], Annotated[int, Field(ge=0)]] | None = None
    mask_colors: dict[str, Annotated[int, Field(ge=0)]] | None = None
    image_size: int | None = Field(None, gt=0, le=4096)
    resize: Literal["shorter_side", "longer_side_pad", "stretch"] = "shorter_side"
    normalize: Literal["imagenet", "cifar10"] | NormalizeConfig = "imagenet"
    channels_last: Flag = False
    crop_size: int | None = Field(None, ge=4, le=4096)
    streaming: Flag = False

    @field_validator("mask_colors")
    @classmethod
    def _colors(cls, value: dict[str, int] | None) -> dict[str, int] | None:
        for key in value or {}:
            parse_color(key)
        return value


def parse_color(text: str) -> int:
    """``"R,G,B"`` (0-255 each) or ``"#RRGGBB"`` as one packed integer ``R << 16 | G << 8 | B``."""
    t = text.strip()
    try:
        if t.startswith("#") and len(t) == 7:
            return int(t[1:], 16)
        parts = [int(p) for p in t.split(",")]
        if len(parts) == 3 and all(0 <= p <= 255 for p in parts):
            return parts[0] << 16 | parts[1] << 8 | parts[2]
    except ValueError:
        pass
    raise ValueError(f"colour {text!r}: expected 'R,G,B' (each 0-255) or '#RRGGBB'")
