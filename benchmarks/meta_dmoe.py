"""Meta-DMoE (pipelines.md row 22) on CIFAR-10 style domains: the spec's analogue of its WILDS benchmarks.

    OMP_NUM_THREADS=1 python benchmarks/meta_dmoe.py                 # 3 seeds, resumable (a finished seed is kept)
    python benchmarks/meta_dmoe.py --report-only                     # the table from the results file

Domains (fixed transforms of the ../shared CIFAR-10 JPEG images, disjoint images per domain):
  sources: clean, grayscale, Gaussian blur sigma 1, hue rotated by 90 degrees, Gaussian noise sigma 0.08
           (``--per-domain`` training images each);
  held-out targets: fog (low contrast), JPEG quality 8 after 2x pixelation, inverted colours (``--per-target`` test
           images each).
Models: five experts, each the akamaster ResNet-20 (../shared/models/resnet-cifar10) fine-tuned on one source domain
(trained once and kept in the work folder: the fixed teachers); their pooled 64-d features computed once per image.
Per seed: the student (the same pretrained ResNet-20) trained with ERM on all sources; the aggregator (one pre-norm
transformer layer, 4 heads, MLP 128) pre-trained on the experts' features with the task loss; then meta-training
(one domain per batch, support/query split, the domain's expert masked, one second-order inner step).
Arms, each scored as the mean accuracy over the three target domains:
  erm               the ERM student;
  experts_avg       the average of the five experts' logits (seed-independent);
  adapt_no_meta     the ERM student adapted once with the pre-trained (not meta-trained) aggregator;
  meta_dmoe         the meta-trained student adapted once per target domain (first ``--sup`` unlabelled images);
  meta_dmoe_nomask  the same without masking the domain's expert during meta-training.
Works if (spec): meta_dmoe beats erm by >= 1 point on average over the target domains, and beats adapt_no_meta.
Settings smaller than the spec's (5k images per source, 1k per target) where ``--per-domain`` / ``--per-target``
say so; the aggregator is pre-trained with Adam lr 1e-3 (the official default 3e-6 barely moves it in 2 epochs).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from distill.data import IMAGENET_MEAN, IMAGENET_STD
from distill.data.images import load_images
from distill.models import load_pretrained_cifar_resnet
from distill.pipelines.meta_dmoe import FeatureAggregator, adapt, expert_tokens, meta_step

sys.path.insert(0, str(Path(__file__).resolve().parent))
from portable import write_json  # noqa: E402
from sweep import parse_with_recipe, results_for  # noqa: E402
from verdicts_families import meta_dmoe_verdicts, verdict_text  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("clean", "gray", "blur", "hue", "noise")
TARGETS = ("fog", "jpeg_pixelate", "invert")
TAP = "linear:input"  # the CIFAR ResNets' pooled 64-d feature
ARMS = ("erm", "experts_avg", "adapt_no_meta", "meta_dmoe", "meta_dmoe_nomask")


# -- domains: fixed transforms of float images in [0, 1], (N, 3, 32, 32) ----------------------------------------
def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    r = max(1, math.ceil(2 * sigma))
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-(t * t) / (2 * sigma * sigma))
    k = k / k.sum()
    c = x.shape[1]
    x = F.pad(x, (r, r, r, r), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def hue_rotate(x: torch.Tensor, degrees: float) -> torch.Tensor:
    """Rotate the hue by ``degrees`` in YIQ space (luma kept)."""
    to_yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    a = math.radians(degrees)
    rot = torch.tensor([[1.0, 0.0, 0.0], [0.0, math.cos(a), -math.sin(a)], [0.0, math.sin(a), math.cos(a)]])
    m = torch.linalg.inv(to_yiq) @ rot @ to_yiq
    return torch.einsum("ij,njhw->nihw", m, x).clamp(0, 1)


def jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    out = []
    for img in (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy():
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=quality)
        out.append(np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")))
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float() / 255


def domain(x: torch.Tensor, name: str, seed: int = 0) -> torch.Tensor:
    if name == "clean":
        return x
    if name == "gray":
        return (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1).expand_as(x).contiguous()
    if name == "blur":
        return gaussian_blur(x, 1.0)
    if name == "hue":
        return hue_rotate(x, 90.0)
    if name == "noise":
        g = torch.Generator().manual_seed(1000 + seed)
        return (x + 0.08 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    if name == "fog":
        return 0.4 * x + 0.6 * 0.8
    if name == "jpeg_pixelate":
        small = F.interpolate(x, scale_factor=0.5, mode="area")
        return jpeg(F.interpolate(small, scale_factor=2, mode="nearest"), 8)
    if name == "invert":
        return 1 - x
    raise ValueError(name)


def normalise(x: torch.Tensor) -> torch.Tensor:
    return (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def build_domains(data_path: Path, per_domain: int, per_target: int, cache: Path) -> dict[str, Any]:
    train = load_images(data_path, split="train", cache_dir=cache)
    test = load_images(data_path, split="test", cache_dir=cache)
    g = torch.Generator().manual_seed(1234)
    order = torch.randperm(len(train.labels), generator=g)
    t_order = torch.randperm(len(test.labels), generator=g)
    if per_domain * len(SOURCES) > len(order) or per_target * len(TARGETS) > len(t_order):
        raise SystemExit("not enough images for disjoint domains at these sizes")
    out: dict[str, Any] = {"source": {}, "target": {}}
    for i, name in enumerate(SOURCES):
        idx = order[i * per_domain:(i + 1) * per_domain]
        out["source"][name] = (normalise(domain(train.images[idx].float() / 255, name, i)), train.labels[idx])
    for i, name in enumerate(TARGETS):
        idx = t_order[i * per_target:(i + 1) * per_target]
        out["target"][name] = (normalise(domain(test.images[idx].float() / 255, name, 10 + i)), test.labels[idx])
    return out


# -- training pieces -----------------------------------------------------------------------------------------------
def pretrained_resnet20(shared: Path) -> torch.nn.Module:
    path = next((shared / "models" / "resnet-cifar10").glob("resnet20-*.th"))
    return load_pretrained_cifar_resnet(path)


def sgd_train(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float, batch: int,
              seed: int) -> None:
    """Cross-entropy, SGD (momentum 0.9, wd 5e-4), cosine schedule, horizontal flips."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    steps = epochs * math.ceil(len(y) / batch)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(y), generator=g)
        for s in range(0, len(y), batch):
            idx = perm[s:s + batch]
            xb = x[idx]
            flip = torch.rand(len(idx), generator=g) < 0.5
            xb = torch.where(flip.view(-1, 1, 1, 1), xb.flip(3), xb)
            loss = F.cross_entropy(model(xb), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    right = sum(int((model(x[s:s + 250]).argmax(1) == y[s:s + 250]).sum()) for s in range(0, len(y), 250))
    return 100.0 * right / len(y)


def tokens_of(experts: list[torch.nn.Module], x: torch.Tensor) -> torch.Tensor:
    return torch.cat([expert_tokens(experts, x[s:s + 250], TAP) for s in range(0, len(x), 250)])


def pretrain_aggregator(agg: FeatureAggregator, tokens: torch.Tensor, y: torch.Tensor, epochs: int, seed: int,
                        batch: int = 64, lr: float = 1e-3) -> None:
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(agg.parameters(), lr=lr)
    agg.train()
    for _ in range(epochs):
        perm = torch.randperm(len(y), generator=g)
        for s in range(0, len(y), batch):
            idx = perm[s:s + batch]
            loss = F.cross_entropy(agg.classify(tokens[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    agg.eval()


def meta_train(student: torch.nn.Module, agg: FeatureAggregator, domains: dict[str, Any], tokens: dict[str, Any],
               args: argparse.Namespace, seed: int, mask: bool) -> None:
    """Batches of one source domain each (support first), the domain's expert masked; Adam for the student (slr)
    and the aggregator (tlr), both x0.96 per epoch."""
    g = torch.Generator().manual_seed(seed)
    opt_s = torch.optim.Adam(student.parameters(), lr=args.slr)
    opt_t = torch.optim.Adam(agg.parameters(), lr=args.tlr)
    for epoch in range(args.meta_epochs):
        batches = []
        for d, name in enumerate(SOURCES):
            perm = torch.randperm(len(domains[name][1]), generator=g)
            batches += [(d, name, perm[s:s + args.batch]) for s in range(0, len(perm) - args.batch + 1, args.batch)]
        for i in torch.randperm(len(batches), generator=g).tolist():
            d, name, idx = batches[i]
            x, y = domains[name]
            loss = meta_step(student, agg, x[idx], y[idx], tokens[name][idx], d if mask else None, args.sup,
                             args.ilr, tap=TAP)
            opt_s.zero_grad()
            opt_t.zero_grad()
            loss.backward()
            opt_s.step()
            opt_t.step()
        for opt in (opt_s, opt_t):
            for group in opt.param_groups:
                group["lr"] *= 0.96
        print(f"  meta epoch {epoch + 1}/{args.meta_epochs} ({'mask' if mask else 'no mask'})", flush=True)


def adapted_accuracy(student: torch.nn.Module, agg: FeatureAggregator, target: dict[str, Any],
                     t_tokens: dict[str, torch.Tensor], ilr: float, sup: int) -> dict[str, float]:
    out = {}
    for name, (x, y) in target.items():
        model = adapt(student, agg, x[:sup], t_tokens[name][:sup], ilr, tap=TAP)
        out[name] = accuracy(model, x, y)
    return out


# -- the benchmark -------------------------------------------------------------------------------------------------
def experts_for(args: argparse.Namespace, domains: dict[str, Any]) -> list[torch.nn.Module]:
    """The five domain experts, fine-tuned once and kept (the fixed teachers)."""
    from safetensors.torch import load_file, save_file

    folder = args.work / f"experts-n{args.per_domain}-e{args.expert_epochs}"
    folder.mkdir(parents=True, exist_ok=True)
    experts = []
    for d, name in enumerate(SOURCES):
        model = pretrained_resnet20(args.shared)
        path = folder / f"{name}.safetensors"
        if path.exists():
            model.load_state_dict(load_file(str(path)))
        else:
            t0 = time.time()
            sgd_train(model, *domains["source"][name], args.expert_epochs, args.expert_lr, args.batch, 100 + d)
            save_file(model.state_dict(), str(path))
            print(f"expert {name}: {time.time() - t0:.0f}s", flush=True)
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        experts.append(model)
    return experts


def run_seed(args: argparse.Namespace, seed: int, domains: dict[str, Any], s_tokens: dict[str, torch.Tensor],
             t_tokens: dict[str, torch.Tensor], partial: dict[str, Any], save: Any) -> dict[str, Any]:
    """One seed, stage by stage: each finished stage's weights are kept in the work folder and its scores in
    ``partial`` (saved through ``save()``), so a killed run resumes at the stage where it stopped."""
    import copy

    from safetensors.torch import load_file, save_file

    folder = args.work / f"seed{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    target = domains["target"]
    student = pretrained_resnet20(args.shared)
    ys = torch.cat([domains["source"][n][1] for n in SOURCES])
    if (folder / "erm.safetensors").exists():
        student.load_state_dict(load_file(str(folder / "erm.safetensors")))
    else:
        torch.manual_seed(seed)
        xs = torch.cat([domains["source"][n][0] for n in SOURCES])
        sgd_train(student, xs, ys, args.erm_epochs, args.erm_lr, args.batch, seed)
        save_file(student.state_dict(), str(folder / "erm.safetensors"))
    student.eval()
    partial.setdefault("erm", {n: accuracy(student, *target[n]) for n in TARGETS})
    torch.manual_seed(seed)
    agg = FeatureAggregator(64, heads=4, hidden=128, dropout=0.1, num_classes=10)
    pretrain_aggregator(agg, torch.cat([s_tokens[n] for n in SOURCES]), ys, args.agg_epochs, seed)  # seconds
    partial.setdefault("adapt_no_meta", adapted_accuracy(student, agg, target, t_tokens, args.ilr, args.sup))
    save()
    for arm, mask in (("meta_dmoe", True), ("meta_dmoe_nomask", False)):
        if arm in partial:
            continue
        s, a = copy.deepcopy(student), copy.deepcopy(agg)
        meta_train(s, a, domains["source"], s_tokens, args, seed, mask)
        partial[arm + "_unadapted"] = {n: accuracy(s, *target[n]) for n in TARGETS}
        partial[arm] = adapted_accuracy(s, a, target, t_tokens, args.ilr, args.sup)
        save()
    partial["seconds"] = partial.get("seconds", 0.0) + time.time() - t0
    return partial


def mean_over_targets(r: dict[str, float]) -> float:
    return statistics.fmean(r[n] for n in TARGETS)


def report(results: dict[str, Any], path: Path) -> str:
    seeds = sorted(results["seeds"], key=int)
    rows = ["| arm | " + " | ".join(TARGETS) + " | mean over targets | paired vs erm |", "|---" * (len(TARGETS) + 3)
            + "|"]
    summary: dict[str, Any] = {}
    for arm in ARMS + ("meta_dmoe_unadapted",):
        if arm == "experts_avg":
            per = [results["experts_avg"]] * len(seeds)
        else:
            per = [results["seeds"][s][arm] for s in seeds if arm in results["seeds"][s]]
        if not per:
            continue
        means = [mean_over_targets(p) for p in per]
        cols = []
        for n in TARGETS:
            v = [p[n] for p in per]
            cols.append(f"{statistics.fmean(v):.2f}" + (f" +- {statistics.stdev(v):.2f}" if len(v) > 1 else ""))
        sd = f" +- {statistics.stdev(means):.2f}" if len(means) > 1 else ""
        erm = [mean_over_targets(results["seeds"][s]["erm"]) for s in seeds]
        diffs = [m - e for m, e in zip(means, erm)]
        paired = f"{statistics.fmean(diffs):+.2f}" + (f" +- {statistics.stdev(diffs):.2f}" if len(diffs) > 1 else "")
        rows.append(f"| {arm} | " + " | ".join(cols) + f" | {statistics.fmean(means):.2f}{sd} | {paired} |")
        summary[arm] = {"mean": statistics.fmean(means), "per_seed": means}
    verdict = verdict_text(meta_dmoe_verdicts(results))
    results["summary"], results["verdict"] = summary, verdict
    text = (f"# Meta-DMoE on CIFAR-10 style domains ({len(seeds)} seed(s))\n\n"
            f"Command: `python benchmarks/meta_dmoe.py`. Settings: {json.dumps(results['settings'])}.\n"
            f"Experts' accuracy on their own source domain (train images): "
            f"{', '.join(f'{k} {v:.1f}' for k, v in results.get('expert_self', {}).items())}.\n\n"
            + "\n".join(rows) + f"\n\n{verdict}.\n")
    path.with_suffix(".md").write_text(text)
    write_json(path, results)
    return text


#: the settings this benchmark reads: their values are declared once, in its recipe (--config)
KEYS = (
    "per_domain", "per_target", "expert_epochs", "erm_epochs", "agg_epochs", "meta_epochs", "batch", "sup", "ilr",
    "slr", "tlr", "expert_lr", "erm_lr",
)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    p.add_argument("--work", type=Path, default=REPO / "benchmarks" / "work" / "meta_dmoe")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "meta_dmoe.json")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--report-only", action="store_true")
    recipe = REPO / "configs" / "multi_teacher" / "meta_dmoe_cifar10_styles.yaml"
    args, settings = parse_with_recipe(p, recipe, KEYS)
    results = results_for(args.out, settings, {"seeds": {}})
    if args.report_only:
        print(report(results, args.out))
        return
    torch.set_num_threads(1)
    args.work.mkdir(parents=True, exist_ok=True)
    domains = build_domains(args.shared / "data" / "cifar10-jpeg.tar.gz", args.per_domain, args.per_target,
                            args.work / "decoded")
    experts = experts_for(args, domains)
    results["expert_self"] = {n: accuracy(e, *domains["source"][n]) for n, e in zip(SOURCES, experts)}
    s_tokens = {n: tokens_of(experts, domains["source"][n][0]) for n in SOURCES}
    t_tokens = {n: tokens_of(experts, domains["target"][n][0]) for n in TARGETS}
    with torch.no_grad():
        results["experts_avg"] = {
            n: 100.0 * float((torch.stack([torch.cat([e(x[s:s + 250]) for s in range(0, len(x), 250)])
                                           for e in experts]).mean(0).argmax(1) == y).float().mean())
            for n, (x, y) in domains["target"].items()}
    results.setdefault("partial", {})
    for seed in args.seeds:
        if str(seed) in results["seeds"]:
            continue
        print(f"seed {seed}", flush=True)
        partial = results["partial"].setdefault(str(seed), {})
        done = run_seed(args, seed, domains, s_tokens, t_tokens, partial, lambda: write_json(args.out, results))
        results["seeds"][str(seed)] = done
        results["partial"].pop(str(seed), None)
        print(report(results, args.out), flush=True)
    print(report(results, args.out))


if __name__ == "__main__":
    main()
