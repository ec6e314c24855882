"""Feature probes: does a feature or relational method move its distilled quantity toward the teacher?

    python benchmarks/probes.py --name protocol30 benchmarks/work/runs/resnet20-e30-n500-*   # every run given
    python benchmarks/probes.py --name protocol30 --images 500 RUN [RUN ...]               # fewer images

For each run folder (a finished ``student.safetensors`` and either the run's ``distill_config.json`` or, for runs
written before it existed, the recipe named by the folder: ``<student>-e<epochs>-n<per_class>-<arm>-seed<seed>``
under ``configs/cifar10`` or ``configs/cifar10_mobilenetv2``) the student and the teacher run once over N test
images (default: the 1,000 test images shipped in ``src/distill/assets/cifar10_demo.tar.gz``, class-balanced
when fewer are asked), one thread, and the quantities the classic specs name (``methods/classic.md`` C0 (c)) are
measured between the student's and the teacher's features at the taps the methods read (the models'
``feature_taps``: f0..f3, f1_pre..f3_pre, pooled):

- ``at``: AT-map distance, the ``code`` form of :mod:`distill.methods.features.at` (mean over batch and positions
  of the squared difference of the normalised attention maps), summed over f1, f2, f3;
- ``sp``: SP Gram distance (:func:`distill.methods.relations.sp.sp_loss`, batchmean) at f3;
- ``cc``: correlation-matrix distance, CC's Gaussian kernel (gamma 0.4, P 2) on the unit-normalised pooled
  embeddings (CC's own heads are trained with the run and not saved, so the probe uses none: parameter-free,
  the same for every run), batchmean Frobenius distance;
- ``rkd_distance`` / ``rkd_angle``: RKD's L_D and L_A (SmoothL1, unweighted) on the pooled embeddings;
- ``pkt``: PKT's KL between the batch's cosine-similarity distributions on the pooled embeddings;
- ``hint``: FitNet's hint loss at f2 through a fresh least-squares regressor (a 1x1 linear map with bias, fitted
  on the first half of the images, MSE on the second half); the trained regressor is not saved with a run, and a
  fresh one fits every arm (the CE baseline included) the same way;
- ``vid_nll``: VID's Gaussian negative log-likelihood (no constant) of the teacher feature given the student's,
  through the same fresh linear regressor with a per-channel variance from its residuals, summed over f1..f3;
- ``ab_agreement``: the fraction of pre-activation elements whose sign agrees with the teacher's (f1_pre..f3_pre;
  a student without pre-ReLU taps, MobileNetV2 whose block outputs are linear bottlenecks, at f1..f3 as its AB
  recipe). Where the shapes match (AB's connector is the identity there) the student's maps are compared as they
  are; where they differ (MobileNetV2 -> ResNet-56: 12/16/48 against 16/32/64 channels), through a fresh connector
  fitted per run as ``hint``'s is (a 1x1 linear map with bias, least squares on the first half of the images, sign
  agreement on the second half; AB's trained connectors are dropped after its initialisation stage, and the CE
  baseline has none), so every arm of a pair is measured the same way;
- ``fsp``: FSP's matrix distance, RepDistiller's form (mean over (b, i, j) of (G_s - G_t)^2, summed over the
  consecutive pairs (f0, f1), (f1, f2), (f2, f3); only where the channels match, as FSP itself);
- ``nst``: NST's squared MMD (polynomial kernel, :func:`distill.methods.features.nst.nst_mmd`) summed over f1..f3;
- ``cka:<student tap>/<teacher tap>``: linear CKA over the N images, at every tap pair a method of the pair's recipe
  folder reads (so the CE baseline is measured at the same layers);
- ``pooled_norm``: the mean L2 norm of the pooled embedding (KD++'s criterion compares it with the teacher's);
- ``spearman``: the mean Spearman correlation between the student's and the teacher's logits per image (PLD);
- ``accuracy`` on the probe images.

Each quantity is also measured for a freshly initialised student of the same architecture and seed (``init``),
the reference of FitNet's criterion ("far below its value at initialisation"). Batch quantities (at, sp, cc, rkd,
pkt) are averaged over consecutive batches of 64 (the training batch size). Results:
``benchmarks/results/probes_<name>.json`` (repository-relative paths), read by ``benchmarks/verdicts.py``.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import math
import re
import statistics
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from distill.core.taps import FeatureTaps
from distill.data import IMAGENET_MEAN, IMAGENET_STD
from distill.data.images import load_images
from distill.methods.features.at import attention_map
from distill.methods.features.fsp import fsp_matrix
from distill.methods.features.nst import nst_mmd
from distill.methods.relations.cc import cc_congruence, correlation_matrix
from distill.methods.relations.pkt import pkt_loss
from distill.methods.relations.rkd import rkd_angles, rkd_normalized_distances
from distill.methods.relations.sp import sp_loss
from distill.models import build_model
from distill.models.weights import load_weights_into

sys.path.insert(0, str(Path(__file__).resolve().parent))
from portable import portable, write_json  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "src" / "distill" / "assets" / "cifar10_demo.tar.gz"
TEACHER = REPO / "src" / "distill" / "assets" / "resnet56_cifar10_jpeg.safetensors"
PAIRS = {"resnet20": REPO / "configs" / "cifar10", "mobilenetv2": REPO / "configs" / "cifar10_mobilenetv2"}
RUN_NAME = re.compile(r"^(?P<student>[a-z0-9_]+)-e(?P<epochs>\d+)-n(?P<per_class>\d+)-(?P<arm>.+)-seed(?P<seed>\d+)$")
BATCH = 64
STAGES = ("f1", "f2", "f3")


# -- the probe maths (tested on tiny tensors in tests/test_probes.py) ----------------------------------------------
def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA (Kornblith et al. 2019) of two representations of the same n examples (rows; any trailing
    shape is flattened): <K, L>_F / (||K||_F ||L||_F) with K, L the Gram matrices of the column-centred rows.
    1 for y = x, for y an orthogonal rotation of x and for y = c x; invariant to isotropic scaling."""
    x = x.reshape(x.shape[0], -1).double()
    y = y.reshape(y.shape[0], -1).double()
    x = x - x.mean(0, keepdim=True)
    y = y - y.mean(0, keepdim=True)
    k, l_ = x @ x.t(), y @ y.t()
    denom = (k.pow(2).sum() * l_.pow(2).sum()).sqrt()
    return float((k * l_).sum() / denom) if denom > 0 else 0.0


