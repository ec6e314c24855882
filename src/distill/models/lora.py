"""LoRA students (``student.lora``) through the optional package ``peft`` (``pip install 'distill[peft]'``).

Training: the adapters are injected into the student in place (:func:`add_lora`), so the student keeps its class,
its module names (feature taps still find their modules) and its forward; only the adapters (and the modules
named in ``modules_to_save``, e.g. a new classifier head) stay trainable. Checkpoints and ``student.safetensors``
hold the whole student, adapters included, under the injected names (``...q_proj.base_layer.weight``,
``...q_proj.lora_A.default.weight``).

Export (:func:`lora_export_model`): the student is rebuilt as a ``peft.PeftModel`` with the same adapters, the
run's weights loaded into it; :func:`save_adapter` writes the PEFT adapter folder (``PeftModel.from_pretrained``
reads it over the base model) and :func:`merged` folds the adapters into the base weights (a plain model).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from distill.core.errors import ConfigError


def _peft() -> Any:
    try:
        import peft
    except ImportError:
        raise ConfigError("student.lora: needs the optional package peft (pip install 'distill[peft]')") from None
    return peft


def lora_config(settings: Any) -> Any:
    """The ``peft.LoraConfig`` of ``student.lora`` (adapters only: modules trained in full are handled here)."""
    peft = _peft()
    return peft.LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                           target_modules=list(settings.target_modules) if settings.target_modules else None,
                           bias="none")


def _linear_names(model: nn.Module, limit: int = 12) -> str:
    names = sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, nn.Linear)})
    return ", ".join(names[:limit]) + (", ..." if len(names) > limit else "") if names else "none"


def add_lora(model: nn.Module, settings: Any, default_keep: tuple[str, ...] = ()) -> nn.Module:
    """Inject LoRA adapters into ``model`` (in place; returns it). Everything but the adapters and the modules to
    save is frozen. Bad target or module names are a :class:`ConfigError` naming the key."""
    peft = _peft()
    config = lora_config(settings)
    try:
        peft.inject_adapter_in_model(config, model)
    except (ValueError, KeyError, TypeError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"student.lora.target_modules: {first[:200]} (the student's Linear layers: "
                          f"{_linear_names(model)})") from None
    keep = settings.modules_to_save if settings.modules_to_save is not None else default_keep
    names = dict(model.named_modules())
    for name in keep:
        found = [m for n, m in names.items() if n == name or n.endswith(f".{name}")]
        if not found:
            where = "student.lora.modules_to_save" if settings.modules_to_save is not None else "student.lora"
            raise ConfigError(f"{where}: the student has no module {name!r} to train in full beside the adapters")
        for m in found:
            m.requires_grad_(True)
    return model


def is_adapter_key(key: str) -> bool:
    return ".lora_" in key


def lora_export_model(base: nn.Module, settings: Any) -> Any:
    """``base`` (the student's architecture, untrained) wrapped as a ``peft.PeftModel`` with the adapters of
    ``settings``; load the run's weights into ``.base_model.model`` (the names of a training-time student)."""
    peft = _peft()
    return peft.get_peft_model(base, lora_config(settings))


def save_adapter(peft_model: Any, folder: Any) -> None:
    """The PEFT adapter folder (``adapter_config.json``, ``adapter_model.safetensors``)."""
    peft_model.save_pretrained(str(folder))


def merged(peft_model: Any) -> nn.Module:
    """The adapters folded into the base weights; a plain model of the student's class."""
    return peft_model.merge_and_unload()
