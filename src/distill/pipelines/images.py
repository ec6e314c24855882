"""What the image stages share: an image file and its class-balanced pool/test subsets (:class:`ImageSource`),
a CIFAR model with its weights (:class:`TeacherSpec`), normalisation and flip-pair logits."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from pydantic import Field

from distill.config import ConfigError, Strict
from distill.pipelines.stage import StageContext, file_identity

__all__ = ["ImageSource", "TeacherSpec", "build_cifar_model", "load_source", "model_logits", "normalise",
           "source_identity", "stage_prologue"]


class ImageSource(Strict):
    """A labelled image file (CIFAR-10 JPEG tar, folder, npz, python batches) and the class-balanced subsets a
    stage uses: ``pool_per_class`` of ``train_split`` and ``test_per_class`` of ``test_split`` (null: all),
    drawn with ``subset_seed``. ``cache_dir``: where decoded images are kept (not part of the fingerprint)."""

    path: str
    train_split: str = "train"
    test_split: str = "test"
    pool_per_class: int | None = Field(None, gt=0)
    test_per_class: int | None = Field(None, gt=0)
    subset_seed: int = 0
    cache_dir: str | None = None


class TeacherSpec(Strict):
    """A CIFAR model of :data:`distill.models.MODELS`: ``arch``, ``options`` and ``weights`` (a safetensors or
    weights-only torch file, ``builtin:...``, or ``random``)."""

    arch: str = "resnet56"
    options: dict[str, Any] = Field(default_factory=dict)
    weights: str = "builtin:resnet56_cifar10_jpeg.safetensors"


def source_identity(ctx: StageContext, src: ImageSource) -> dict[str, str]:
    return {"data#file": file_identity(src.path, ctx.base_dir)}


def load_source(ctx: StageContext, src: ImageSource, split: str) -> tuple[Any, torch.Tensor]:
    """(images, indices into the full split) of ``split`` (``"train"`` -> the pool, ``"test"``)."""
    from distill.data.images import load_images

    name, per_class = ((src.train_split, src.pool_per_class) if split == "train"
                       else (src.test_split, src.test_per_class))
    data = load_images(ctx.resolve(src.path), split=name, cache_dir=src.cache_dir)
    idx = data.balanced_indices(per_class, src.subset_seed) if per_class else torch.arange(len(data))
    return data.subset(idx), idx


def normalise(images: torch.Tensor) -> torch.Tensor:
    """uint8 N x 3 x H x W -> float, ImageNet mean/std (the akamaster CIFAR ResNets' convention)."""
    from distill.data.augment import IMAGENET_MEAN, IMAGENET_STD

    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean) / std


def build_cifar_model(spec: TeacherSpec, ctx: StageContext, num_classes: int) -> torch.nn.Module:
    from distill.models import MODELS
    from distill.models.weights import load_state_dict_checked, read_state_dict

    if spec.arch not in MODELS:
        raise ConfigError(f"{ctx.name}: teacher.arch: unknown model {spec.arch!r}; allowed: "
                          f"{', '.join(sorted(MODELS))}")
    model = MODELS[spec.arch](num_classes=num_classes, **spec.options)
    if spec.weights != "random":
        path = ctx.resolve(spec.weights)
        load_state_dict_checked(model, read_state_dict(path), str(path))
    return model.eval()


def stage_prologue(ctx: StageContext, seed: int, data: ImageSource, split: str,
                   teachers: Sequence[TeacherSpec] = ()) -> tuple[Any, torch.Tensor, list[torch.nn.Module]]:
    """How an image stage kind's ``run`` starts: torch's global generator seeded with ``seed`` (``random`` teacher
    weights are drawn from it), ``split`` of ``data`` loaded (:func:`load_source`) and each of ``teachers`` built
    for its classes. Returns (images, indices into the full split, the teacher models in eval mode)."""
    torch.manual_seed(seed)
    images, idx = load_source(ctx, data, split)
    return images, idx, [build_cifar_model(t, ctx, images.num_classes) for t in teachers]


@torch.no_grad()
def model_logits(model: torch.nn.Module, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Logits of ``model`` (eval mode) on uint8 ``images``, for the image and its horizontal flip: N x 2 x K."""
    model.eval()
    out = []
    for i in range(0, len(images), batch_size):
        x = normalise(images[i:i + batch_size])
        out.append(torch.stack([model(x), model(x.flip(3))], 1))
    return torch.cat(out)
