"""MST-Distill (pipelines.md row 24) on the spec's cross-"modal" CIFAR-10 analogue.

    OMP_NUM_THREADS=1 python benchmarks/mst_distill.py              # 3 seeds; resumable arm by arm
    python benchmarks/mst_distill.py --report-only

Modalities: m1 = the grayscale 32x32 image (the student's), m2 = an 8x8 RGB thumbnail (192 values: colour and
layout). Networks: T (multimodal) = a gray CNN branch (conv 32-64-128 + GAP -> 64) and a colour MLP (192 -> 64),
concatenated (128) -> fc1 (64) -> fc2 (10), masks on ``concat`` and ``fc1``; A (auxiliary, m2 only) = MLP 192 -> 128
-> 64 -> 10, masks on its two hidden layers; S = the gray CNN branch -> 10 (about 10 MMAC).
Data: ``--train`` images of the ../shared CIFAR-10 JPEG training split (fixed subset), the whole test split.
Arms, 3 seeds, Adam lr 1e-3, batch 128, tau 4, every student trained for the same number of epochs:
  s_ce      S with CE only (``--stage1 + --stage3`` epochs);
  kd_t      KD (CE + KL_tau) from T trained with CE for ``--stage1`` epochs;   kd_a: from A;   kd_avg: the mean of their
            logits;
  mst       stage 1 co-training of T, A, S (``--stage1`` epochs), stage 2 four MaskNets (``--stage2`` epochs), stage 3
            routed KD with the GateNet (``--stage3`` epochs): S sees ``--stage1 + --stage3`` epochs like the others.
Works if (spec): mst >= the best single-teacher KD (kd_t, kd_a) + 0.5 points over 3 seeds, with each of the 4
specialised teachers routed >= 10 % of the time. The spec's learning rate (1e-4, batch 512 on AV-MNIST) is replaced by
Adam 1e-3 with batch 128 for these small CIFAR nets; the student's epochs are equalised across arms.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from distill.data.images import load_images
from distill.pipelines.mst_distill import (
    GateNet,
    MaskNet,
    co_training_loss,
    kl_tau,
    mask_loss,
    masked,
    routed_loss,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from portable import portable, write_json  # noqa: E402
from sweep import parse_with_recipe, results_for  # noqa: E402
from verdicts_families import mst_verdicts, verdict_text  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ARMS = ("s_ce", "kd_t", "kd_a", "kd_avg", "mst")
T_LAYERS, A_LAYERS = ("concat", "fc1"), ("fc1", "fc2")


class GrayBranch(nn.Module):
    def __init__(self, out: int):
        super().__init__()
        def block(i: int, o: int) -> list[nn.Module]:
            return [nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU()]
        self.convs = nn.Sequential(*block(1, 32), nn.MaxPool2d(2), *block(32, 64), nn.MaxPool2d(2), *block(64, 128),
                                   nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.proj = nn.Linear(128, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.convs(x))


class Student(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gray = GrayBranch(64)
        self.head = nn.Linear(64, 10)

    def forward(self, gray: torch.Tensor, thumb: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(F.relu(self.gray(gray)))


class Multimodal(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gray = GrayBranch(64)
        self.colour = nn.Sequential(nn.Linear(192, 64), nn.ReLU())
        self.concat = nn.Identity()
        self.fc1 = nn.Linear(128, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, gray: torch.Tensor, thumb: torch.Tensor) -> torch.Tensor:
        h = self.concat(torch.cat([F.relu(self.gray(gray)), self.colour(thumb)], 1))
        return self.fc2(F.relu(self.fc1(h)))


class Auxiliary(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(192, 128)
        self.fc2 = nn.Linear(128, 64)
        self.out = nn.Linear(64, 10)

    def forward(self, gray: torch.Tensor | None, thumb: torch.Tensor) -> torch.Tensor:
        return self.out(F.relu(self.fc2(F.relu(self.fc1(thumb)))))


def modalities(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = images.float() / 255
    gray = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
    thumb = F.interpolate(x, size=(8, 8), mode="area").flatten(1)
    return (gray - 0.48) / 0.24, (thumb - 0.47) / 0.25


def schedule(opt: torch.optim.Optimizer, kind: str, epochs: int, n: int, size: int) -> Any:
    """The learning-rate schedule of one training phase, stepped once per batch: ``constant`` (the official code's)
    or ``cosine`` (to 0 over the phase's ``epochs``: the last epoch's accuracy then no longer swings by several
    points between seeds)."""
    if kind == "constant":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    if kind == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs * -(-n // size)))
    raise SystemExit(f"settings.schedule: {kind!r} is not one of constant, cosine")


def batches(n: int, size: int, g: torch.Generator):
    perm = torch.randperm(n, generator=g)
    for s in range(0, n, size):
        yield perm[s:s + size]


@torch.no_grad()
def accuracy(model: nn.Module, data: tuple[torch.Tensor, ...]) -> float:
    model.eval()
    gray, thumb, y = data
    right = sum(int((model(gray[s:s + 500], thumb[s:s + 500]).argmax(1) == y[s:s + 500]).sum())
                for s in range(0, len(y), 500))
    return 100.0 * right / len(y)


def train_ce(model: nn.Module, data: tuple[torch.Tensor, ...], epochs: int, g: torch.Generator, lr: float,
             batch: int, teacher: Any = None, tau: float = 4.0, sched: str = "constant") -> None:
    """CE (+ KL_tau to ``teacher(gray, thumb)`` logits when given), Adam with the ``sched`` schedule."""
    gray, thumb, y = data
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    lr_at = schedule(opt, sched, epochs, len(y), batch)
    for _ in range(epochs):
        model.train()
        for idx in batches(len(y), batch, g):
            z = model(gray[idx], thumb[idx])
            loss = F.cross_entropy(z, y[idx])
            if teacher is not None:
                with torch.no_grad():
                    t = teacher(gray[idx], thumb[idx])
                loss = loss + kl_tau(t, z, tau)
            opt.zero_grad()
            loss.backward()
            opt.step()
            lr_at.step()
    model.eval()


class Averaged(nn.Module):
    """The mean of two teachers' logits."""

    def __init__(self, a: nn.Module, b: nn.Module):
        super().__init__()
        self.a, self.b = a, b

    def forward(self, gray: torch.Tensor, thumb: torch.Tensor) -> torch.Tensor:
        return (self.a(gray, thumb) + self.b(gray, thumb)) / 2


def frozen(m: nn.Module) -> nn.Module:
    m.eval()
    for p in m.parameters():
        p.requires_grad_(False)
    return m


def run_mst(data: tuple[torch.Tensor, ...], args: argparse.Namespace, g: torch.Generator) -> tuple[nn.Module, dict]:
    gray, thumb, y = data
    t, a, s = Multimodal(), Auxiliary(), Student()
    nets = (t, a, s)
    opt = torch.optim.Adam([p for n in nets for p in n.parameters()], lr=args.lr)
    lr_at = schedule(opt, args.schedule, args.stage1, len(y), args.batch)
    for _ in range(args.stage1):  # stage 1: mutual co-training
        for n in nets:
            n.train()
        for idx in batches(len(y), args.batch, g):
            loss = co_training_loss([n(gray[idx], thumb[idx]) for n in nets], y[idx], args.tau)
            opt.zero_grad()
            loss.backward()
            opt.step()
            lr_at.step()
    frozen(t), frozen(a)
    s.eval()
    specialised = [(t, name, MaskNet(128 if name == "concat" else 64, heads=3, factor=2)) for name in T_LAYERS]
    specialised += [(a, name, MaskNet(128 if name == "fc1" else 64, heads=3, factor=2)) for name in A_LAYERS]
    opts = [torch.optim.Adam(m.parameters(), lr=args.lr) for _, _, m in specialised]
    for _ in range(args.stage2):  # stage 2: each MaskNet pulls its teacher toward the (fixed) student
        for idx in batches(len(y), args.batch, g):
            with torch.no_grad():
                zs = s(gray[idx], thumb[idx])
            for (net, layer, m), o in zip(specialised, opts):
                m.train()
                with masked(net, layer, m):
                    loss = mask_loss(zs, net(gray[idx], thumb[idx]), args.tau)
                o.zero_grad()
                loss.backward()
                o.step()
    for _, _, m in specialised:
        frozen(m)
    gate = GateNet(10, len(specialised))
    opt = torch.optim.Adam([*s.parameters(), *gate.parameters()], lr=args.lr)
    lr_at = schedule(opt, args.schedule, args.stage3, len(y), args.batch)
    counts = torch.zeros(len(specialised))
    for _ in range(args.stage3):  # stage 3: routed distillation
        s.train()
        for idx in batches(len(y), args.batch, g):
            with torch.no_grad():
                teachers = []
                for net, layer, m in specialised:
                    with masked(net, layer, m):
                        teachers.append(net(gray[idx], thumb[idx]))
            z = s(gray[idx], thumb[idx])
            loss, terms = routed_loss(z, y[idx], torch.stack(teachers), gate(z), k=1, tau=args.tau)
            counts += torch.bincount(terms["routes"][:, 0], minlength=len(specialised)).float()
            opt.zero_grad()
            loss.backward()
            opt.step()
            lr_at.step()
    s.eval()
    names = [f"{'T' if net is t else 'A'}:{layer}" for net, layer, _ in specialised]
    return s, {"routing": dict(zip(names, (counts / counts.sum()).tolist())),
               "teachers": {"T": accuracy(t, args.test), "A": accuracy(a, args.test)}}


def run_seed(args: argparse.Namespace, seed: int, data: tuple[torch.Tensor, ...], partial: dict[str, Any],
             save: Any) -> dict[str, Any]:
    epochs = args.stage1 + args.stage3
    teachers: dict[str, nn.Module] = {}

    def teacher(name: str) -> nn.Module:
        if name not in teachers:
            torch.manual_seed(seed + 100)
            net = Multimodal() if name == "T" else Auxiliary()
            train_ce(net, data, args.stage1, torch.Generator().manual_seed(seed + 100), args.lr, args.batch,
                     sched=args.schedule)
            teachers[name] = frozen(net)
            partial.setdefault("teacher_acc", {})[name] = accuracy(net, args.test)
        return teachers[name]

    for arm in ARMS:
        if arm in partial:
            continue
        t0 = time.time()
        g = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        extra: dict[str, Any] = {}
        if arm == "mst":
            s, extra = run_mst(data, args, g)
        else:
            s = Student()
            source = None
            if arm == "kd_t":
                source = teacher("T")
            elif arm == "kd_a":
                source = teacher("A")
            elif arm == "kd_avg":
                source = Averaged(teacher("T"), teacher("A"))
            train_ce(s, data, epochs, g, args.lr, args.batch, teacher=source, tau=args.tau, sched=args.schedule)
        partial[arm] = {"accuracy": accuracy(s, args.test), "seconds": time.time() - t0, **extra}
        print(f"seed {seed} {arm}: {partial[arm]['accuracy']:.2f}%", flush=True)
        save()
    return partial


def report(results: dict[str, Any], path: Path) -> str:
    seeds = sorted(results["seeds"], key=int)
    rows = ["| arm | accuracy (%) | paired vs s_ce | per seed |", "|---|---|---|---|"]
    means: dict[str, float] = {}
    for arm in ARMS:
        v = [results["seeds"][s][arm]["accuracy"] for s in seeds]
        if not v:
            continue
        base = [results["seeds"][s]["s_ce"]["accuracy"] for s in seeds]
        d = [a - b for a, b in zip(v, base)]
        sd = f" +- {statistics.stdev(v):.2f}" if len(v) > 1 else ""
        dsd = f" +- {statistics.stdev(d):.2f}" if len(d) > 1 else ""
        means[arm] = statistics.fmean(v)
        rows.append(f"| {arm} | {means[arm]:.2f}{sd} | {statistics.fmean(d):+.2f}{dsd} | "
                    f"{', '.join(f'{x:.2f}' for x in v)} |")
    routing = [results["seeds"][s]["mst"]["routing"] for s in seeds]
    route_txt = "; ".join(", ".join(f"{k} {100 * v:.0f}%" for k, v in r.items()) for r in routing)
    verdict = verdict_text(mst_verdicts(results))
    results["verdict"] = verdict
    teach = [results["seeds"][s].get("teacher_acc", {}) for s in seeds]
    text = (f"# MST-Distill, cross-modal CIFAR-10 analogue ({len(seeds)} seed(s))\n\n"
            f"Command: `{results.get('command', 'python benchmarks/mst_distill.py')}`. "
            f"Settings: {json.dumps(results['settings'])}.\n"
            f"CE-trained teachers' test accuracy per seed: {teach}.\n\n" + "\n".join(rows)
            + f"\n\nRouting in stage 3 per seed: {route_txt}.\n\n{verdict}.\n")
    path.with_suffix(".md").write_text(text)
    write_json(path, results)
    return text


#: the settings this benchmark reads: their values are declared once, in its recipe (--config)
KEYS = (
    "train", "test", "stage1", "stage2", "stage3", "batch", "lr", "tau", "schedule",
)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "mst_distill.json")
    p.add_argument("--cache", type=Path, default=REPO / "benchmarks" / "work" / "decoded")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--report-only", action="store_true")
    recipe = REPO / "configs" / "multi_teacher" / "mst_distill_cifar10_crossmodal.yaml"
    args, settings = parse_with_recipe(p, recipe, KEYS)
    results = results_for(args.out, settings, {"seeds": {}, "partial": {}})
    flags = [f"--{k} {portable(str(Path(v).resolve()))}" for k, v in (("config", args.config), ("out", args.out))
             if v != p.get_default(k)]
    results["command"] = " ".join(["python benchmarks/mst_distill.py", *flags])
    if args.report_only:
        print(report(results, args.out))
        return
    torch.set_num_threads(1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    path = args.shared / "data" / "cifar10-jpeg.tar.gz"
    train, test = load_images(path, split="train", cache_dir=args.cache), load_images(path, split="test",
                                                                                      cache_dir=args.cache)
    keep = torch.randperm(len(train.labels), generator=torch.Generator().manual_seed(1234))[:args.train]
    data = (*modalities(train.images[keep]), train.labels[keep])
    pick = torch.randperm(len(test.labels), generator=torch.Generator().manual_seed(4321))[:args.test]
    args.test = (*modalities(test.images[pick]), test.labels[pick])  # the test split is ordered by class
    for seed in args.seeds:
        if str(seed) in results["seeds"]:
            continue
        partial = results["partial"].setdefault(str(seed), {})
        results["seeds"][str(seed)] = run_seed(args, seed, data, partial, lambda: write_json(args.out, results))
        results["partial"].pop(str(seed), None)
        print(report(results, args.out), flush=True)
    print(report(results, args.out))


if __name__ == "__main__":
    main()
