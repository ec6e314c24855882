"""Load weights into a model from safetensors or a weights-only PyTorch checkpoint."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict: ``.safetensors``, or a torch file holding one (optionally under ``state_dict`` or
    ``model``), loaded with ``weights_only=True``. A DataParallel ``module.`` prefix is stripped."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        obj: Any = load_file(str(path), device="cpu")
    else:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path}: expected a state dict (or a dict holding one under 'state_dict')")
    return {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in obj.items()}


def _short(keys: list[str], n: int = 5) -> str:
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def load_state_dict_checked(model: nn.Module, sd: dict[str, torch.Tensor], source: str) -> nn.Module:
    """Load ``sd`` strictly, filling BatchNorm ``num_batches_tracked`` counters that old checkpoints lack;
    any other missing, unexpected or mis-shaped key raises a ``ValueError`` naming it."""
    sd = dict(sd)
    expected = model.state_dict()
    for key in expected:
        if key.endswith("num_batches_tracked") and key not in sd:
            sd[key] = torch.zeros((), dtype=torch.long)
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"{source} does not fit {type(model).__name__}: missing keys [{_short(missing)}], "
            f"unexpected keys [{_short(unexpected)}]"
        )
    wrong = [f"{k} {tuple(sd[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items() if sd[k].shape != v.shape]
    if wrong:
        raise ValueError(f"{source} does not fit {type(model).__name__}: shape mismatch in {_short(wrong, 3)}")
    model.load_state_dict(sd, strict=True)
    return model


def load_weights_into(model: nn.Module, path: str | Path) -> nn.Module:
    return load_state_dict_checked(model, read_state_dict(path), str(path))
