"""CNN-ViT collaborative learning: a CNN student and a ViT student trained together, each teaching the other only
where it is the more reliable one (online KD, no pretrained teacher). Segmentation (the spec's own setting) and a
classification variant.

The run's student is the CNN (c); the ViT (v) is this method's own module (``peer``, any registered image model
with ViT taps, trained by the same optimiser, its learning rate scaled by ``peer_lr_factor``). It reads the CNN's
input images through a tap on the CNN's first module (``input_tap``, default ``conv1:input``: the normalised,
augmented batch), so both students see the same images. With z the logits, p = softmax(z), l = the per-example
cross-entropy (detached) and sg = stop-gradient:

* supervised: L_sup = CE(z^c, y) + CE(z^v, y); the CNN's CE is the recipe's ``ce`` method, the ViT's is the
  ``peer_ce`` term here.
* HFD (heterogeneous feature distillation), on the first-stage features F^c_1 (CNN map) and F^v_1 (ViT patch
  tokens as a map), resized to the smaller grid (average pooling), with 1x1 aligners a_c and a_v:
      L_HFD = MSE(a_c(F^c_1), sg F^v_1) + MSE(a_v(F^v_1), sg F^c_1)
* region-wise BSD, on the high-level maps G^c, G^v (the last stage, aligned by 1x1 convs b_c, b_v to a common
  width): the map is cut into R x R regions; in a region the student with the lower detached mean CE teaches:
      term_r = MSE(b_v(G^v)[r], sg b_c(G^c)[r]) if l^c_r < l^v_r, else MSE(b_c(G^c)[r], sg b_v(G^v)[r])
  L_rBSD = the mean over regions (and images). For classification there is no per-pixel CE, so every region of an
  image takes the image's CE (the selection becomes per image; R only changes how the MSE is averaged).
* pixel-wise BSD, per pixel i (segmentation; per example in the classification variant): s^{c->v}_i = 1 when
  argmax z^c_i = y_i and l^c_i < l^v_i (and symmetrically s^{v->c}_i); when neither is right, nothing is transferred;
  pixels labelled ``ignore_index`` are never selected:
      L_pBSD = sum_i [s^{c->v}_i KL(sg p^c_i || p^v_i) + s^{v->c}_i KL(sg p^v_i || p^c_i)]
               / max(1, sum_i (s^{c->v}_i + s^{v->c}_i)),   tau = 1
  With both masks all ones this is DML (``selection: all``; ignored pixels still excluded), the checkable case.

Segmentation (``task: semantic_segmentation``; the student's logits are (B, K, H, W) at label size): the peer is a
segmentation model (e.g. ``seg_vit_micro``: ViT 96 x 4, a linear head per token, logits upsampled to label size);
l^c_i, l^v_i are per-pixel cross-entropies (ignored pixels excluded everywhere, the peer's CE included); in
region-wise BSD the label grid is cut into the same R x R regions as the high-level maps and each region's teacher
is the student with the lower mean per-pixel CE over the region's labelled pixels (regions with none are left out
of the mean). The peer's mIoU on the test split is measured after the last epoch (``peer_miou``, a buffer).

Returns ``{"peer_ce": L_CE(v), "hfd": l1 L_HFD, "rbsd": l2 L_rBSD, "pbsd": l3 L_pBSD}``; total
L = CE(c) + these. The ViT's test accuracy is measured after the last epoch (``peer_accuracy``, a buffer;
``peer_miou`` for segmentation).

Provenance: **reconstructed (R)** throughout: no official code is stored and the paper's text past the abstract
was not available (spec ../shared/methods/dense.md, row 38, which defines these terms from the abstract). The
defaults (lambda = 1 for the three terms, R = 4, tau = 1) are the spec's starting values, not the paper's.

Paper: A Good Student is Cooperative and Reliable: CNN-Transformer Collaborative Learning for Semantic
Segmentation, ICCV 2023, arXiv:2307.12574.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from distill.core.batch import IGNORE_INDEX
from distill.core.iou import confusion_matrix, mean_iou
from distill.core.method import IMAGE_TASKS, EpochContext, TapMethod, register_method
from distill.core.outputs import ModelOutput, RunInfo, StepInputs, require_labels
from distill.core.taps import FeatureTaps

SEGMENTATION = "semantic_segmentation"


def class_dim(z: torch.Tensor) -> int:
    """The class axis: the last of (B, K) logits, axis 1 of dense (B, K, H, W) ones."""
    return 1 if z.dim() > 2 else -1


def bsd_masks(zc: torch.Tensor, zv: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(s^{c->v}, s^{v->c}) per example (logits (B, K), labels (B,)) or per pixel (logits (B, K, H, W), labels
    (B, H, W)): the teacher side is right and has the lower cross-entropy; ``IGNORE_INDEX`` pixels never."""
    lc = F.cross_entropy(zc.detach().float(), y, reduction="none")
    lv = F.cross_entropy(zv.detach().float(), y, reduction="none")
    dim = class_dim(zc)
    c_right, v_right = zc.argmax(dim) == y, zv.argmax(dim) == y  # an ignored label matches no class
    return c_right & (lc < lv), v_right & (lv < lc)