def match_spatial(fs: torch.Tensor, ft: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The larger map adaptive-average-pooled to the smaller's size (as AT and VID do); equal sizes untouched."""
    if fs.dim() < 4:
        return fs, ft
    if fs.shape[-1] > ft.shape[-1]:
        fs = F.adaptive_avg_pool2d(fs, ft.shape[-2:])
    elif ft.shape[-1] > fs.shape[-1]:
        ft = F.adaptive_avg_pool2d(ft, fs.shape[-2:])
    return fs, ft


def at_distance(fs: torch.Tensor, ft: torch.Tensor, p: float = 2.0) -> float:
    """AT's ``code``-mode distance of one pair: mean over (b, hw) of (Q_s - Q_t)^2; 0 for equal maps."""
    fs, ft = match_spatial(fs, ft)
    return float((attention_map(fs, p) - attention_map(ft, p)).pow(2).mean())


def cc_distance(es: torch.Tensor, et: torch.Tensor) -> float:
    """CC's correlation congruence (Gaussian kernel, gamma 0.4, P 2; batchmean, unsquared) on unit-norm
    embeddings."""
    cs = correlation_matrix(F.normalize(es.flatten(1).float(), dim=1))
    ct = correlation_matrix(F.normalize(et.flatten(1).float(), dim=1))
    return float(cc_congruence(cs, ct))


def rkd_terms(es: torch.Tensor, et: torch.Tensor) -> tuple[float, float]:
    """RKD's (L_D, L_A): SmoothL1 (beta 1, mean) of the normalised distances and of the angles."""
    xs, xt = es.flatten(1).float(), et.flatten(1).float()
    dist = F.smooth_l1_loss(rkd_normalized_distances(xs), rkd_normalized_distances(xt))
    angle = F.smooth_l1_loss(rkd_angles(xs), rkd_angles(xt))
    return float(dist), float(angle)


def pixel_rows(f: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N*H*W, C) float64 rows (one per position); (N, D) stays (N, D)."""
    f = f.double()
    return f.permute(0, 2, 3, 1).reshape(-1, f.shape[1]) if f.dim() == 4 else f.reshape(f.shape[0], -1)


def fit_linear(xs: torch.Tensor, ys: torch.Tensor, ridge: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """Least squares y ~ x W + b (normal equations with a relative ridge); returns (W, b)."""
    xm, ym = xs.mean(0), ys.mean(0)
    xc, yc = xs - xm, ys - ym
    gram = xc.t() @ xc
    gram = gram + ridge * (gram.diagonal().mean() + 1e-12) * torch.eye(gram.shape[0], dtype=gram.dtype)
    w = torch.linalg.solve(gram, xc.t() @ yc)
    return w, ym - xm @ w


def held_out_fit(fs: torch.Tensor, ft: torch.Tensor, who: str) -> tuple[torch.Tensor, ...]:
    """A fresh 1x1 linear map from the student's feature to the teacher's, fitted on the first half of the images:
    (fitted rows xa, ya, held-out rows xb, yb, W, b), one row per position (the larger map pooled first)."""
    fs, ft = match_spatial(fs, ft)
    half = fs.shape[0] // 2
    if half < 1:
        raise ValueError(f"{who} needs at least 2 images")
    xa, ya = pixel_rows(fs[:half]), pixel_rows(ft[:half])
    xb, yb = pixel_rows(fs[half:]), pixel_rows(ft[half:])
    return xa, ya, xb, yb, *fit_linear(xa, ya)


def regression_probe(fs: torch.Tensor, ft: torch.Tensor, eps: float = 1e-5) -> dict[str, float]:
    """A fresh 1x1 linear regressor from the student's feature to the teacher's, fitted on the first half of the
    images and scored on the second: ``hint`` (MSE, FitNet) and ``nll`` (VID's Gaussian NLL with a per-channel
    variance from the fit's residuals, no 1/2 log 2 pi)."""
    xa, ya, xb, yb, w, b = held_out_fit(fs, ft, "regression_probe")
    var = (ya - (xa @ w + b)).pow(2).mean(0) + eps
    err = yb - (xb @ w + b)
    return {"hint": float(err.pow(2).mean()), "nll": float((0.5 * (err.pow(2) / var + var.log())).mean())}


def sign_agreement(fs: torch.Tensor, ft: torch.Tensor) -> float:
    """The fraction of elements where (s > 0) == (t > 0): AB's activation boundaries."""
    if fs.shape != ft.shape:
        raise ValueError(f"sign agreement needs equal shapes, got {tuple(fs.shape)} and {tuple(ft.shape)}")
    return float(((fs > 0) == (ft > 0)).double().mean())


def fitted_sign_agreement(fs: torch.Tensor, ft: torch.Tensor) -> float:
    """Sign agreement through a fresh 1x1 linear connector from the student's map to the teacher's
    (:func:`held_out_fit`), scored on the held-out half (for maps whose channels differ)."""
    _, _, xb, yb, w, b = held_out_fit(fs, ft, "fitted_sign_agreement")
    return sign_agreement(xb @ w + b, yb)


def spearman_rows(a: torch.Tensor, b: torch.Tensor) -> float:
    """The mean over rows of the Spearman correlation of a's and b's entries (no ties expected in logits)."""
    ra = a.double().argsort(1).argsort(1).double()
    rb = b.double().argsort(1).argsort(1).double()
    ra, rb = ra - ra.mean(1, keepdim=True), rb - rb.mean(1, keepdim=True)
    return float(((ra * rb).sum(1) / (ra.pow(2).sum(1) * rb.pow(2).sum(1)).sqrt()).mean())


def batches(n: int, size: int = BATCH) -> Iterable[slice]:
    """Consecutive batches of ``size`` (the last one only if it holds at least 2 examples)."""
    for i in range(0, n, size):
        if n - i >= 2:
            yield slice(i, min(n, i + size))


def probe(student: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor],
          pairs: Sequence[tuple[str, str]]) -> dict[str, float]:
    """Every probe quantity between two feature dictionaries (tap -> (N, ...) tensor; ``logits`` included)."""
    n = student["logits"].shape[0]
    out: dict[str, float] = {}
    mean = lambda xs: float(sum(xs) / len(xs))  # noqa: E731
    out["at"] = sum(mean([at_distance(student[k][s], teacher[k][s]) for s in batches(n)]) for k in STAGES)
    out["sp"] = mean([float(sp_loss(student["f3"][s].float(), teacher["f3"][s].float())) for s in batches(n)])
    out["cc"] = mean([cc_distance(student["pooled"][s], teacher["pooled"][s]) for s in batches(n)])
    rkd = [rkd_terms(student["pooled"][s], teacher["pooled"][s]) for s in batches(n)]
    out["rkd_distance"], out["rkd_angle"] = mean([r[0] for r in rkd]), mean([r[1] for r in rkd])
    out["pkt"] = mean([float(pkt_loss(student["pooled"][s].float(), teacher["pooled"][s].float()))
                       for s in batches(n)])
    fsp_pairs = [(a, b) for a, b in zip(("f0", "f1", "f2"), STAGES) if a in student and a in teacher]
    if fsp_pairs and all(student[k].shape[1] == teacher[k].shape[1] for pair in fsp_pairs for k in pair):
        out["fsp"] = mean([sum(float((fsp_matrix(student[a][s], student[b][s])
                                      - fsp_matrix(teacher[a][s], teacher[b][s])).pow(2).mean())
                               for a, b in fsp_pairs) for s in batches(n)])
    out["nst"] = mean([sum(float(nst_mmd(student[k][s], teacher[k][s])) for k in STAGES) for s in batches(n)])
    out["hint"] = regression_probe(student["f2"], teacher["f2"])["hint"]
    out["vid_nll"] = sum(regression_probe(student[k], teacher[k])["nll"] for k in STAGES)
    # a student without pre-ReLU taps (MobileNetV2: linear-bottleneck block outputs) is read at fK, as its AB recipe
    ab = [(k + "_pre" if k + "_pre" in student else k, k + "_pre") for k in STAGES]
    if all(s in student and t in teacher for s, t in ab):
        out["ab_agreement"] = mean([sign_agreement(student[s], teacher[t]) if student[s].shape == teacher[t].shape
                                    else fitted_sign_agreement(student[s], teacher[t]) for s, t in ab])
    for s_tap, t_tap in pairs:
        out[f"cka:{s_tap}/{t_tap}"] = linear_cka(student[s_tap], teacher[t_tap])
    out["pooled_norm"] = float(student["pooled"].flatten(1).norm(dim=1).mean())
    out["spearman"] = spearman_rows(student["logits"], teacher["logits"])
    return out


# -- models, data, run folders ---------------------------------------------------------------------------------
def probe_images(path: Path, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` test images of ``path`` (class-balanced: the first n / classes of each class, in file order),
    normalised as the recipes normalise (ImageNet mean and std), and their labels."""
    data = load_images(path, split="test")
    labels = data.labels
    classes = int(labels.max()) + 1
    per = math.ceil(n / classes)
    keep = torch.cat([torch.nonzero(labels == c).flatten()[:per] for c in range(classes)])
    keep = keep.sort().values[:n] if len(keep) > n else keep.sort().values
    x = data.images[keep].float() / 255.0
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std, labels[keep]


@torch.no_grad()
def features(model: torch.nn.Module, x: torch.Tensor, taps: Sequence[str], batch: int = 100
             ) -> dict[str, torch.Tensor]:
    """The model's features at ``taps`` (and its ``logits``) on every image, in eval mode."""
    model.eval()
    tapper = FeatureTaps(model, list(taps))
    out: dict[str, list[torch.Tensor]] = {t: [] for t in [*taps, "logits"]}
    for i in range(0, x.shape[0], batch):
        with tapper.capture() as feats:
            logits = model(x[i:i + batch])
        for t in taps:
            out[t].append(feats[t].detach().float().clone())
        out["logits"].append(logits.float())
    return {k: torch.cat(v) for k, v in out.items()}


def run_description(run_dir: Path) -> dict[str, Any]:
    """Student architecture and options, arm, seed, epochs and training images per class of a run folder: from its
    ``distill_config.json`` when it has one, otherwise from the folder's name and the pair's recipe."""
    m = RUN_NAME.match(run_dir.name)
    desc: dict[str, Any] = dict(m.groupdict()) if m else {}
    config = run_dir / "distill_config.json"
    if config.exists():
        raw = json.loads(config.read_text())
        desc.update(student=raw["student"]["arch"], options=raw["student"].get("options") or {},
                    seed=raw.get("seed", desc.get("seed")), epochs=raw["train"]["epochs"],
                    per_class=raw["data"].get("train_per_class"))
    elif m:
        recipe = PAIRS.get(desc["student"], Path("-")) / f"{desc['arm']}.yaml"
        if not recipe.exists():
            raise FileNotFoundError(f"{run_dir}: no distill_config.json and no recipe {recipe}")
        from sweep import load_recipe

        _, cfg = load_recipe(recipe)
        desc.update(student=cfg.student.arch, options=dict(cfg.student.options or {}))
    else:
        raise ValueError(f"{run_dir}: no distill_config.json, and its name is not <student>-e<E>-n<N>-<arm>-seed<S>")
    if not desc.get("arm"):
        raise ValueError(f"{run_dir}: the arm is named by the folder (<student>-e<E>-n<N>-<arm>-seed<S>), as "
                         "benchmarks/cifar10_kd.py names its runs")
    desc["options"] = desc.get("options") or {}
    for key in ("seed", "epochs", "per_class"):
        if desc.get(key) is not None:
            desc[key] = int(desc[key])
    return desc


def tap_pairs(student: str) -> list[tuple[str, str]]:
    """Every (student tap, teacher tap) pair a method of the pair's recipe folder reads, plus the stage outputs
    and the pooled embedding (so every run, the CE baseline included, is measured at the same layers)."""
    from sweep import discover_arms, load_recipe

    from distill.methods import METHODS

    pairs = [(k, k) for k in ("f0", "f1", "f2", "f3", "pooled")]
    folder = PAIRS.get(student)
    for path in (discover_arms(folder).values() if folder is not None else []):
        _, cfg = load_recipe(path)
        for m in cfg.methods:
            method = METHODS.get(m.name)(**m.options())
            s = getattr(method, "student_taps", lambda: [])()
            t = getattr(method, "teacher_taps", lambda: [])()
            pairs += [(a, b) for a, b in zip(s, t) if a != "." and b != "."]
    return list(dict.fromkeys(pairs))


def repo_relative(run_dir: Path) -> str:
    """A run folder as its repository names it: ``benchmarks/work/runs/<name>`` when it lies in such a folder
    (whichever checkout ran it), otherwise the path as given."""
    parts = run_dir.resolve().parts
    for i in range(len(parts) - 3):
        if parts[i:i + 3] == ("benchmarks", "work", "runs"):
            return "/".join(parts[i:])
    return str(run_dir)


def portable_arg(arg: str) -> str:
    """A command-line argument as the result file records it: run folders and other absolute paths
    repository-relative."""
    if not arg.startswith("/"):
        return arg
    where = repo_relative(Path(arg))
    return where if where != arg else str(portable(arg))


def model_taps(model: torch.nn.Module, wanted: Iterable[str]) -> list[str]:
    names = getattr(model, "feature_taps", {})
    return [t for t in dict.fromkeys(wanted) if t in names]


#: the quantities the summary table shows (every quantity stays in the JSON)
SUMMARY = ("at", "sp", "cc", "rkd_distance", "rkd_angle", "pkt", "hint", "vid_nll", "ab_agreement", "fsp", "nst",
           "cka:f1/f1", "cka:f2/f2", "cka:f3/f3", "cka:pooled/pooled", "spearman", "accuracy")


def summary_markdown(result: dict[str, Any], name: str) -> str:
    """Per (student, epochs, images per class): each arm's mean of each quantity over its probed seeds, and the
    mean of the untrained students of the same seeds."""
    groups: dict[tuple[str, int, int], dict[str, list[dict[str, Any]]]] = {}
    for r in result["runs"]:
        groups.setdefault((r["student"], r["epochs"], r["per_class"]), {}).setdefault(r["arm"], []).append(r)
    lines = [f"# Feature probes: {name}", "",
             f"Command(s): {'; '.join(f'`{c}`' for c in result['commands'])}", "",
             f"{result['images']:,} test images; teacher accuracy on them "
             f"{100 * result['teacher'].get('accuracy', float('nan')):.1f}%. Means over the probed seeds; "
             "'untrained': the same students at initialisation (same seeds).", ""]
    for (student, epochs, per_class), arms in sorted(groups.items()):
        names = sorted(arms)
        seeds = sorted({r["seed"] for rs in arms.values() for r in rs})
        init = [result["init"][f"{student}/seed{s}"] for s in seeds if f"{student}/seed{s}" in result["init"]]
        lines += [f"## {student}, {epochs} epochs, {per_class} images per class", "",
                  "| quantity | " + " | ".join(f"{a} ({len(arms[a])} seeds)" for a in names) + " | untrained |",
                  "|---|" + "---|" * (len(names) + 1)]
        for q in SUMMARY:
            cells = []
            for rs in [*(arms[a] for a in names), None]:
                vals = [r[q] for r in init if q in r] if rs is None else [
                    r["quantities"][q] for r in rs if q in r["quantities"]]
                cells.append(f"{statistics.fmean(vals):.4g}" if vals else "-")
            lines.append(f"| {q} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def write_summary(path: Path, name: str) -> None:
    result = json.loads(path.read_text())
    path.with_suffix(".md").write_text(summary_markdown(result, name))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="*", type=Path, help="run folders (student.safetensors + config or recipe name)")
    p.add_argument("--summary-only", action="store_true",
                   help="rewrite benchmarks/results/probes_<name>.md from the JSON alone")
    p.add_argument("--name", required=True, help="writes benchmarks/results/probes_<name>.json")
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--data", type=Path, default=DEMO, help="a CIFAR-10 source with a test split (default: shipped)")
    p.add_argument("--teacher", type=Path, default=TEACHER)
    p.add_argument("--teacher-arch", default="resnet56")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = p.parse_args()
    if args.summary_only:
        write_summary(args.out / f"probes_{args.name}.json", args.name)
        return 0
    if not args.runs:
        p.error("name the run folders to probe (or --summary-only)")
    torch.set_num_threads(1)
    start = time.perf_counter()
    x, y = probe_images(args.data, args.images)
    teacher = build_model(args.teacher_arch, num_classes=10)
    load_weights_into(teacher, args.teacher)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"probes_{args.name}.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    same = old.get("images") == len(y) and old.get("data") == portable(str(args.data.resolve()))
    records = {r["run_dir"]: r for r in old.get("runs", [])} if same else {}
    init_cache: dict[str, dict[str, float]] = dict(old.get("init", {})) if same else {}
    teacher_feats: dict[str, dict[str, torch.Tensor]] = {}
    teacher_facts: dict[str, Any] = {}
    probed: dict[str, dict[str, Any]] = {}  # this call's records
    for run_dir in args.runs:
        weights = run_dir / "student.safetensors"
        if not weights.exists():
            print(f"skip {run_dir}: no student.safetensors (unfinished run)", flush=True)
            continue
        desc = run_description(run_dir)
        pairs = tap_pairs(desc["student"])
        t_taps = model_taps(teacher, [b for _, b in pairs] + [k + "_pre" for k in STAGES])
        key = desc["student"]
        if key not in teacher_feats:
            teacher_feats[key] = features(teacher, x, t_taps)
            t = teacher_feats[key]
            teacher_facts = {"accuracy": float((t["logits"].argmax(1) == y).double().mean()),
                             "pooled_norm": float(t["pooled"].flatten(1).norm(dim=1).mean())}
        t = teacher_feats[key]
        model = build_model(desc["student"], num_classes=10, **desc["options"])
        s_taps = model_taps(model, [a for a, _ in pairs] + [k + "_pre" for k in STAGES])
        pairs_here = [(a, b) for a, b in pairs if a in s_taps and b in t]
        load_weights_into(model, weights)
        s = features(model, x, s_taps)
        quantities = probe(s, t, pairs_here) | {"accuracy": float((s["logits"].argmax(1) == y).double().mean())}
        init_key = f"{desc['student']}/seed{desc['seed']}"
        if not set(quantities) <= set(init_cache.get(init_key, {})):  # new, or a quantity added since
            torch.manual_seed(desc["seed"])
            s0 = features(build_model(desc["student"], num_classes=10, **desc["options"]), x, s_taps)
            init_cache[init_key] = probe(s0, t, pairs_here) | {
                "accuracy": float((s0["logits"].argmax(1) == y).double().mean())}
        where = repo_relative(run_dir)
        records[where] = probed[where] = {"run_dir": where, **desc, "quantities": quantities}
        print(f"{run_dir.name}: " + ", ".join(f"{k} {v:.4g}" for k, v in quantities.items()
                                              if not k.startswith("cka:")), flush=True)
    with open(path.with_suffix(".lock"), "w") as lock:  # other probe processes may have written meanwhile
        fcntl.flock(lock, fcntl.LOCK_EX)
        old = json.loads(path.read_text()) if path.exists() else {}
        same = old.get("images") == len(y) and old.get("data") == portable(str(args.data.resolve()))
        if same:
            records = {r["run_dir"]: r for r in old.get("runs", [])} | probed
            init_cache = dict(old.get("init", {})) | init_cache
        result = {"images": len(y), "data": str(args.data.resolve()), "split": "test", "batch": BATCH,
                  "teacher": {"weights": str(args.teacher.resolve()), "arch": args.teacher_arch, **teacher_facts},
                  "commands": [*(old.get("commands", []) if same else []),
                               "python benchmarks/probes.py " + " ".join(portable_arg(a) for a in sys.argv[1:])],
                  "init": init_cache, "runs": sorted(records.values(), key=lambda r: r["run_dir"]),
                  "wall_time_s": round(time.perf_counter() - start, 1)}
        if not teacher_facts and old.get("teacher"):
            result["teacher"] = old["teacher"]
        write_json(path, result)
        write_summary(path, args.name)
    print(f"wrote {path} and its .md ({len(records)} runs, {time.perf_counter() - start:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
