"""ConvLoRA: starts equal to its base, merges on eval and unmerges on train, merges into a plain model of the base's
size and output, trains only its factors, and keeps an unmerged state dict whatever the mode."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from distill.models.conv_lora import ConvLoRA, apply_conv_lora, conv_lora_parameters, merge_conv_lora, merged_state_dict
from distill.tasks.super_resolution.models import span


def randomised(model: nn.Module) -> nn.Module:
    """Give every ConvLoRA a non-zero B (it starts at zero), so the update is not trivially 0."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, ConvLoRA):
            with torch.no_grad():
                m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=g) * 0.05)
    return model


def test_delta_is_the_row_major_reshape_of_b_times_a_scaled_by_alpha_over_r() -> None:
    conv = nn.Conv2d(2, 3, 3, padding=1)
    layer = ConvLoRA(conv, rank=2, alpha=6.0)
    assert layer.lora_A.shape == (2 * 3, 2 * 3) and layer.lora_B.shape == (3 * 3, 2 * 3)
    with torch.no_grad():
        layer.lora_A.copy_(torch.arange(36.0).view(6, 6) / 36)
        layer.lora_B.copy_(torch.ones(9, 6))
    expected = (torch.ones(9, 6) @ (torch.arange(36.0).view(6, 6) / 36)).reshape(3, 2, 3, 3) * 3.0
    assert torch.allclose(layer.delta(), expected)
    # row 0 of B @ A is the column sums of A: its first 6 entries fill W[0, 0, :, :2] in row-major order
    first, col = float(layer.delta()[0, 0, 0, 0].detach()), float(layer.lora_A[:, 0].sum().detach())
    assert math.isclose(first, 3.0 * col, rel_tol=1e-6)


def test_with_b_zero_the_layer_equals_its_base() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 5, 3, padding=1)
    x = torch.randn(2, 4, 7, 7)
    ref = conv(x)
    layer = ConvLoRA(conv, rank=2, alpha=4.0)
    assert torch.count_nonzero(layer.lora_B) == 0 and torch.count_nonzero(layer.lora_A) > 0
    assert torch.equal(layer(x), ref)


def test_merge_on_eval_unmerge_on_train_and_the_state_dict_stays_unmerged() -> None:
    torch.manual_seed(0)
    layer = randomised(nn.Sequential(ConvLoRA(nn.Conv2d(3, 4, 3, padding=1), 2, 4.0)))[0]
    w0 = layer.conv.weight.detach().clone()
    x = torch.randn(2, 3, 6, 6)
    layer.train()
    y_train = layer(x)
    saved_train = {k: v.clone() for k, v in layer.state_dict().items()}
    layer.eval()
    assert layer.merged and torch.allclose(layer.conv.weight, w0 + layer.delta(), atol=1e-7)
    assert torch.allclose(layer(x), y_train, atol=1e-5)
    saved_eval = layer.state_dict()
    assert torch.allclose(saved_eval["conv.weight"], saved_train["conv.weight"], atol=1e-6)
    layer.train()
    assert not layer.merged and torch.allclose(layer.conv.weight, w0, atol=1e-6)
    # loading an (unmerged) state dict into a merged layer keeps it merged and correct
    layer.eval()
    layer.load_state_dict(saved_train)
    assert torch.allclose(layer(x), y_train, atol=1e-5)


def test_merged_model_has_the_base_parameter_count_and_the_unmerged_output() -> None:
    torch.manual_seed(0)
    model = span(2, channels=8, num_blocks=2)
    n_base = sum(p.numel() for p in model.parameters())
    apply_conv_lora(model, {"conv_2": (8, 16.0), "upsampler.0": (8, 16.0), "blocks.0.c1_r": (2, 4.0),
                            "blocks.1.c3_r": (2, 4.0)})
    randomised(model)
    assert sum(p.numel() for p in model.parameters()) > n_base
    x = torch.rand(3, 3, 8, 8)
    model.train()
    y = model(x).detach()
    expected_state = merged_state_dict(model)
    merged = merge_conv_lora(model)
    assert not any(isinstance(m, ConvLoRA) for m in merged.modules())
    assert sum(p.numel() for p in merged.parameters()) == n_base
    assert (merged(x) - y).abs().max() <= 1e-5
    plain = span(2, channels=8, num_blocks=2)
    plain.load_state_dict(expected_state)  # the merged state dict loads into the base architecture
    assert (plain(x) - y).abs().max() <= 1e-5


def test_only_the_lora_factors_require_gradients_and_receive_them() -> None:
    model = span(2, channels=8, num_blocks=2)
    apply_conv_lora(model, {"conv_2": (4, 4.0), "blocks.0.c2_r": (2, 4.0)})
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"conv_2.lora_A", "conv_2.lora_B", "blocks.0.c2_r.lora_A", "blocks.0.c2_r.lora_B"}
    assert len(conv_lora_parameters(model)) == 4
    model(torch.rand(2, 3, 6, 6)).mean().backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if n in trainable)
    assert all(p.grad is None for n, p in model.named_parameters() if n not in trainable)
    with_bias = span(2, channels=8, num_blocks=1)
    apply_conv_lora(with_bias, {"conv_2": (2, 2.0)}, train_bias=True)
    assert {n for n, p in with_bias.named_parameters() if p.requires_grad} == {
        "conv_2.lora_A", "conv_2.lora_B", "conv_2.conv.bias"}


def test_bad_targets_are_refused_by_name() -> None:
    with pytest.raises(KeyError, match="nope"):
        apply_conv_lora(span(2, channels=4, num_blocks=1), {"nope": (2, 2.0)})
    with pytest.raises(KeyError, match="not an nn.Conv2d"):
        apply_conv_lora(span(2, channels=4, num_blocks=1), {"upsampler": (2, 2.0)})
    with pytest.raises(ValueError, match="rank"):
        ConvLoRA(nn.Conv2d(2, 2, 3), rank=0)
