"""Capture any module's output (or input) by its dotted name through forward hooks.

A tap name is ``"layer2"`` (the output of ``model.get_submodule("layer2")``), ``"layer2.1.conv2"`` (a nested
module) or ``"fc:input"`` (the first positional input of ``fc``). Models are never edited or subclassed: the
hooks are added for one forward pass and removed afterwards. Works on plain ``nn.Module``s and on Hugging Face
models alike; for modules that return tuples (transformer blocks), the first element is taken.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn


def parse_tap(name: str) -> tuple[str, str]:
    """Split ``"module.path:input"`` into ``("module.path", "input")``; the default kind is ``output``."""
    path, _, kind = name.partition(":")
    kind = kind or "output"
    if kind not in ("input", "output"):
        raise ValueError(f"tap {name!r}: suffix must be ':input' or ':output', got ':{kind}'")
    return path, kind


def resolve_module(model: nn.Module, path: str) -> nn.Module:
    """``model.get_submodule(path)`` with an error that suggests close names."""
    if path in ("", "."):
        return model
    try:
        return model.get_submodule(path)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n]
        head = path.split(".")[0]
        close = [n for n in names if n.startswith(head)][:8] or names[:8]
        raise ValueError(
            f"no module {path!r} in {type(model).__name__}; modules include: {', '.join(close)}"
        ) from None


def _first_tensor(value: object) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        return value[0]
    if hasattr(value, "last_hidden_state"):
        return value.last_hidden_state  # type: ignore[no-any-return]
    if isinstance(value, dict) and value:
        first = next(iter(value.values()))
        if isinstance(first, torch.Tensor):
            return first
    raise TypeError(f"tapped module produced {type(value).__name__}, which holds no tensor to capture")


def expand_aliases(names: Iterable[str], aliases: dict[str, str] | None) -> dict[str, str]:
    """Map each requested name to a concrete tap, through a model's alias table (e.g. ``f2 -> layer2``)."""
    aliases = aliases or {}
    return {name: aliases.get(name, name) for name in names}


class FeatureTaps:
    """Forward hooks that collect named features from one model during a forward pass.

    >>> taps = FeatureTaps(model, ["layer1", "fc:input"])
    >>> with taps.capture() as feats:
    ...     logits = model(x)
    >>> feats["layer1"].shape
    """

    def __init__(self, model: nn.Module, names: Sequence[str], aliases: dict[str, str] | None = None):
        self.model = model
        self.names = list(dict.fromkeys(names))
        if aliases is None:
            aliases = getattr(model, "feature_taps", None)
        self.concrete = expand_aliases(self.names, aliases)
        self._targets: list[tuple[str, nn.Module, str]] = []
        for name, tap in self.concrete.items():
            path, kind = parse_tap(tap)
            self._targets.append((name, resolve_module(model, path), kind))

    @contextmanager
    def capture(self) -> Iterator[dict[str, torch.Tensor]]:
        captured: dict[str, torch.Tensor] = {}
        handles = []
        for name, module, kind in self._targets:
            if kind == "output":
                def hook(_m, _inp, out, name=name):
                    captured[name] = _first_tensor(out)
                handles.append(module.register_forward_hook(hook))
            else:
                def pre_hook(_m, inp, name=name):
                    captured[name] = _first_tensor(inp)
                handles.append(module.register_forward_pre_hook(pre_hook))
        try:
            yield captured
        finally:
            for h in handles:
                h.remove()
        missing = [n for n in self.names if n not in captured]
        if missing:
            raise RuntimeError(
                f"taps {missing} never fired: those modules were not called in the forward pass"
            )
