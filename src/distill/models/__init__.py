"""Reference architectures, chosen by name, plus a loader for the pretrained CIFAR-10 ResNets.

>>> model = build_model("resnet8x4", num_classes=100)
>>> model.feature_taps["f2"]          # dotted module name a forward hook can tap
'layer2'

Every model's ``forward(x)`` returns logits only; its ``feature_taps`` maps the conventional names
``f0``..``f3`` (``f4`` for five-stage models), ``pooled`` and, where meaningful, ``fK_pre`` (before the
stage's last ReLU) to module names, with a ``:input`` suffix when the feature is that module's input.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from .cifar_mobilenetv2 import CifarMobileNetV2, mobilenetv2
from .cifar_resnet import (
    CifarResNet,
    CifarResNetB,
    CifarResNetDepths,
    resnet8x4,
    resnet20,
    resnet32,
    resnet32x4,
    resnet44,
    resnet56,
    resnet110,
    resnet_depths,
)
from .cifar_shufflenetv2 import CifarShuffleNetV2, shufflenetv2
from .cifar_vgg import CifarVGG, vgg8, vgg11, vgg13, vgg16, vgg19
from .cifar_wrn import WideResNet, wrn, wrn_16_1, wrn_16_2, wrn_40_1, wrn_40_2
from .text_students import BiLSTMClassifier, TextCNN, TransformerClassifier, bilstm, minilm, minilm_truncated, textcnn
from .vit import VisionTransformer, vit, vit_micro, vit_tiny
from .weights import _short, load_state_dict_checked, read_state_dict

__all__ = [
    "MODELS",
    "TEXT_MODELS",
    "CifarMobileNetV2",
    "CifarResNet",
    "CifarResNetB",
    "CifarResNetDepths",
    "BiLSTMClassifier",
    "CifarShuffleNetV2",
    "TextCNN",
    "TransformerClassifier",
    "VisionTransformer",
    "CifarVGG",
    "WideResNet",
    "build_model",
    "list_models",
    "load_pretrained_cifar_resnet",
    "register_model",
]

MODELS: dict[str, Callable[..., nn.Module]] = {
    "resnet20": resnet20,
    "resnet32": resnet32,
    "resnet44": resnet44,
    "resnet56": resnet56,
    "resnet110": resnet110,
    "resnet_depths": resnet_depths,
    "resnet8x4": resnet8x4,
    "resnet32x4": resnet32x4,
    "wrn": wrn,
    "wrn_16_1": wrn_16_1,
    "wrn_16_2": wrn_16_2,
    "wrn_40_1": wrn_40_1,
    "wrn_40_2": wrn_40_2,
    "vgg8": vgg8,
    "vgg11": vgg11,
    "vgg13": vgg13,
    "vgg16": vgg16,
    "vgg19": vgg19,
    "mobilenetv2": mobilenetv2,
    "shufflenetv2": shufflenetv2,
    "vit": vit,
    "vit_tiny": vit_tiny,
    "vit_micro": vit_micro,
}

#: sentence classifiers, called as ``model(input_ids, attention_mask)`` (see :mod:`.text_students`)
TEXT_MODELS: dict[str, Callable[..., nn.Module]] = {
    "bilstm": bilstm,
    "textcnn": textcnn,
    "minilm": minilm,
    "minilm_truncated": minilm_truncated,
}


def register_model(task: str, name: str, builder: Callable[..., nn.Module] | None = None) -> Any:
    """Add ``builder`` under ``name`` to the models of task family ``task`` (``image_classification``,
    ``text_classification``, ``vector_classification``, ``graph_node_classification``), so that ``arch: NAME``
    builds it. The builder is called like the family's own models (image: ``builder(num_classes=K, **options)``;
    text: ``builder(num_classes=K, **options)`` called with ``(input_ids, attention_mask)``; vectors:
    ``builder(in_features, num_classes, **options)``; graph: ``builder(in_channels, num_classes, **options)``) and
    its keyword arguments are the config's ``options``. Without ``builder``: a decorator. Refused
    (``ValueError``): an unknown task, a family without named models, a name already taken."""
    from distill.core.family import FAMILIES

    if task not in FAMILIES:
        raise ValueError(f"register_model: unknown task {task!r}; allowed: {', '.join(FAMILIES.names())}")
    table = FAMILIES.get(task).model_table()
    if table is None:
        with_tables = [f.name for f in FAMILIES if f.model_table() is not None]
        raise ValueError(f"register_model: task {task!r} does not choose its models by name; allowed: "
                         f"{', '.join(with_tables)}")

    def add(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if not callable(fn):
            raise ValueError(f"register_model({task!r}, {name!r}): the builder must be callable")
        if name in table and table[name] is not fn:
            raise ValueError(f"register_model: {task} model {name!r} is registered already")
        table[name] = fn
        return fn

    return add(builder) if builder is not None else add


def list_models() -> list[str]:
    """Image-model names accepted by :func:`build_model`, sorted (sentence classifiers: ``TEXT_MODELS``)."""
    return sorted(MODELS)


def build_model(name: str, num_classes: int = 10, **kwargs: Any) -> nn.Module:
    """Build the registered model ``name`` with a ``num_classes``-way classifier; kwargs go to its builder."""
    builder = MODELS.get(name) or TEXT_MODELS.get(name)
    if builder is None:
        raise ValueError(f"unknown model {name!r}; allowed: {', '.join(list_models() + sorted(TEXT_MODELS))}")
    return builder(num_classes=num_classes, **kwargs)


_CIFAR_RESNET_DEPTHS = {6 * n + 2: f"resnet{6 * n + 2}" for n in (3, 5, 7, 9, 18)}


def load_pretrained_cifar_resnet(path: str | Path, arch: str | None = None) -> nn.Module:
    """Load a CIFAR ResNet checkpoint (akamaster/pytorch_resnet_cifar10 format) strictly, in eval mode.

    ``path`` is a ``torch.save`` file (a dict with ``"state_dict"``, or a bare state dict; a DataParallel
    ``module.`` prefix is stripped) or a ``.safetensors`` file. ``arch`` defaults to ``resnet{6n+2}`` with
    ``n`` the number of blocks in ``layer1``; any registered name can be given (e.g. a RepDistiller
    ``resnet8x4``). The number of classes is read from the classifier weight. BatchNorm
    ``num_batches_tracked`` counters, which checkpoints from old PyTorch versions lack, are filled with zeros;
    every other key must match exactly, else a ``ValueError`` names the missing and unexpected keys.
    """
    path = Path(path)
    sd = read_state_dict(path)
    if arch is None:
        blocks = {k.split(".")[1] for k in sd if k.startswith("layer1.") and k.split(".")[1].isdigit()}
        depth = 6 * len(blocks) + 2
        if depth not in _CIFAR_RESNET_DEPTHS:
            raise ValueError(
                f"{path}: cannot infer a CIFAR ResNet from {len(blocks)} blocks in layer1 "
                f"(keys start: {_short(list(sd))}); pass arch="
            )
        arch = _CIFAR_RESNET_DEPTHS[depth]
    head = next((k for k in ("linear.weight", "fc.weight", "classifier.weight") if k in sd), None)
    if head is None:
        raise ValueError(f"{path}: no classifier weight (linear.weight / fc.weight) among {_short(list(sd))}")
    model = build_model(arch, num_classes=int(sd[head].shape[0]))
    load_state_dict_checked(model, sd, f"{path} ({arch})")
    return model.eval()