def kl_rows(p_teacher_logits: torch.Tensor, q_student_logits: torch.Tensor) -> torch.Tensor:
    """KL(softmax(teacher) || softmax(student)) per row (per pixel for dense logits), the teacher side detached."""
    dim = class_dim(q_student_logits)
    log_p = F.log_softmax(p_teacher_logits.detach().float(), dim)
    log_q = F.log_softmax(q_student_logits.float(), dim)
    return (log_p.exp() * (log_p - log_q)).sum(dim)


def pixel_bsd(zc: torch.Tensor, zv: torch.Tensor, s_cv: torch.Tensor, s_vc: torch.Tensor) -> torch.Tensor:
    """L_pBSD: the selected KLs summed, divided by max(1, the number selected)."""
    total = (s_cv.float() * kl_rows(zc, zv)).sum() + (s_vc.float() * kl_rows(zv, zc)).sum()
    return total / (s_cv.sum() + s_vc.sum()).clamp_min(1).float()


def region_teachers(lc: torch.Tensor, lv: torch.Tensor, valid: torch.Tensor,
                    regions: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel detached CEs (B, H, W) -> (c_teaches, keep), both (B, R, R): the CNN teaches a region where its
    mean CE over the region's labelled pixels is the lower; ``keep``: the region has a labelled pixel."""
    w = valid.float()[:, None]
    count = F.adaptive_avg_pool2d(w, regions)[:, 0]
    mc = F.adaptive_avg_pool2d(lc.float()[:, None] * w, regions)[:, 0] / count.clamp_min(1e-12)
    mv = F.adaptive_avg_pool2d(lv.float()[:, None] * w, regions)[:, 0] / count.clamp_min(1e-12)
    return mc < mv, count > 0


def common_grid(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two maps average-pooled to the smaller one's grid."""
    size = min(a.shape[-2], b.shape[-2]), min(a.shape[-1], b.shape[-1])
    return F.adaptive_avg_pool2d(a, size), F.adaptive_avg_pool2d(b, size)


def region_bsd(gc: torch.Tensor, gv: torch.Tensor, c_teaches: torch.Tensor, regions: int,
               keep: torch.Tensor | None = None) -> torch.Tensor:
    """L_rBSD on aligned maps (B, D, H, W): per region, MSE of the learner's map to the teacher side's (detached);
    ``c_teaches`` (B, R, R) says where the CNN is the teacher. The mean over images and regions (over the regions
    ``keep`` marks, when given)."""
    pc = F.adaptive_avg_pool2d((gc - gv.detach()).pow(2).mean(1, keepdim=True), regions).flatten(1)  # c learns
    pv = F.adaptive_avg_pool2d((gv - gc.detach()).pow(2).mean(1, keepdim=True), regions).flatten(1)  # v learns
    teach = c_teaches.flatten(1)
    terms = torch.where(teach, pv, pc)
    if keep is None:
        return terms.mean()
    k = keep.flatten(1).float()
    return (terms * k).sum() / k.sum().clamp_min(1)


def to_map(x: torch.Tensor, prefix: int) -> torch.Tensor:
    """A CNN map as it is, or ViT tokens (B, prefix + h*w, d) as a (B, d, h, w) map."""
    if x.dim() == 4:
        return x
    patches = x[:, prefix:]
    side = int(round(patches.shape[1] ** 0.5))
    return patches.transpose(1, 2).reshape(x.shape[0], x.shape[2], side, side)


def peer_table(dense: bool) -> dict[str, Any]:
    """The models a peer may be: the image-classification table, or the segmentation family's for dense students."""
    if dense:
        from distill.core.family import FAMILIES

        return FAMILIES.get(SEGMENTATION).model_table() or {}
    from distill.models import MODELS

    return MODELS


@register_method(
    "cnn_vit_coop",
    family="features",
    paper="A Good Student is Cooperative and Reliable: CNN-Transformer Collaborative Learning for Semantic "
    "Segmentation",
    year=2023,
    arxiv="2307.12574",
    venue="ICCV",
    aliases=("cnn_vit_collaborative",),
)
class CnnVitCoop(TapMethod):
    """CNN-ViT collaborative learning (online): HFD + region-wise and per-example BSD with a ViT peer."""

    tasks = IMAGE_TASKS | {SEGMENTATION}
    needs_teacher = False
    needs_labels = True
    method_name = "cnn_vit_coop"

    def __init__(self, peer: str = "vit_micro", peer_options: dict[str, Any] | None = None,
                 input_tap: str = "conv1:input", low: str = "f1", high: str = "f3", peer_low: str = "f1",
                 peer_high: str | None = None, align_width: int = 64, regions: int = 4, hfd_weight: float = 1.0,
                 rbsd_weight: float = 1.0, pbsd_weight: float = 1.0, peer_ce_weight: float = 1.0,
                 selection: Literal["reliable", "all"] = "reliable", peer_lr_factor: float = 1.0,
                 peer_weight_decay: float | None = None):
        super().__init__()
        allowed = set(peer_table(False)) | set(peer_table(True))
        if peer not in allowed:
            raise ValueError(f"cnn_vit_coop: peer {peer!r} is not a registered image or segmentation model; "
                             f"allowed: {', '.join(sorted(allowed))}")
        if regions < 1:
            raise ValueError(f"cnn_vit_coop: regions must be at least 1, got {regions}")
        self.peer_name, self.peer_options = peer, dict(peer_options or {})
        self.input_tap, self.low, self.high = input_tap, low, high
        self.peer_low, self.peer_high = peer_low, peer_high
        self.align_width, self.regions = int(align_width), int(regions)
        self.hfd_weight, self.rbsd_weight, self.pbsd_weight = float(hfd_weight), float(rbsd_weight), float(pbsd_weight)
        self.peer_ce_weight = float(peer_ce_weight)
        self.selection = selection
        self.peer_lr_factor, self.peer_weight_decay = float(peer_lr_factor), peer_weight_decay
        self.peer: nn.Module = nn.Identity()
        self.register_buffer("peer_accuracy", torch.tensor(-1.0))
        self.register_buffer("peer_miou", torch.tensor(-1.0))  # segmentation: the peer's mIoU on the test split
        self.dense = False
        # segmentation diagnostics, kept as detached tensors on the device (read through the properties, so a
        # training step never waits for the GPU): summed pixel fractions c -> v, v -> c and the step count; the
        # last step's share of kept regions the CNN teaches and whether any region was kept
        self._selected: torch.Tensor | None = None
        self._regions: torch.Tensor | None = None
        self.total_epochs = 0
        self.last_stage = ""

    @property
    def selected(self) -> list[float]:
        """Segmentation: the fractions of labelled pixels where the CNN teaches the ViT and the reverse in
        pixel-wise BSD, summed over training steps, and the number of those steps."""
        return [0.0, 0.0, 0.0] if self._selected is None else self._selected.tolist()

    @property
    def last_regions(self) -> tuple[float, float]:
        """Segmentation, the last training step: the fractions of kept regions where the CNN / the ViT teaches."""
        if self._regions is None:
            return 0.0, 0.0
        c_share, any_kept = self._regions.tolist()
        return c_share, any_kept - c_share

    def student_taps(self) -> list[str]:
        return [self.input_tap, self.low, self.high]

    def peer_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The ViT peer's logits and its low and high features as maps."""
        taps = self.peer.feature_taps  # type: ignore[union-attr]
        names = [taps[self.peer_low], taps[self.peer_high or self.last_stage]]
        with FeatureTaps(self.peer, names).capture() as feats:
            z = self.peer(x)
        prefix = getattr(self.peer, "num_prefix", 0)
        return z, to_map(feats[names[0]], prefix), to_map(feats[names[1]], prefix)

    def setup(self, student: ModelOutput, teacher: ModelOutput | None, info: RunInfo) -> None:
        x = student.feature(self.input_tap)
        self.dense = student.logits.dim() == 4
        num_classes = int(student.logits.shape[1 if self.dense else -1])
        table = peer_table(self.dense)
        if self.peer_name not in table:
            kind = "segmentation" if self.dense else "image-classification"
            raise ValueError(f"cnn_vit_coop: peer {self.peer_name!r} is not a {kind} model, but the student's outputs "
                             f"are {'dense' if self.dense else 'one row per example'}; allowed: "
                             f"{', '.join(sorted(table))}")
        self.peer = table[self.peer_name](num_classes=num_classes, **self.peer_options).to(x.device)
        taps = getattr(self.peer, "feature_taps", {})
        stages = sorted(k for k in taps if k[1:].isdigit() and k.startswith("f") and k != "f0")
        if not stages:
            raise ValueError(f"cnn_vit_coop: peer {self.peer_name!r} has no stage taps f1.. ")
        self.last_stage = stages[-1]
        with torch.no_grad():
            _, fv1, gv = self.peer_forward(x)
        fc1, gc = student.feature(self.low), student.feature(self.high)
        c1, v1 = int(fc1.shape[1]), int(fv1.shape[1])
        self.a_c, self.a_v = nn.Conv2d(c1, v1, 1), nn.Conv2d(v1, c1, 1)  # HFD aligners (each to the other's width)
        self.b_c = nn.Conv2d(int(gc.shape[1]), self.align_width, 1)  # rBSD aligners to a common width
        self.b_v = nn.Conv2d(int(gv.shape[1]), self.align_width, 1)
        for m in (self.a_c, self.a_v, self.b_c, self.b_v):
            m.to(x.device)
        self.total_epochs = info.epochs

    def optimizer_overrides(self) -> list[tuple[list[nn.Parameter], dict[str, float]]]:
        settings: dict[str, float] = {"lr_factor": self.peer_lr_factor}
        if self.peer_weight_decay is not None:
            settings["weight_decay"] = float(self.peer_weight_decay)
        return [(list(self.peer.parameters()), settings)]

    def forward(self, inputs: StepInputs) -> dict[str, torch.Tensor]:
        if self.dense:
            return self.dense_forward(inputs)
        y = require_labels(inputs, self.method_name)
        if y.is_floating_point():
            y = y.argmax(-1)
        s = inputs.student
        zc = s.logits
        zv, fv1, gv = self.peer_forward(s.feature(self.input_tap))
        terms = {"peer_ce": self.peer_ce_weight * F.cross_entropy(zv.float(), y)}
        if self.hfd_weight:
            fc1, fv1p = common_grid(s.feature(self.low), fv1)
            hfd = F.mse_loss(self.a_c(fc1), fv1p.detach()) + F.mse_loss(self.a_v(fv1p), fc1.detach())
            terms["hfd"] = self.hfd_weight * hfd
        if self.selection == "all":
            s_cv = s_vc = torch.ones_like(y, dtype=torch.bool)
        else:
            s_cv, s_vc = bsd_masks(zc, zv, y)
        if self.rbsd_weight:
            gc, gvp = common_grid(s.feature(self.high), gv)
            lc = F.cross_entropy(zc.detach().float(), y, reduction="none")
            lv = F.cross_entropy(zv.detach().float(), y, reduction="none")
            c_teaches = (lc < lv)[:, None, None].expand(-1, self.regions, self.regions)
            terms["rbsd"] = self.rbsd_weight * region_bsd(self.b_c(gc), self.b_v(gvp), c_teaches, self.regions)
        if self.pbsd_weight:
            terms["pbsd"] = self.pbsd_weight * pixel_bsd(zc, zv, s_cv, s_vc)
        return terms

    def dense_forward(self, inputs: StepInputs) -> dict[str, torch.Tensor]:
        """The segmentation variant: per-pixel CE, masks and KL; per-region teachers from the per-pixel CEs."""
        y = require_labels(inputs, self.method_name).long()
        s = inputs.student
        zc = s.logits
        zv, fv1, gv = self.peer_forward(s.feature(self.input_tap))
        valid = y != IGNORE_INDEX
        terms = {"peer_ce": self.peer_ce_weight * F.cross_entropy(zv.float(), y, ignore_index=IGNORE_INDEX)}
        if self.hfd_weight:
            fc1, fv1p = common_grid(s.feature(self.low), fv1)
            hfd = F.mse_loss(self.a_c(fc1), fv1p.detach()) + F.mse_loss(self.a_v(fv1p), fc1.detach())
            terms["hfd"] = self.hfd_weight * hfd
        if self.rbsd_weight:
            gc, gvp = common_grid(s.feature(self.high), gv)
            lc = F.cross_entropy(zc.detach().float(), y, ignore_index=IGNORE_INDEX, reduction="none")
            lv = F.cross_entropy(zv.detach().float(), y, ignore_index=IGNORE_INDEX, reduction="none")
            c_teaches, keep = region_teachers(lc, lv, valid, self.regions)
            kept = keep.sum().clamp_min(1).float()
            self._regions = torch.stack([(c_teaches & keep).sum() / kept, keep.any().float()]).detach()
            terms["rbsd"] = self.rbsd_weight * region_bsd(self.b_c(gc), self.b_v(gvp), c_teaches, self.regions, keep)
        if self.pbsd_weight:
            if self.selection == "all":
                s_cv = s_vc = valid
            else:
                s_cv, s_vc = bsd_masks(zc, zv, y)
            terms["pbsd"] = self.pbsd_weight * pixel_bsd(zc, zv, s_cv, s_vc)
            if self.training:  # diagnostics (not state): the fraction of labelled pixels each side teaches
                n = valid.sum().clamp_min(1).float()
                step = torch.stack([s_cv.sum() / n, s_vc.sum() / n, torch.ones_like(n)]).detach()
                self._selected = step if self._selected is None else self._selected + step
        return terms

    @torch.no_grad()
    def peer_eval_miou(self, context: EpochContext, split: str = "eval") -> float:
        """The segmentation peer's mIoU on a split (one confusion matrix over every labelled pixel)."""
        was = self.peer.training
        self.peer.eval()
        confusion: torch.Tensor | None = None
        try:
            for batch, out in context.student_outputs(split, [self.input_tap]):
                z = self.peer(out.feature(self.input_tap))
                k = int(z.shape[1])
                c = confusion_matrix(z.float(), batch.labels.to(z.device), k)
                confusion = c if confusion is None else confusion + c
        finally:
            self.peer.train(was)
        return mean_iou(confusion)[0] if confusion is not None else 0.0

    @torch.no_grad()
    def peer_eval(self, context: EpochContext, split: str = "eval") -> float:
        """The ViT peer's top-1 accuracy on a split, on the same (normalised) images the CNN is evaluated on."""
        was = self.peer.training
        self.peer.eval()
        right = total = 0
        try:
            for batch, out in context.student_outputs(split, [self.input_tap]):
                z = self.peer(out.feature(self.input_tap))
                right += int((z.argmax(-1) == batch.labels.to(z.device)).sum())
                total += int(batch.labels.numel())
        finally:
            self.peer.train(was)
        return right / max(1, total)

    def after_epoch(self, context: EpochContext) -> None:
        if context.epoch == self.total_epochs and "eval" in context.splits:
            if self.dense:
                self.peer_miou.fill_(self.peer_eval_miou(context))
            else:
                self.peer_accuracy.fill_(self.peer_eval(context))
