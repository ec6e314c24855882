"""Load weights into a model from safetensors or a weights-only PyTorch checkpoint.

Only two readers are used: safetensors (no code in the format) and ``torch.load(weights_only=True)`` (tensors and
plain containers). A file either refuses, e.g. a pickle payload or a pickle renamed ``.safetensors``, raises
:class:`distill.core.safe_pickle.UnsafeFileError` (one line: the file and the reason).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distill.core.safe_pickle import UnsafeFileError, load_safetensors, load_torch_weights_only


def verify_sidecar(path: Path) -> None:
    """When ``<file>.sha256`` lies beside a weights file (``sha256sum`` output, or the bare hex digest), check the
    file against it: a flipped bit in the tensor data is otherwise undetectable (safetensors and torch files carry
    no checksum; their readers only catch a damaged header, truncation or zero-fill). Raises
    :class:`UnsafeFileError` naming the file on a mismatch or an unreadable sidecar."""
    import hashlib

    sidecar = path.with_name(path.name + ".sha256")
    if not sidecar.is_file():
        return
    try:
        want = sidecar.read_text().split()[0].lower()
        int(want, 16)
        if len(want) != 64:
            raise ValueError(want)
    except (OSError, UnicodeDecodeError, IndexError, ValueError):
        raise UnsafeFileError(sidecar, "unreadable checksum file (expected a 64-digit sha256, as sha256sum "
                                       "writes it)") from None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    if h.hexdigest() != want:
        raise UnsafeFileError(path, f"checksum mismatch: its sha256 is not the one in {sidecar.name} (the file is "
                                    "corrupted or was replaced)")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict: ``.safetensors``, or a torch file holding one (optionally under ``state_dict``,
    ``model``, or BasicSR's ``params_ema`` / ``params``: the EMA weights first, as BasicSR evaluates them), loaded
    with ``weights_only=True``. A DataParallel ``module.`` prefix is stripped. A ``<file>.sha256``
    beside it is checked first (:func:`verify_sidecar`).

    Raises:
        FileNotFoundError: no such file.
        UnsafeFileError: the file is neither safetensors nor a weights-only PyTorch file (a pickle that needs any
            other global is refused before it runs), or holds something other than a state dict."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"weights file {path} does not exist")
    verify_sidecar(path)
    obj: Any = load_safetensors(path) if path.suffix == ".safetensors" else load_torch_weights_only(path)
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model", "params_ema", "params"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UnsafeFileError(path, "not a state dict (nor a dict holding one under 'state_dict', 'model', "
                                    "'params_ema' or 'params')")
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
    """Load the weights file at ``path`` into ``model`` strictly. A model that reads foreign layouts defines
    ``adapt_state_dict(sd) -> sd`` (e.g. SPAN: the official checkpoints, their ``Conv3XC`` blocks folded); it
    maps the state dict to its own names first, raising ``ValueError`` on what it cannot map."""
    sd = read_state_dict(path)
    adapt = getattr(model, "adapt_state_dict", None)
    if callable(adapt):
        sd = adapt(sd)
    return load_state_dict_checked(model, sd, str(path))
