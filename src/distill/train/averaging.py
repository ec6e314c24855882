"""Checkpoint averaging: one set of weights from several, as a step of its own (no training).

* :func:`average_states`: the weighted mean sum_i w_i * theta_i of state dicts (uniform weights by default), tensor
  by tensor. Tensors whose shapes differ between the inputs (e.g. a class layer grown between two checkpoints) are
  taken from the *last* state unchanged, as Dynamic Y-KD's code skips them; integer tensors (counters, BatchNorm's
  ``num_batches_tracked``) are taken from the last state too.
* :func:`ema_states`: the exponential moving average over a sequence, theta <- decay * theta + (1 - decay) * theta_i,
  started at the first state.
* :func:`interpolate`: w * theta_new + (1 - w) * theta_old (the two-checkpoint case, w in [0, 1]).
* :func:`average_checkpoints`: the same over checkpoint folders or safetensors files on disk, written as one
  safetensors file.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from distill.train.checkpoint import load_weights, save_weights

State = dict[str, torch.Tensor]


def _check(states: Sequence[State]) -> None:
    if not states:
        raise ValueError("checkpoint averaging needs at least one state")
    keys = set(states[-1])
    for i, s in enumerate(states):
        if set(s) != keys:
            raise ValueError(f"state {i} has other tensors than the last one: {sorted(set(s) ^ keys)[:5]}")


def average_states(states: Sequence[State], weights: Sequence[float] | None = None) -> State:
    """Weighted mean of ``states`` (weights default to uniform and must sum to 1); see the module docstring."""
    _check(states)
    if weights is None:
        weights = [1.0 / len(states)] * len(states)
    if len(weights) != len(states):
        raise ValueError(f"{len(weights)} weights for {len(states)} states")
    if abs(sum(weights) - 1.0) > 1e-6 or any(w < 0 for w in weights):
        raise ValueError(f"averaging weights must be >= 0 and sum to 1, got {list(weights)}")
    out: State = {}
    last = states[-1]
    for key, ref in last.items():
        same = all(s[key].shape == ref.shape for s in states)
        if not same or not ref.is_floating_point():
            out[key] = ref.clone()
            continue
        acc = torch.zeros_like(ref, dtype=torch.float64)
        for w, s in zip(weights, states, strict=True):
            acc += w * s[key].to(torch.float64)
        out[key] = acc.to(ref.dtype)
    return out


def interpolate(old: State, new: State, w: float) -> State:
    """w * new + (1 - w) * old (tensors of different shapes: from ``new``)."""
    if not 0.0 <= w <= 1.0:
        raise ValueError(f"interpolation weight must be in [0, 1], got {w}")
    return average_states([old, new], [1.0 - w, w])


def ema_states(states: Sequence[State], decay: float) -> State:
    """Exponential moving average over ``states`` in order (see the module docstring)."""
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
    _check(states)
    out = {k: v.clone() for k, v in states[0].items()}
    for s in states[1:]:
        out = average_states([out, s], [decay, 1.0 - decay])
    return out


def _read(path: Path) -> State:
    path = Path(path)
    return load_weights(path / "student.safetensors" if path.is_dir() else path)


def average_checkpoints(paths: Sequence[str | Path], out: str | Path, weights: Sequence[float] | None = None,
                        ema: float | None = None) -> State:
    """Average the student weights of checkpoint folders (or safetensors files) and write them to ``out``."""
    states = [_read(Path(p)) for p in paths]
    avg = ema_states(states, ema) if ema is not None else average_states(states, weights)
    save_weights(Path(out), avg, metadata={"averaged_from": str(len(states))})
    return avg
