"""Taps capture module outputs and inputs by dotted name, on plain modules and Hugging Face models."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from distill.core.taps import FeatureTaps


class Tiny(nn.Module):
    feature_taps = {"hidden": "body.1", "pooled": "head:input"}

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8))
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.body(x))


def test_output_input_and_alias():
    m = Tiny()
    x = torch.randn(5, 4)
    taps = FeatureTaps(m, ["body.0", "head:input", "hidden"])
    with taps.capture() as feats:
        out = m(x)
    h0 = m.body[0](x)
    assert torch.allclose(feats["body.0"], h0)
    assert torch.allclose(feats["hidden"], torch.relu(h0))
    assert torch.allclose(feats["head:input"], m.body(x))
    assert torch.allclose(out, m.head(feats["head:input"]))
    # hooks are removed afterwards
    assert not m.body[0]._forward_hooks and not m.head._forward_pre_hooks


def test_captured_features_carry_gradients():
    m = Tiny()
    with FeatureTaps(m, ["body.2"]).capture() as feats:
        m(torch.randn(2, 4))
    feats["body.2"].sum().backward()
    assert m.body[0].weight.grad is not None and m.head.weight.grad is None


def test_unknown_module_is_named():
    with pytest.raises(ValueError, match="no module 'body.9'"):
        FeatureTaps(Tiny(), ["body.9"])
    with pytest.raises(ValueError, match="suffix"):
        FeatureTaps(Tiny(), ["body.0:grad"])


def test_tap_that_never_fires():
    m = Tiny()
    m.unused = nn.Linear(2, 2)
    with pytest.raises(RuntimeError, match="never fired"):
        with FeatureTaps(m, ["unused"]).capture():
            m(torch.randn(1, 4))


def test_hugging_face_model_from_config():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=32, max_position_embeddings=16)
    model = transformers.BertModel(cfg).eval()
    ids = torch.randint(0, 50, (2, 7))
    with FeatureTaps(model, ["encoder.layer.1", "encoder.layer.0.attention.output.dense"]).capture() as feats:
        out = model(input_ids=ids, output_hidden_states=True)
    # a transformer block returns a tuple; its hidden states are captured
    assert torch.allclose(feats["encoder.layer.1"], out.hidden_states[2], atol=1e-6)
    assert feats["encoder.layer.0.attention.output.dense"].shape == (2, 7, 16)
