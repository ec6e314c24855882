"""Teacher caches: exact serving, refusal of damaged or stale caches, K-view replay, equal losses, exact resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from helpers import TinyCNN, demo_subset

from distill.cache import CacheError, CacheSettings, TeacherCache, build_teacher_cache, cache_fingerprint
from distill.cli import main
from distill.core.compose import Composite
from distill.core.teachers import FrozenTeacher
from distill.core.topk import TopKLogits
from distill.data.augment import IMAGENET_MEAN, IMAGENET_STD, RandomCropFlip
from distill.methods.features import FitNet
from distill.methods.logits import KD, CrossEntropy
from distill.tasks.classification import ImageClassification
from distill.train.logs import read_metrics
from distill.train.module import DistillModule
from distill.train.trainer import TrainConfig, Trainer

DEMO = str(Path(__file__).resolve().parents[1] / "src" / "distill" / "assets" / "cifar10_demo.tar.gz")

YAML_EXAMPLES = {
    "teacher_cache": "{arch: resnet56, weights: 'builtin:resnet56_cifar10_jpeg.safetensors', "
                     "cache: {path: runs/cache/r56, topk: 5, views: 4, features: [layer3]}}",
}


def make_teacher(seed: int = 0) -> TinyCNN:
    torch.manual_seed(seed)
    return TinyCNN(16).eval()


def make_task(augment: bool) -> ImageClassification:
    return ImageClassification(IMAGENET_MEAN, IMAGENET_STD, RandomCropFlip(4) if augment else None)


def build(path: Path, teacher: TinyCNN, task: ImageClassification, data, settings: CacheSettings) -> TeacherCache:
    build_teacher_cache(path, teacher, task, data, settings, batch_size=16, shard_size=16)
    return TeacherCache(path, expected=cache_fingerprint(teacher, task, data, settings))


def test_yaml_example_and_config_checks():
    from distill.config import ConfigError, parse_config

    raw = {"data": {"train": DEMO}, "student": {"arch": "resnet20"}, "methods": [{"name": "kd"}],
           "teacher": yaml.safe_load(YAML_EXAMPLES["teacher_cache"])}
    cfg = parse_config(raw).teacher.cache
    assert cfg.topk == 5 and cfg.views == 4 and cfg.features == ("layer3",) and cfg.build == "if_missing"
    raw["data"]["augment"] = None
    with pytest.raises(ConfigError, match=r"^teacher\.cache\.views: 4 stored views need random augmentation"):
        parse_config(raw)
    raw["teacher"]["cache"]["dtype"] = "int8"
    with pytest.raises(ConfigError, match=r"^teacher\.cache\.dtype: "):
        parse_config(raw)


def test_full_cache_serves_the_teachers_logits_and_features(tmp_path):
    teacher, task, data = make_teacher(), make_task(False), demo_subset("train", 4)
    cache = build(tmp_path / "c", teacher, task, data, CacheSettings(features=("stage2",)))
    assert len(cache.store.manifest["shards"]) == 3  # 40 examples in shards of 16
    idx = torch.tensor([39, 0, 17, 16, 5])  # across shards, out of order
    batch = task.prepare(task.fetch(data, idx), train=False, generator=None)
    got = cache(batch, task, ["stage2"])
    live = FrozenTeacher(teacher)(batch, task, ["stage2"])
    torch.testing.assert_close(got.logits, live.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.feature("stage2"), live.feature("stage2"), rtol=1e-5, atol=1e-5)
    with pytest.raises(CacheError, match=r"features \['stage1'\] were not stored"):
        cache(batch, task, ["stage1"])
    # the memory-mapped path serves the same values as the in-memory one
    mapped = TeacherCache(tmp_path / "c", in_memory=False)
    assert not mapped.store.in_memory
    torch.testing.assert_close(mapped(batch, task, ["stage2"]).logits, got.logits, rtol=0, atol=0)


def test_inputs_from_another_split_are_refused(tmp_path):
    teacher, task, data = make_teacher(), make_task(False), demo_subset("train", 4)
    cache = build(tmp_path / "c", teacher, task, data, CacheSettings())
    other = demo_subset("test", 4)
    batch = task.prepare(task.fetch(other, torch.arange(8)), train=False, generator=None)
    with pytest.raises(CacheError, match="differ from those the teacher saw"):
        cache(batch, task, [])


def _shard(path: Path) -> Path:
    return path / json.loads((path / "manifest.json").read_text())["shards"][1]["files"]["logits"]["file"]


def test_bit_flip_truncation_and_unfinished_build_are_refused(tmp_path):
    teacher, task, data = make_teacher(), make_task(False), demo_subset("train", 4)
    settings = CacheSettings()
    path = tmp_path / "c"
    build(path, teacher, task, data, settings)
    shard = _shard(path)
    raw = bytearray(shard.read_bytes())
    raw[-7] ^= 0x10  # one bit of one stored logit
    shard.write_bytes(bytes(raw))
    with pytest.raises(CacheError, match=r"shard-00001\.t0\.npy: checksum mismatch.*corrupted"):
        TeacherCache(path)
    build(path, teacher, task, data, settings)
    shard.write_bytes(shard.read_bytes()[:-40])
    with pytest.raises(CacheError, match=r"shard-00001\.t0\.npy: truncated or overwritten shard"):
        TeacherCache(path, verify=False)  # sizes are checked even without checksums
    build(path, teacher, task, data, settings)
    (path / "manifest.json").unlink()  # what an interrupted build leaves
    with pytest.raises(CacheError, match="no manifest.json; the cache is missing or its build did not finish"):
        TeacherCache(path)


def test_stale_cache_is_refused_naming_what_changed(tmp_path):
    teacher, task, data = make_teacher(), make_task(False), demo_subset("train", 4)
    settings = CacheSettings()
    build(tmp_path / "c", teacher, task, data, settings)

    def open_for(t, tk, d, s):
        return TeacherCache(tmp_path / "c", expected=cache_fingerprint(t, tk, d, s))

    other_teacher = make_teacher(1)
    with pytest.raises(CacheError, match=r"stale cache.*: teacher \(cache"):
        open_for(other_teacher, task, data, settings)
    with pytest.raises(CacheError, match=r"stale cache.*: data \(cache"):
        open_for(teacher, task, demo_subset("train", 4, seed=1), settings)
    other_norm = ImageClassification((0.5, 0.5, 0.5), (0.5, 0.5, 0.5), None)
    with pytest.raises(CacheError, match=r"stale cache.*transform\.normalize"):
        open_for(teacher, other_norm, data, settings)
    with pytest.raises(CacheError, match=r"stale cache.*stored\.topk \(cache None, expected 3\)"):
        open_for(teacher, task, data, CacheSettings(topk=3))
    open_for(teacher, task, data, settings)  # the matching fingerprint opens


def test_k_view_replay_serves_exactly_the_view_the_student_sees(tmp_path):
    teacher, task, data = make_teacher(), make_task(True), demo_subset("train", 4)
    settings = CacheSettings(views=3, topk=4, seed=5)
    cache = build(tmp_path / "c", teacher, task, data, settings)
    task.augment_source = cache
    idx = torch.tensor([0, 13, 27, 39, 8])
    seen = []
    for epoch in range(3):
        raw = task.fetch(data, idx)
        raw.meta["epoch"] = epoch
        batch = task.prepare(raw, train=True, generator=None)
        seen.append(batch.meta["view"])
        served = cache(batch, task, [])
        # recompute the teacher on exactly the images the student is given
        live = TopKLogits.from_logits(teacher(batch.inputs), 4)
        assert torch.equal(served.topk.indices, live.indices)
        torch.testing.assert_close(served.topk.logprobs, live.logprobs, rtol=1e-5, atol=1e-5)
    # over K epochs every example shows each of its K stored views exactly once
    assert torch.equal(torch.stack(seen).sort(0).values, torch.arange(3)[:, None].expand(3, len(idx)))
    # the views really differ (different crops/flips), and a fresh random view is refused
    params = cache.store.get(idx, torch.zeros(len(idx), dtype=torch.long), ["augment"])["augment"]
    assert not torch.equal(params, cache.store.get(idx, torch.ones(len(idx), dtype=torch.long), ["augment"])["augment"])
    fresh = make_task(True).prepare(task.fetch(data, idx), train=True, generator=torch.Generator().manual_seed(0))
    with pytest.raises(CacheError, match="does not say which view"):
        cache(fresh, task, [])


def _module(teacher, task, topk_ok: bool = False) -> DistillModule:
    torch.manual_seed(1)
    methods = {"ce": CrossEntropy(), "kd": KD(temperature=4.0)}
    weights = {"ce": 0.5, "kd": 0.5}
    if not topk_ok:
        methods["fitnet"] = FitNet("f2", "f2")
        weights["fitnet"] = 1.0
    return DistillModule(TinyCNN(8), Composite(methods, weights), teacher, task)


def _losses(run_dir: Path) -> list[float]:
    return [float(r["value"]) for r in read_metrics(run_dir) if r["split"] == "train" and r["metric"] == "loss"]


def test_full_cache_run_has_the_live_teachers_losses(tmp_path):
    teacher, data = make_teacher(), demo_subset("train", 4)
    cfg = TrainConfig(epochs=1, batch_size=10, lr=0.05, progress=False, log_every=1, seed=3)
    live = _module(FrozenTeacher(teacher), make_task(False))
    Trainer(live, data, None, cfg, tmp_path / "live").fit()
    task = make_task(False)
    cache = build(tmp_path / "c", teacher, task, data, CacheSettings(features=("f2",)))
    cached = _module(cache, task)
    Trainer(cached, data, None, cfg, tmp_path / "cached").fit()
    a, b = _losses(tmp_path / "live"), _losses(tmp_path / "cached")
    assert len(a) == len(b) == 4
    assert a == pytest.approx(b, rel=1e-4, abs=1e-5)
    for (k, x), y in zip(live.student.state_dict().items(), cached.student.state_dict().values()):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5, msg=k)


def test_resume_with_a_k_view_cache_is_bit_identical(tmp_path):
    teacher, data = make_teacher(), demo_subset("train", 4)
    task = make_task(True)
    cache = build(tmp_path / "c", teacher, task, data, CacheSettings(views=2, topk=3))
    task.augment_source = cache

    def run(name: str, max_steps: int | None = None) -> DistillModule:
        module = _module(cache, task, topk_ok=True)
        cfg = TrainConfig(epochs=2, batch_size=10, lr=0.05, progress=False, deterministic=True, checkpoint_every=2,
                          max_steps=max_steps, log_every=1)
        Trainer(module, data, None, cfg, tmp_path / name).fit()
        return module

    full = run("full")
    run("split", max_steps=5)  # resumes from step 4, then crosses into the next epoch (other views)
    resumed = run("split")
    for (k, x), y in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(x, y), k


def test_half_precision_storage_error_is_small(tmp_path):
    teacher, task, data = make_teacher(), make_task(False), demo_subset("train", 2)
    full = build(tmp_path / "f32", teacher, task, data, CacheSettings())
    half = build(tmp_path / "f16", teacher, task, data, CacheSettings(dtype="float16"))
    bf = build(tmp_path / "bf16", teacher, task, data, CacheSettings(dtype="bfloat16"))
    batch = task.prepare(task.fetch(data, torch.arange(20)), train=False, generator=None)
    ref = full(batch, task, []).logits
    assert half.store.nbytes < full.store.nbytes
    for cache, tol in ((half, 2**-10), (bf, 2**-7)):
        got = cache(batch, task, []).logits
        assert got.dtype == torch.float32
        assert ((got - ref).abs() <= tol * ref.abs() + 1e-6).all()


def test_cli_build_verify_info_and_topk_config_check(tmp_path, capsys):
    from safetensors.torch import save_file

    from distill.models import build_model

    raw = {
        "output_dir": str(tmp_path / "run"),
        "data": {"train": DEMO, "train_per_class": 2, "augment": None, "channels_last": False},
        "student": {"arch": "resnet20"},
        "teacher": {"arch": "resnet20", "weights": str(tmp_path / "t.safetensors"),
                    "cache": {"path": str(tmp_path / "cache"), "topk": 2}},
        "methods": [{"name": "kd"}],
        "train": {"epochs": 1, "batch_size": 10, "cpu": True},
    }
    torch.manual_seed(123)  # not the run's seed: the teacher without these weights must differ from them
    save_file(build_model("resnet20", num_classes=10).state_dict(), str(tmp_path / "t.safetensors"))
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    assert main(["cache", "build", str(cfg)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["examples"] == 20 and out["meta"]["kind"] == "topk" and out["meta"]["k"] == 2
    assert main(["cache", "verify", str(cfg)]) == 0
    assert json.loads(capsys.readouterr().out)["checked"] == "checksums and fingerprint"
    assert main(["cache", "info", str(tmp_path / "cache")]) == 0
    assert json.loads(capsys.readouterr().out)["meta"]["num_classes"] == 10
    # another teacher: the same cache is refused as stale
    assert main(["cache", "verify", str(cfg), "--set", "teacher.weights=random"]) == 2
    assert "stale cache" in capsys.readouterr().err
    # a method that needs dense logits cannot use a top-k cache: one line naming the key
    assert main(["cache", "build", str(cfg), "--set", "methods.0.name=dkd"]) == 2
    assert capsys.readouterr().err.startswith("config error: teacher.cache.topk: methods ['dkd'] need the")


def _ddp_worker(rank: int, path: str, init: str) -> None:
    import torch.distributed as dist

    from distill.cache import ensure_teacher_cache

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        teacher, task, data = make_teacher(), make_task(False), demo_subset("train", 2)
        built = []
        cache = ensure_teacher_cache(path, teacher, task, data, CacheSettings(), batch_size=8,
                                     log=lambda msg: built.append(msg))
        batch = task.prepare(task.fetch(data, torch.arange(20)), train=False, generator=None)
        torch.testing.assert_close(cache(batch, task, []).logits, teacher(batch.inputs), rtol=1e-5, atol=1e-5)
        Path(path, f"rank{rank}.built").write_text(str(len(built)))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two spawned processes (a few seconds on idle cores)
def test_under_ddp_rank0_builds_and_every_rank_reads(tmp_path):
    import torch.multiprocessing as mp

    path = tmp_path / "c"
    mp.spawn(_ddp_worker, args=(str(path), f"file://{tmp_path / 'rendezvous'}"), nprocs=2)
    assert (path / "rank0.built").read_text() == "1" and (path / "rank1.built").read_text() == "0"


def test_resuming_against_a_rebuilt_cache_is_refused(tmp_path):
    teacher, data = make_teacher(), demo_subset("train", 4)
    task = make_task(False)
    cfg = TrainConfig(epochs=1, batch_size=10, lr=0.05, progress=False, checkpoint_every=2, max_steps=2)
    Trainer(_module(build(tmp_path / "c", teacher, task, data, CacheSettings(topk=3)), task, topk_ok=True), data,
            None, cfg, tmp_path / "run").fit()
    same = build(tmp_path / "c2", teacher, task, data, CacheSettings(topk=3))  # same content, other folder
    cfg2 = TrainConfig(epochs=1, batch_size=10, lr=0.05, progress=False, checkpoint_every=2)
    Trainer(_module(same, task, topk_ok=True), data, None, cfg2, tmp_path / "run").fit()  # resumes
    other = build(tmp_path / "c3", teacher, task, data, CacheSettings(topk=5))
    with pytest.raises(ValueError, match=r"different run \(teacher: "):
        Trainer(_module(other, task, topk_ok=True), data, None, cfg2, tmp_path / "run").fit(resume=True)


def test_an_interrupted_augmented_build_resumes_to_the_files_of_an_uninterrupted_one(tmp_path):
    """Killed mid-view (batches straddle shards): the second build runs only the batches not recorded as done and
    writes shards byte-identical to a build that was never interrupted; another key starts afresh."""
    teacher, task, data = make_teacher(), make_task(True), demo_subset("train", 3)  # 30 examples
    settings = CacheSettings(views=2, topk=4, seed=5, features=("stage1",))
    kw = dict(batch_size=7, shard_size=8)
    whole = build_teacher_cache(tmp_path / "whole", teacher, task, data, settings, **kw)
    calls = []
    hook = teacher.register_forward_hook(lambda m, a, o: calls.append(1) if len(calls) < 6 else
                                         (_ for _ in ()).throw(KeyboardInterrupt("killed")))
    with pytest.raises(KeyboardInterrupt):  # 5 batches a view: killed in the second view's second batch
        build_teacher_cache(tmp_path / "c", teacher, task, data, settings, checkpoint_seconds=0, **kw)
    hook.remove()
    assert (tmp_path / "c" / "build_progress.json").exists() and not (tmp_path / "c" / "manifest.json").exists()
    calls.clear()
    hook = teacher.register_forward_hook(lambda m, a, o: calls.append(1))
    resumed = build_teacher_cache(tmp_path / "c", teacher, task, data, settings, **kw)
    assert len(calls) == 4  # view 2 from its second batch: 4 of 10 batches run again
    assert [s["files"] for s in resumed["shards"]] == [s["files"] for s in whole["shards"]]  # same bytes
    assert not (tmp_path / "c" / "build_progress.json").exists()
    TeacherCache(tmp_path / "c", expected=cache_fingerprint(teacher, task, data, settings))
    (tmp_path / "c" / "manifest.json").unlink()
    (tmp_path / "c" / "build_progress.json").write_text(json.dumps({"key": "another build", "view": 1, "next": 7}))
    calls.clear()
    again = build_teacher_cache(tmp_path / "c", teacher, task, data, settings, batch_size=10, shard_size=8)
    assert len(calls) == 6 and again["shards"][0]["files"] == whole["shards"][0]["files"]  # from the start
    hook.remove()
