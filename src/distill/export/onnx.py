"""``distill export --format onnx``: ``torch.onnx.export`` of a student, checked with onnxruntime when installed."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn


@dataclass
class OnnxSpec:
    """What a family gives the ONNX exporter: the module to trace (called with the inputs in order), named example
    inputs, and which axes of each input and output may change size (e.g. ``{"input_ids": {0: "batch"}}``)."""

    module: nn.Module
    inputs: dict[str, torch.Tensor]
    dynamic_axes: dict[str, dict[int, str]] = field(default_factory=dict)
    output_names: tuple[str, ...] = ("logits",)
    #: a sentence for the model card on what the inputs are (e.g. "normalised pixels, N x 3 x 32 x 32")
    note: str = ""


class ArgsModule(nn.Module):
    """Calls ``fn(model, *inputs)``: adapts a student's call convention to plain tensors in, logits out."""

    def __init__(self, model: nn.Module, fn: Any):
        super().__init__()
        self.model = model
        self.fn = fn

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.fn(self.model, *inputs)


def export_onnx(spec: OnnxSpec, path: Path, opset: int = 17) -> None:
    """Write ``spec.module`` to ``path`` (the TorchScript-based exporter, which needs no extra package; torch's
    newer exporter, which needs onnxscript, when the former is gone)."""
    try:
        import onnx  # noqa: F401
    except ImportError:
        from distill.export.run import ExportError

        raise ExportError("--format onnx: needs the onnx package: pip install 'distill[export]'") from None
    module = spec.module.eval()
    args = tuple(spec.inputs.values())
    kwargs: dict[str, Any] = {"input_names": list(spec.inputs), "output_names": list(spec.output_names),
                              "dynamic_axes": spec.dynamic_axes, "opset_version": opset}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(module, args, str(path), dynamo=False, **kwargs)
        except TypeError:  # a torch without the TorchScript exporter's switch
            torch.onnx.export(module, args, str(path), **kwargs)


def check_onnx(spec: OnnxSpec, path: Path, atol: float = 1e-4) -> float | None:
    """The largest absolute difference between onnxruntime's and PyTorch's outputs on the example inputs, or None
    when onnxruntime is not installed. Raises ``ValueError`` past ``atol`` (relative to the outputs' scale)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {k: v.numpy() for k, v in spec.inputs.items()})[0]
    with torch.no_grad():
        want = spec.module.eval()(*spec.inputs.values()).float().numpy()
    diff = float(abs(got - want).max())
    scale = max(1.0, float(abs(want).max()))
    if diff > atol * scale:
        raise ValueError(f"{path}: onnxruntime differs from PyTorch by {diff:.3g} (tolerance {atol * scale:.3g})")
    return diff
