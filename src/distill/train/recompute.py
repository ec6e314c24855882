"""``train.gradient_checkpointing``: keep fewer activations and recompute them in the backward pass.

Three ways, tried in order on the student:

1. a Hugging Face model (``transformers.PreTrainedModel`` that supports it): its own activation checkpointing
   (``activation_checkpointing_enable``, or ``gradient_checkpointing_enable`` on older releases), non-reentrant;
2. a student that holds such models (e.g. the ``minilm`` classifier's BERT encoder, a sentence-transformers
   model): each of them, the same way;
3. a built-in model that names its stages of blocks in ``checkpoint_stages`` (the CIFAR ResNets): every block of
   those stages runs under :func:`torch.utils.checkpoint.checkpoint` (non-reentrant). BatchNorm layers inside a
   block are not updated a second time when the block is recomputed (their running statistics are put back).

Any other student is refused with a ``ValueError`` naming its class. Gradients are those of the plain model up to
float rounding; so are the BatchNorm running statistics.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from distill.core.norms import frozen_batchnorm_statistics


def _hf_checkpointable(module: nn.Module) -> bool:
    return bool(getattr(module, "supports_gradient_checkpointing", False)) and (
        hasattr(module, "activation_checkpointing_enable") or hasattr(module, "gradient_checkpointing_enable"))


def _enable_hf(model: nn.Module) -> None:
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def _checkpointed_forward(block: nn.Module, forward: Any) -> Any:
    def run(*args: Any, **kwargs: Any) -> Any:
        if not (torch.is_grad_enabled() and block.training):
            return forward(*args, **kwargs)
        return checkpoint(forward, *args, use_reentrant=False,
                          context_fn=lambda: (contextlib.nullcontext(), frozen_batchnorm_statistics(block)),
                          **kwargs)

    return run


def enable_gradient_checkpointing(model: nn.Module) -> str:
    """Switch activation checkpointing on in ``model`` (in place); returns what was done, in words. Raises
    ``ValueError`` when the model offers no way (see the module docstring)."""
    if _hf_checkpointable(model):
        _enable_hf(model)
        return f"Hugging Face activation checkpointing of {type(model).__name__}"
    inner = [(name, m) for name, m in model.named_modules() if name and _hf_checkpointable(m)]
    outermost = [(n, m) for n, m in inner if not any(n.startswith(f"{o}.") for o, _ in inner)]
    if outermost:
        for _, m in outermost:
            _enable_hf(m)
        return f"Hugging Face activation checkpointing of {', '.join(n for n, _ in outermost)}"
    stages = getattr(model, "checkpoint_stages", None)
    if stages:
        count = 0
        for stage in stages:
            for block in model.get_submodule(stage).children():
                if getattr(block, "_distill_checkpointed", False):
                    continue
                momentum_free = [m for m in block.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
                                 and m.track_running_stats and m.momentum is None]
                if momentum_free:
                    raise ValueError(f"{type(model).__name__}: a BatchNorm in {stage} keeps a cumulative average "
                                     "(momentum None), which a recomputed block would count twice")
                block.forward = _checkpointed_forward(block, block.forward)
                block._distill_checkpointed = True
                count += 1
        return f"{count} blocks of {', '.join(stages)} recomputed in the backward pass"
    raise ValueError(f"the student ({type(model).__name__}) has no way to checkpoint activations: it is not a "
                     "Hugging Face model that supports it and names no checkpoint_stages; set "
                     "train.gradient_checkpointing: false")
