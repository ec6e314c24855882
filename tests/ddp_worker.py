"""One process of a multi-process test run (launched by tests/test_distributed.py, or run alone as rank 0 of 1).

Usage: ``python tests/ddp_worker.py OUT_DIR RUN [RUN ...]`` with the launcher's environment (RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR, MASTER_PORT). Each RUN trains a tiny BatchNorm-free student on the shipped demo images
and writes ``OUT_DIR/<run>/rank<r>.safetensors`` (the trainable module's state on this rank) and
``OUT_DIR/<run>/rank<r>.json`` (the summary and a cross-rank consistency check).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from helpers import demo_subset  # noqa: E402

from distill.core.compose import Composite  # noqa: E402
from distill.core.outputs import ModelOutput, RunInfo  # noqa: E402
from distill.core.teachers import FrozenTeacher  # noqa: E402
from distill.data.augment import IMAGENET_MEAN, IMAGENET_STD, RandomCropFlip  # noqa: E402
from distill.methods.crd import CRD  # noqa: E402
from distill.methods.feature_transfer import FactorTransfer  # noqa: E402
from distill.methods.features import FitNet  # noqa: E402
from distill.methods.logits import KD, CrossEntropy  # noqa: E402
from distill.methods.tgeo import TGeoKD  # noqa: E402
from distill.tasks.classification import ImageClassification  # noqa: E402
from distill.train import distributed, sharding  # noqa: E402
from distill.train.checkpoint import save_weights  # noqa: E402
from distill.train.module import DistillModule  # noqa: E402
from distill.train.trainer import TrainConfig, Trainer  # noqa: E402


class PlainCNN(nn.Module):
    """conv-relu x2 then a linear head (no BatchNorm, so one process and several compute the same gradients)."""

    feature_taps = {"f1": "stage1", "f2": "stage2", "pooled": "head:input"}

    def __init__(self, width: int = 8, num_classes: int = 10):
        super().__init__()
        self.stage1 = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU())
        self.stage2 = nn.Sequential(nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU())
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stage2(self.stage1(x)).mean((2, 3)))


def methods_for(run: str) -> Composite:
    if run in ("kd", "kd_accum", "kd_resume", "fsdp", "fsdp_resume"):
        return Composite({"ce": CrossEntropy(), "kd": KD(temperature=4.0), "fitnet": FitNet("pooled", "pooled")},
                         {"ce": 0.5, "kd": 0.5, "fitnet": 5.0})
    if run == "stateful":  # a memory bank (CRD) and an init stage whose step leaves the student unused (FT)
        return Composite({"ce": CrossEntropy(), "crd": CRD(feat_dim=16, num_negatives=8),
                          "ft": FactorTransfer("f2", "f2", init_epochs=1)}, {"crd": 0.8, "ft": 10.0})
    if run.startswith("mix_"):  # a mixture of two teachers (teacher_for), routed per example
        return Composite({"ce": CrossEntropy(), "kd": KD(temperature=4.0)}, {"ce": 0.5, "kd": 0.5})
    if run == "tgeo":  # fusion-ratio MLP kept in buffers, updated by a look-ahead step
        return Composite({"tgeo": TGeoKD(hidden=8)})
    raise ValueError(f"unknown run {run!r}")


def crd_bank(out: Path) -> None:
    """CRD's memory-bank update of one global batch of 4 (rows 0-3 of a bank of 6), each rank holding its shard:
    the banks after the update must be those of one process holding the whole batch."""
    rank, world = distributed.rank(), distributed.world_size()
    torch.manual_seed(0)
    crd = CRD(feat_dim=4, num_negatives=3, negatives="other_indices")
    feats = ModelOutput(torch.zeros(6, 10), {"pooled": torch.randn(6, 5)})
    crd.setup(feats, feats, RunInfo(num_train_examples=6))
    g = torch.Generator().manual_seed(1)
    vs = F.normalize(torch.randn(4, 4, generator=g), dim=1)
    vt = F.normalize(torch.randn(4, 4, generator=g), dim=1)
    idx = torch.arange(4)
    contrast = torch.stack([idx, (idx + 1) % 6, (idx + 2) % 6, (idx + 3) % 6], dim=1)
    mine = slice(rank, None, world)
    before = crd.memory_s.clone()
    loss = crd.contrast_loss(vs[mine], vt[mine], idx[mine], contrast[mine])
    distributed.all_reduce_mean(loss.detach())
    save_weights(out / "crd_bank" / f"rank{rank}.safetensors",
                 {"memory_s": crd.memory_s, "memory_t": crd.memory_t, "z": crd.z, "loss": loss.detach(),
                  "memory_s_before": before})


class CpuFSDPTrainer(Trainer):
    """The trainer under Accelerate's FSDP (version 2) on CPU processes. Accelerate 1.16 makes FSDP of
    ``ACCELERATE_USE_FSDP`` on accelerators only (on CPUs it runs plain data parallelism, which the trainer refuses);
    here its state is set to FSDP by hand after it is built, so the trainer's FSDP path (Accelerate's FSDP2
    prepare, gathered checkpoints, resume into shards) runs over gloo. The student's two stages (``Sequential``)
    become FSDP units of their own; the rest (the head, the methods' projector) is sharded by the root unit."""

    @staticmethod
    def _accelerator(cpu: bool, mixed_precision: str, ddp: object, **kwargs: object) -> object:
        from accelerate import Accelerator, FullyShardedDataParallelPlugin
        from accelerate.state import AcceleratorState
        from accelerate.utils import DistributedType

        accelerator = Accelerator(cpu=cpu, mixed_precision=mixed_precision, kwargs_handlers=[ddp], **kwargs)
        state = AcceleratorState()
        state.distributed_type = DistributedType.FSDP
        state.fsdp_plugin = FullyShardedDataParallelPlugin(fsdp_version=2, auto_wrap_policy="transformer_based_wrap",
                                                           transformer_cls_names_to_wrap=["Sequential"],
                                                           reshard_after_forward=True)
        return accelerator


def main(out: Path, runs: list[str]) -> None:
    torch.set_num_threads(1)
    if "crd_bank" in runs:
        crd_bank(out)
        runs = [r for r in runs if r != "crd_bank"]
    train = demo_subset("train", 4)
    test = demo_subset("test", 1)
    task = ImageClassification(IMAGENET_MEAN, IMAGENET_STD, RandomCropFlip(4))
    for run in runs:
        # "kd_resume": the "kd" run stopped after 3 steps (checkpoint at step 2), then resumed by new processes'
        # objects from the checkpoint rank 0 wrote
        parts = [{"max_steps": 3, "checkpoint_every": 2}, {}] if run.endswith("_resume") else [{}]
        trainer_class = CpuFSDPTrainer if run.startswith("fsdp") else Trainer
        for i, extra in enumerate(parts):
            torch.manual_seed(0)
            student = PlainCNN(8)
            teacher = FrozenTeacher(PlainCNN(16))
            data = train
            if run.startswith("mix_"):  # "mix_column": routed by a column (label parity); "mix_learned": a router
                from distill.core.mixture import MixtureTeacher
                from distill.tasks.image.data import RoutedImages

                route = "column" if run == "mix_column" else "learned"
                teacher = MixtureTeacher([PlainCNN(16), PlainCNN(12)], ["even", "odd"], route, num_outputs=10,
                                         hidden=8)
                data = RoutedImages(train.images, train.labels, train.classes, train.source, train.labels % 2)
            module = DistillModule(student, methods_for(run), teacher, task)
            cfg = TrainConfig(epochs=2, batch_size=8, grad_accum=2 if run == "kd_accum" else 1, lr=0.05,
                              progress=False, log_every=1, seed=0, deterministic=True, **extra)
            rank = distributed.rank()
            trainer = trainer_class(module, data, test, cfg, out / run / "run",
                                    val_data=test if run == "tgeo" else None)
            summary = trainer.fit(resume=i > 0)
        state = sharding.full_state(module)  # whole tensors (gathered from every rank under FSDP)
        if trainer.sharded:
            report_sharded = {k: list(sharding.local(v).shape) for k, v in module.state_dict().items()}
            (out / run / f"rank{distributed.rank()}_shards.json").write_text(json.dumps(report_sharded))
        spread = distributed.max_abs_difference_across_ranks(list(state.values()))
        save_weights(out / run / f"rank{rank}.safetensors", state)
        report = {"rank": rank, "world": trainer.world, "spread": spread, "final": summary["final"],
                  "steps": summary["steps"]}
        (out / run / f"rank{rank}.json").write_text(json.dumps(report))
        distributed.barrier()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
