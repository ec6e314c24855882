"""Official SPAN checkpoints (hongyuanyu/SPAN layout) load into the family's SPAN: the training-time ``Conv3XC``
blocks folded into one 3x3 convolution give the output of a re-implementation of the official training forward
(within 1e-5), already-folded ``eval_conv`` weights load as they are, BasicSR's ``params_ema`` / ``params`` wrappers
are read, and missing, unexpected or partial keys and the wrong model options are refused naming them."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from distill.config import ConfigError
from distill.tasks.super_resolution.models import build_sr_model, fold_conv3xc, span

MEAN = torch.tensor([0.4488, 0.4371, 0.4040]).view(1, 3, 1, 1)


# -- a re-implementation of the official network's training forward (the test's own reference) --------------------
class Conv3XCRef(nn.Module):
    """Training-time Conv3XC: 1x1 expansion (gain 2) on the zero-padded input, an unpadded 3x3, a 1x1 back, plus a
    1x1 skip on the unpadded input; ``folded``: a plain padded 3x3 ``eval_conv`` instead (an inference checkpoint)."""

    def __init__(self, ci: int, co: int, gain: int = 2, folded: bool = False):
        super().__init__()
        self.folded = folded
        if folded:
            self.eval_conv = nn.Conv2d(ci, co, 3, padding=1)
        else:
            self.sk = nn.Conv2d(ci, co, 1)
            self.conv = nn.Sequential(nn.Conv2d(ci, ci * gain, 1), nn.Conv2d(ci * gain, co * gain, 3),
                                      nn.Conv2d(co * gain, co, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.folded:
            return self.eval_conv(x)
        return self.conv(F.pad(x, (1, 1, 1, 1))) + self.sk(x)


class SPABRef(nn.Module):
    def __init__(self, c: int, folded: bool):
        super().__init__()
        self.c1_r, self.c2_r, self.c3_r = (Conv3XCRef(c, c, folded=folded) for _ in range(3))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out1 = self.c1_r(x)
        out3 = self.c3_r(F.silu(self.c2_r(F.silu(out1))))
        return (out3 + x) * (torch.sigmoid(out3) - 0.5), out1


class SPANRef(nn.Module):
    """The official wiring: inputs (x - mean) * 255; conv_cat over conv_1, conv_2(block N), block 1 and block N's
    first convolution (the official SPAB returns (out, out1, att) and the network takes the second item)."""

    def __init__(self, scale: int, c: int, blocks: int, folded: bool = False, norm: bool = True):
        super().__init__()
        self.norm = norm
        self.conv_1 = Conv3XCRef(3, c, folded=folded)
        for k in range(blocks):
            setattr(self, f"block_{k + 1}", SPABRef(c, folded))
        self.blocks = blocks
        self.conv_cat = nn.Conv2d(4 * c, c, 1)
        self.conv_2 = Conv3XCRef(c, c, folded=folded)
        self.upsampler = nn.Sequential(nn.Conv2d(c, 3 * scale * scale, 3, padding=1), nn.PixelShuffle(scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.norm:
            x = (x - MEAN) * 255.0
        feat = self.conv_1(x)
        outs, first_conv = [feat], None
        for k in range(self.blocks):
            out, first_conv = getattr(self, f"block_{k + 1}")(outs[-1])
            outs.append(out)
        return self.upsampler(self.conv_cat(torch.cat([feat, self.conv_2(outs[-1]), outs[1], first_conv], 1)))


def randomise(model: nn.Module, seed: int, scale: float = 0.3) -> nn.Module:
    """Random weights and clearly non-zero biases (a zero bias would hide a wrong bias fold)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            fan_in = p[0].numel() if p.dim() > 1 else 1
            p.copy_(torch.randn(p.shape, generator=g) * (scale / fan_in**0.5 if p.dim() > 1 else 0.1))
    return model


def official_state(ref: nn.Module, stale_eval_conv: bool = False) -> dict[str, torch.Tensor]:
    """The reference's state dict in the official key layout; ``stale_eval_conv``: with the unfolded branches, an
    ``eval_conv`` of unrelated values as a checkpoint saved between evaluations holds."""
    sd = {k: v.clone() for k, v in ref.state_dict().items()}
    if stale_eval_conv:
        for k in [k for k in sd if k.endswith(".sk.weight")]:
            prefix = k[: -len(".sk.weight")]
            co, ci = sd[k].shape[:2]
            sd[f"{prefix}.eval_conv.weight"] = torch.randn(co, ci, 3, 3)
            sd[f"{prefix}.eval_conv.bias"] = torch.randn(co)
    return sd


def load(tmp_path: Path, sd: dict, name: str = "w.pth", **options) -> nn.Module:
    """Build ``span`` through the family's builder with ``weights`` = ``sd`` saved as a torch file."""
    path = tmp_path / name
    torch.save(sd, path)
    cfg = SimpleNamespace(arch="span", options=options, weights=str(path))
    return build_sr_model(cfg, 2, str(tmp_path), "teacher")


