"""The paired-view residual adapter: feature-level exo -> ego transfer in front of a frozen exo model.

Paper: Quattrocchi et al., "Synchronization is All You Need: Exocentric-to-Egocentric Transfer for Temporal Action
Segmentation with Unlabeled Synchronized Video Pairs", ECCV 2024, arXiv:2312.02638; code
github.com/fpv-iplab/synchronization-is-all-you-need (``transformer_and_distillation.py``: the feature-level
variant). Re-implemented from ../shared/methods/dense.md row 7 ("an optional residual-adapter stage").

The exo model f = h o e (``e``: its layers up to the tapped stage, ``h``: the rest and the head) is trained on the
labelled exo view and frozen. An adapter g learns, on unlabelled synchronised pairs and with no label, to move the
frozen features of the ego view onto those of the exo view at the same instant:

    x^v = e(view v),   L = mean( (g(x^ego) + x^ego - x^exo)^2 )          (the paper's MSE(g(x^ego) + x^ego, x^exo))

and at test time the frozen exo model runs on the adapted ego features: y = h(g(x^ego) + x^ego). In ``distill``
the adapter is a stage inserted into the student (``student.adapter`` of ``task: paired_views``); the loss is
``paired_view_kd`` on the adapted tap (student ``f2`` vs the teacher's ``f2``), the teacher being the same exo model
on the exo view.

Adaptations (say so when reporting): the paper's g is an ``nn.Transformer`` (d_model 1024, 16 heads, 12 encoder
and 6 decoder layers) over per-frame DINOv2 features; this file's g is the spec's no-video analogue, a residual
**convolutional** adapter on a CNN's stage maps (dense.md row 7, "Demonstration here"): ``layers`` convolutions of
``kernel`` x ``kernel`` (stride 1, same padding), each but the last followed by BatchNorm and ReLU, the last one
zero-initialised (weight and bias), so that g(x) = 0 and the adapted model is *exactly* the frozen exo model before
the first step (its accuracy at step 0 is the source-only number). The transformer form and its teacher-forced
decoder (the train/test mismatch the spec notes) are not implemented here.

The combined variant of the paper (the trained adapter frozen in front of the model-level student) is
``train: model``: the adapter's weights come from a finished adapter run and stay frozen while the rest of the
model trains under ``paired_view_kd``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from distill.models.weights import read_state_dict

#: what trains: the adapter (the exo model frozen, the paper's feature-level KD) or the model (the adapter frozen,
#: the paper's combined variant)
TRAIN_MODES = ("adapter", "model")
#: the taps the wrapper adds: the frozen stage output before the adapter (x) and the adapter's branch g(x); the
#: tapped stage's own alias (``f2``) then names the adapted map x + g(x) that feeds the rest of the model
ADAPTER_IN, ADAPTER_BRANCH = "adapter_in", "adapter_branch"


class ResidualConvAdapter(nn.Module):
    """g: ``layers`` convolutions (``channels`` -> ``hidden`` -> ... -> ``channels``), BN + ReLU between them, the
    last one zero-initialised. :meth:`forward` returns the branch g(x), not x + g(x)."""

    def __init__(self, channels: int, hidden: int | None = None, kernel: int = 3, layers: int = 2):
        super().__init__()
        if channels < 1:
            raise ValueError(f"channels: must be >= 1, got {channels}")
        if kernel < 1 or kernel % 2 == 0:
            raise ValueError(f"kernel: must be odd and >= 1 (same padding), got {kernel}")
        if layers < 1:
            raise ValueError(f"layers: must be >= 1, got {layers}")
        hidden = int(hidden or channels)
        mods: list[nn.Module] = []
        width = channels
        for _ in range(layers - 1):
            mods += [nn.Conv2d(width, hidden, kernel, padding=kernel // 2, bias=False), nn.BatchNorm2d(hidden),
                     nn.ReLU()]
            width = hidden
        last = nn.Conv2d(width, channels, kernel, padding=kernel // 2, bias=True)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        mods.append(last)
        self.body = nn.Sequential(*mods)
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ValueError(f"the adapter expects (B, {self.channels}, H, W) maps, got {tuple(x.shape)}")
        return self.body(x)


class AdaptedStage(nn.Module):
    """A stage of the exo model followed by the residual adapter: x = stage(input), output x + g(x). The taps
    ``<path>.stage`` (x) and ``<path>.adapter`` (g(x)) read the two parts."""

    def __init__(self, stage: nn.Module, adapter: ResidualConvAdapter):
        super().__init__()
        self.stage = stage
        self.adapter = adapter

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        x = self.stage(*args)
        return x + self.adapter(x)


def stage_channels(stage: nn.Module) -> int:
    """The channel count of a stage's output: that of its last BatchNorm2d or Conv2d (a CNN stage ends with one)."""
    last = None
    for m in stage.modules():
        if isinstance(m, nn.BatchNorm2d):
            last = m.num_features
        elif isinstance(m, nn.Conv2d):
            last = m.out_channels
    if last is None:
        raise ValueError(f"channels: cannot tell the output channels of {type(stage).__name__} (no Conv2d or "
                         "BatchNorm2d in it); give channels")
    return int(last)


