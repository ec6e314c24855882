"""A released SPAN-family checkpoint through the family's loader, against a transcription of its official forward.

Inference checkpoints of the SPAN family hold the folded ``eval_conv`` weights (DSCF-SR's
``model_zoo/team23_DSCF.pth``, the DSCLoRA entry of NTIRE 2025, a 26-channel x4 SPAN). This loads such a file as
``teacher.weights`` would (``distill.tasks.super_resolution.models.build_sr_model``: keys mapped; Conv3XC blocks
would be folded) with the official options (``cat_conv: 1``, ``input_norm: span``) and compares its output with a
line-by-line transcription of DSCF-SR's ``models/team23_DSCF.py`` forward that reads the raw state dict (written
here, independent of the loader): the max absolute difference on real photographs. It also scores x4 Y-PSNR / SSIM
(border 4) of both and of bicubic upsampling on scikit-image's photographs (256 px crops, antialiased-bicubic LR),
as context for what the released weights do on such inputs.

    python benchmarks/span_official_weights.py --weights PATH/team23_DSCF.pth

The file is not shipped (github.com/Yaozzz666/DSCF-SR); results: benchmarks/results/span_official_weights.*
Deterministic (no training, fixed images): one run, no seeds.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from portable import write_json  # noqa: E402

from distill.models.weights import read_state_dict  # noqa: E402
from distill.tasks.super_resolution.data import bicubic_down  # noqa: E402
from distill.tasks.super_resolution.models import build_sr_model  # noqa: E402
from distill.tasks.super_resolution.task import psnr_y, ssim_y  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


def official_forward(sd: dict[str, torch.Tensor], x: torch.Tensor, scale: int, blocks: int = 6) -> torch.Tensor:
    """DSCF-SR's forward (eval_conv layout) written out from the raw state dict: inputs (x - mean) * 255, SPABs
    (SiLU, (c3 + x)(sigmoid(c3) - 0.5)), conv_cat over [conv_1, conv_2(block 6), block 1, block 6's first conv]."""
    def conv(t: torch.Tensor, name: str, pad: int = 1) -> torch.Tensor:
        return F.conv2d(t, sd[f"{name}.weight"], sd[f"{name}.bias"], padding=pad)

    x = (x - torch.tensor([0.4488, 0.4371, 0.4040]).view(1, 3, 1, 1)) * 255.0
    feat = conv(x, "conv_1.eval_conv")
    out, b1, first = feat, None, None
    for k in range(1, blocks + 1):
        first = conv(out, f"block_{k}.c1_r.eval_conv")
        c3 = conv(F.silu(conv(F.silu(first), f"block_{k}.c2_r.eval_conv")), f"block_{k}.c3_r.eval_conv")
        out = (c3 + out) * (torch.sigmoid(c3) - 0.5)
        b1 = out if b1 is None else b1
    cat = conv(torch.cat([feat, conv(out, "conv_2.eval_conv"), b1, first], 1), "conv_cat", 0)
    return F.pixel_shuffle(conv(cat, "upsampler.0"), scale)


def scores(sr: torch.Tensor, hr: torch.Tensor, border: int) -> dict[str, float]:
    return {"psnr": round(float(psnr_y(sr, hr, border).mean()), 3),
            "ssim": round(float(ssim_y(sr, hr, border).mean()), 4)}


@torch.no_grad()
def main() -> None:
    from skimage import data as skdata

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", required=True, help="an official-layout SPAN checkpoint (e.g. team23_DSCF.pth)")
    ap.add_argument("--scale", type=int, default=4)
    ap.add_argument("--channels", type=int, default=26)
    args = ap.parse_args()
    torch.set_num_threads(1)
    s = args.scale
    hr = torch.stack([torch.from_numpy(getattr(skdata, n)()[:256, :256].copy()).permute(2, 0, 1) for n in PHOTOS])
    lr = bicubic_down(hr, s)
    x, y = lr.float() / 255, hr.float() / 255
    cfg = SimpleNamespace(arch="span", options={"channels": args.channels, "cat_conv": 1, "input_norm": "span"},
                          weights=str(Path(args.weights).resolve()))
    ours = build_sr_model(cfg, s, None, "teacher").eval()(x)
    official = official_forward(read_state_dict(args.weights), x, s)
    flat = build_sr_model(cfg, s, None, "teacher").eval()(torch.full((1, 3, 64, 64), 0.5))
    offset = (flat[0, :, 96:160, 96:160].mean((1, 2)) - 0.5).tolist()  # output - input on a flat grey image
    rows = {"bicubic": scores(F.interpolate(x, scale_factor=s, mode="bicubic", align_corners=False), y, s),
            "loaded (cat_conv: 1, input_norm: span)": scores(ours, y, s),
            "official forward (transcription)": scores(official, y, s)}
    out = {"weights": Path(args.weights).name, "scale": s, "channels": args.channels,
           "data": f"scikit-image photographs {', '.join(PHOTOS)} (256 px crops; LR antialiased bicubic)",
           "metric": f"Y-channel PSNR (dB) / SSIM, border {s}",
           "max_abs_diff_loaded_vs_official": float((ours - official).abs().max()),
           "flat_grey_output_offset_rgb": [round(v, 4) for v in offset], "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    write_json(RESULTS / "span_official_weights.json", out)
    lines = [f"x{s} SR with `{out['weights']}` loaded through the family's loader; {out['data']}; {out['metric']}.",
             f"Max |loaded - official forward| = {out['max_abs_diff_loaded_vs_official']:.3g}; "
             f"output - input on flat grey 0.5: {out['flat_grey_output_offset_rgb']}.",
             "", "| model | PSNR | SSIM |", "|---|---|---|"]
    lines += [f"| {k} | {v['psnr']:.3f} | {v['ssim']:.4f} |" for k, v in rows.items()]
    (RESULTS / "span_official_weights.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
