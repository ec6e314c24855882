"""What the trainer needs under FSDP (version 2, through Accelerate's FSDP plugin): parameters of the student and
of the methods are ``DTensor`` shards, one slice on each process.

- :func:`full_state` / :func:`load_full_state`: a module's state as whole CPU tensors (the files a checkpoint and
  ``student.safetensors`` hold, the same as without FSDP), and back into the shards. Gathering is collective:
  every process calls it, in the same order; only the main process writes.
- :func:`full_optimizer_state` / :func:`load_full_optimizer_state`: the same for the optimiser's state.
- :func:`gathered`: the whole parameters in place for calls outside the training forward (evaluation, a
  method's inference wrapper, per-epoch passes), sharded again afterwards.
- :func:`local`: a tensor's own shard (the non-finite checks sum these, then average across processes).
- :func:`check_wrap_policy`: refuse a size-based wrap policy that would make a module container an FSDP unit.

Everything here is the identity on modules that are not sharded.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

try:  # torch >= 2.4
    from torch.distributed.tensor import DTensor, distribute_tensor
except ImportError:  # pragma: no cover - older torch: nothing is ever sharded
    DTensor = ()  # type: ignore[assignment,misc]
    distribute_tensor = None  # type: ignore[assignment]


def is_sharded(t: Any) -> bool:
    return bool(DTensor) and isinstance(t, DTensor)


def local(t: torch.Tensor) -> torch.Tensor:
    """This process's shard of ``t`` (``t`` itself when it is not sharded)."""
    return t.to_local() if is_sharded(t) else t


def _whole(t: torch.Tensor) -> torch.Tensor:
    return (t.full_tensor() if is_sharded(t) else t).detach().to("cpu")


def full_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """``module.state_dict()`` with whole CPU tensors (collective when sharded: call it on every process)."""
    return {k: _whole(v) for k, v in module.state_dict().items()}


def _like(value: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``value`` (a whole tensor) as ``target`` is held: this process's shard when ``target`` is sharded."""
    if not is_sharded(target):
        return value
    value = value.to(device=target.device, dtype=target.dtype)
    return distribute_tensor(value, target.device_mesh, target.placements, src_data_rank=None)


def load_full_state(module: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load whole tensors (from :func:`full_state` or a file) into ``module``, sharding them as its parameters
    are; the key checks of ``load_state_dict`` apply."""
    current = module.state_dict()
    module.load_state_dict({k: _like(v, current[k]) if k in current else v for k, v in state.items()})


def _params_in_order(optimizer: Any) -> list[torch.Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"]]


def full_optimizer_state(optimizer: Any) -> dict[str, Any]:
    """``optimizer.state_dict()`` with every sharded state tensor whole, on the CPU (collective when sharded)."""
    sd = optimizer.state_dict()
    if not any(is_sharded(p) for p in _params_in_order(optimizer)):
        return sd
    state = {pid: {k: _whole(v) if isinstance(v, torch.Tensor) else v for k, v in sorted(entry.items())}
             for pid, entry in sorted(sd["state"].items())}
    return {**sd, "state": state}


def load_full_optimizer_state(optimizer: Any, sd: dict[str, Any]) -> None:
    """Load a state from :func:`full_optimizer_state`, each tensor the shape of its parameter sharded like it."""
    params = _params_in_order(optimizer)
    if not any(is_sharded(p) for p in params):
        optimizer.load_state_dict(sd)
        return
    state = {}
    for pid, entry in sd["state"].items():
        p = params[int(pid)]
        state[pid] = {k: _like(v, p) if isinstance(v, torch.Tensor) and is_sharded(p) and v.shape == p.shape else v
                      for k, v in entry.items()}
    optimizer.load_state_dict({**sd, "state": state})


def _units(module: nn.Module) -> list[nn.Module]:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover
        return []
    return [m for m in module.modules() if isinstance(m, FSDPModule)]


@contextlib.contextmanager
def gathered(module: nn.Module) -> Iterator[None]:
    """Within the block the FSDP units of ``module`` hold their whole parameters (collective: every process enters
    it), so its submodules can be called directly; they are sharded again when it ends."""
    units = _units(module)
    for unit in units:
        unit.unshard()
    try:
        yield
    finally:
        for unit in units:
            unit.reshard()


def _is_container(module: nn.Module) -> bool:
    return isinstance(module, (nn.ModuleList, nn.ModuleDict)) or type(module).forward is nn.Module.forward


def check_wrap_policy(module: nn.Module, plugin: Any) -> None:
    """Accelerate's size-based policy makes every module above ``min_num_params`` an FSDP unit, module containers
    (``ModuleList``, ``ModuleDict``: the methods of a run, the layers of a transformer) included, which
    ``fully_shard`` cannot shard; refuse that with a ``ValueError`` naming the container and what to use."""
    policy = getattr(plugin, "auto_wrap_policy", None)
    policy = getattr(policy, "func", policy)  # accelerate keeps it as a functools.partial
    if getattr(policy, "__name__", None) != "size_based_auto_wrap_policy":
        return
    limit = getattr(plugin, "min_num_params", None) or 0
    for name, m in module.named_modules():
        if name and _is_container(m) and sum(p.numel() for p in m.parameters()) > limit:
            raise ValueError(f"FSDP's size-based wrap policy (min_num_params {limit}) would shard the module "
                             f"container {name!r}, which FSDP cannot; use the transformer-based policy with the "
                             "student's layer classes (accelerate config: fsdp_auto_wrap_policy "
                             "TRANSFORMER_BASED_WRAP, fsdp_transformer_layer_cls_to_wrap) or a larger min_num_params")