def _resolve(model: nn.Module, path: str) -> tuple[nn.Module, str, nn.Module]:
    parent_path, _, name = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    return parent, name, getattr(parent, name)


class PairedViewAdapted(nn.Module):
    """The exo model (``model``) with a :class:`ResidualConvAdapter` after the stage that its tap ``at`` names
    (an output tap such as ``f2`` -> ``layer2``).

    ``train="adapter"``: every parameter of the exo model is frozen (no gradient) and its modules stay in eval mode
    whatever ``train()`` asks (its BatchNorm statistics never move); only the adapter trains. ``train="model"``: the
    adapter is frozen and in eval mode, the rest trains (the combined variant). Taps: the exo model's, renamed below
    ``model.`` (``f2`` is now the adapted map x + g(x)), plus ``adapter_in`` (x) and ``adapter_branch`` (g(x))."""

    def __init__(self, model: nn.Module, at: str = "f2", hidden: int | None = None, kernel: int = 3, layers: int = 2,
                 channels: int | None = None, train: str = "adapter"):
        super().__init__()
        if train not in TRAIN_MODES:
            raise ValueError(f"train: must be one of {', '.join(TRAIN_MODES)}, got {train!r}")
        taps = dict(getattr(model, "feature_taps", None) or {})
        path = taps.get(at, at)
        if ":" in path:
            raise ValueError(f"at: {at!r} is the input tap {path!r}; the adapter goes after a module's output")
        try:
            parent, name, stage = _resolve(model, path)
        except AttributeError:
            raise ValueError(f"at: {at!r} names no module of {type(model).__name__} (taps: "
                             f"{', '.join(taps) or 'none'})") from None
        adapter = ResidualConvAdapter(channels or stage_channels(stage), hidden, kernel, layers)
        setattr(parent, name, AdaptedStage(stage, adapter))
        self.model = model
        self.at, self.stage_path, self.mode = at, path, train

        def moved(tap: str) -> str:
            p, sep, kind = tap.partition(":")
            if p.startswith(path + "."):
                p = f"{path}.stage.{p[len(path) + 1:]}"
            return f"model.{p}{sep}{kind}"

        self.feature_taps = {k: moved(v) for k, v in taps.items()}
        self.feature_taps.setdefault(at, f"model.{path}")
        self.feature_taps[ADAPTER_IN] = f"model.{path}.stage"
        self.feature_taps[ADAPTER_BRANCH] = f"model.{path}.adapter"
        frozen = model if train == "adapter" else adapter
        for p in frozen.parameters():
            p.requires_grad_(False)
        if train == "adapter":
            for p in adapter.parameters():
                p.requires_grad_(True)
        self.train(self.training)

    @property
    def adapter(self) -> ResidualConvAdapter:
        return self.model.get_submodule(self.stage_path).adapter

    def train(self, mode: bool = True) -> PairedViewAdapted:
        super().train(mode)
        if self.mode == "adapter":
            self.model.eval()
            self.adapter.train(mode)
        else:
            self.adapter.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def load_adapter(self, state: Mapping[str, torch.Tensor], source: str = "the adapter weights") -> None:
        """Load the adapter's parameters and buffers from ``state``: a state dict of the adapter alone, or of a
        whole adapted model (a run's ``student.safetensors``), whose keys ``...adapter.<name>`` are taken."""
        own = self.adapter.state_dict()
        picked: dict[str, torch.Tensor] = {}
        for key, value in state.items():
            if key in own:
                picked[key] = value
            elif ".adapter." in key:
                picked[key.rsplit(".adapter.", 1)[1]] = value
        missing = sorted(set(own) - set(picked))
        wrong = [k for k in own if k in picked and picked[k].shape != own[k].shape]
        if missing or wrong:
            raise ValueError(f"{source} does not hold this adapter: missing [{', '.join(missing[:4])}], "
                             f"shape mismatch [{', '.join(wrong[:4])}]")
        self.adapter.load_state_dict({k: picked[k] for k in own}, strict=True)


def load_adapter_file(model: PairedViewAdapted, path: str | Path) -> None:
    """:meth:`PairedViewAdapted.load_adapter` from a safetensors or weights-only torch file."""
    model.load_adapter(read_state_dict(path), str(path))
