"""Losses on intermediate features (family ``features``): one module per method.

Also the old ``distill.methods.features`` module: its names (``FitNet``, ``AttentionTransfer``,
``attention_map``, ``conv_regressor``) are re-exported here.
"""

from distill.methods.features.adapters import conv_regressor
from distill.methods.features.at import AttentionTransfer, attention_map
from distill.methods.features.fitnet import FitNet

__all__ = ["AttentionTransfer", "FitNet", "attention_map", "conv_regressor"]
