"""Initialisation-stage options shared by AB and FSP (FT has its own).

AB, FT and FSP use the framework's initialisation stage (``init_epochs`` / :meth:`Method.init_loss`): during the
first ``init_epochs`` epochs only their ``init_loss`` is minimised (RepDistiller's ``helper/pretrain.py``), then
the main stage runs with the whole composition.
"""

from __future__ import annotations


def check_stage_options(method: str, init_epochs: int, main_stage: bool | None) -> bool:
    if init_epochs < 0:
        raise ValueError(f"{method}: init_epochs must be >= 0, got {init_epochs}")
    active = (init_epochs == 0) if main_stage is None else bool(main_stage)
    if init_epochs == 0 and not active:
        raise ValueError(f"{method}: with init_epochs 0 and main_stage false the method would do nothing")
    return active
