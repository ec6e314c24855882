"""Domains of model-builder arguments, read by the config validation (``student.options`` / ``teacher.options``
are validated against the builder's signature, :func:`distill.tasks.common.validate_model_options`) and by
``pydantic.validate_call``. Upper bounds keep a typo (a width of 10**9, 1e30 layers) from reaching the allocator."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

#: a layer width, hidden size or channel count
MAX_WIDTH = 8192
Width = Annotated[int, Field(gt=0, le=MAX_WIDTH)]
#: a number of layers or blocks
MAX_LAYERS = 64
Layers = Annotated[int, Field(gt=0, le=MAX_LAYERS)]
#: a dropout probability
Rate = Annotated[float, Field(ge=0, lt=1)]
#: a vocabulary size or sequence length
Size = Annotated[int, Field(gt=0, le=1_000_000)]
#: a width multiplier
Multiplier = Annotated[float, Field(gt=0, le=16)]