# -- tests ---------------------------------------------------------------------------------------------------------
def test_fold_equals_the_conv3xc_training_forward_at_the_borders_too() -> None:
    torch.manual_seed(0)
    for ci, co in [(3, 8), (8, 8)]:
        block = randomise(Conv3XCRef(ci, co), ci)
        weight, bias = fold_conv3xc({k: v for k, v in block.state_dict().items()})
        x = torch.rand(2, ci, 9, 7) * 4 - 2
        with torch.no_grad():
            want = block(x)
        got = F.conv2d(x, weight, bias, padding=1)
        assert weight.shape == (co, ci, 3, 3)
        assert (got - want).abs().max() <= 1e-5 * max(1.0, float(want.abs().max()))
        assert (got[..., 0, :] - want[..., 0, :]).abs().max() <= 1e-5  # the padded border (b1 at the pad)


@pytest.mark.parametrize("stale", [False, True])
def test_official_training_checkpoint_gives_the_official_output(tmp_path: Path, stale: bool) -> None:
    ref = randomise(SPANRef(2, 6, 2), 1).eval()
    model = load(tmp_path, official_state(ref, stale), channels=6, num_blocks=2, cat_conv=1, input_norm="span")
    x = torch.rand(2, 3, 10, 12)
    with torch.no_grad():
        want, got = ref(x), model.eval()(x)
    assert got.shape == want.shape == (2, 3, 20, 24)
    assert float(want.abs().max()) > 0.1  # a real output, not a vanishing one
    assert (got - want).abs().max() <= 1e-5


def test_folded_eval_conv_checkpoint_and_basicsr_wrappers(tmp_path: Path) -> None:
    ref = randomise(SPANRef(2, 5, 3, folded=True), 2).eval()
    other = randomise(SPANRef(2, 5, 3, folded=True), 3)
    wrapped = {"params": official_state(other), "params_ema": official_state(ref)}  # BasicSR: the EMA weights
    model = load(tmp_path, wrapped, channels=5, num_blocks=3, cat_conv=1, input_norm="span")
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        assert (model.eval()(x) - ref(x)).abs().max() <= 1e-5
    assert torch.equal(model.blocks[2].c1_r.weight, ref.block_3.c1_r.eval_conv.weight)
    unnormed = randomise(SPANRef(2, 5, 3, folded=True, norm=False), 4).eval()  # neosr's no_norm marker
    model = load(tmp_path, {**official_state(unnormed), "no_norm": torch.zeros(1)}, channels=5, num_blocks=3,
                 cat_conv=1)
    with torch.no_grad():
        assert (model.eval()(x) - unnormed(x)).abs().max() <= 1e-5


def test_our_own_layout_still_loads_and_the_default_wiring_is_unchanged(tmp_path: Path) -> None:
    src = span(2, channels=4, num_blocks=2)
    model = load(tmp_path, src.state_dict(), channels=4, num_blocks=2)
    x = torch.rand(1, 3, 6, 6)
    with torch.no_grad():
        assert torch.equal(model(x), src(x))
    assert set(span(2, input_norm="span").state_dict()) == set(span(2).state_dict())  # the mean is not saved


def test_bad_official_state_dicts_are_refused_naming_the_keys(tmp_path: Path) -> None:
    sd = official_state(randomise(SPANRef(2, 4, 2), 5))
    opts = dict(channels=4, num_blocks=2, cat_conv=1, input_norm="span")
    partial = {k: v for k, v in sd.items() if k != "block_2.c3_r.conv.1.bias"}
    with pytest.raises(ConfigError, match=r"teacher\.weights: .*missing keys \[block_2\.c3_r\.conv\.1\.bias\]"):
        load(tmp_path, partial, **opts)
    extra = {**sd, **{k.replace("block_2", "block_3"): v for k, v in sd.items() if k.startswith("block_2")}}
    with pytest.raises(ConfigError, match=r"unexpected keys \[block_3\.c1_r\.conv\.0\.bias"):
        load(tmp_path, extra, **opts)
    gone = {k: v for k, v in sd.items() if not k.startswith("conv_2.")}
    with pytest.raises(ConfigError, match=r"missing keys \[conv_2\.eval_conv\.weight"):
        load(tmp_path, gone, **opts)
    with pytest.raises(ConfigError, match=r"teacher\.weights: .*upsampler\.0\.bias"):  # the plain convs too
        load(tmp_path, {k: v for k, v in sd.items() if k != "upsampler.0.bias"}, **opts)
    wrong = dict(sd)
    wrong["conv_1.conv.1.weight"] = wrong["conv_1.conv.1.weight"][:, :3]
    with pytest.raises(ConfigError, match=r"conv_1: conv\.1\.weight is \(8, 3, 3, 3\)"):
        load(tmp_path, wrong, **opts)
    for bad in ({"cat_conv": 2}, {"input_norm": "none"}):
        with pytest.raises(ConfigError, match=r"teacher\.weights: .*cat_conv: 1 .*input_norm: span"):
            load(tmp_path, sd, **{**opts, **bad})
    with pytest.raises(ConfigError, match=r"teacher\.options"):
        load(tmp_path, sd, **{**opts, "cat_conv": 3})
