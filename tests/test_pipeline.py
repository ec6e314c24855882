"""Pipelines: validation, stage fingerprints, skipping, stale refusal naming what changed, --rebuild, damaged
artefacts, the dataset API, and a SIGKILL mid-stage that resumes to the uninterrupted result."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from pydantic import Field

from distill.config import ConfigError, Strict
from distill.pipelines.pipeline import (
    PipelineError,
    StageKind,
    StageOutput,
    StaleArtefactError,
    load_stage,
    parse_pipeline,
    register_stage_kind,
    run_pipeline,
    stage_dataset,
)

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "pipelines" / "tiny_pcoreset.yaml"
RUNS: list[str] = []


class CounterOptions(Strict):
    n: int = Field(3, gt=0)


@register_stage_kind
class Counter(StageKind):
    """A test kind: ``n`` numbers (plus the sum of its optional input's), and a record of each run."""

    name = "test_counter"
    Options = CounterOptions
    inputs = {"src?": "another counter"}

    def run(self, ctx: Any, options: Any, inputs: dict) -> StageOutput:
        RUNS.append(ctx.name)
        base = float(inputs["src"].table()["value"].sum()) if "src" in inputs else 0.0
        return StageOutput({"numbers": {"value": torch.arange(options.n, dtype=torch.float32) + base}},
                           {"n": options.n})


def pipe(tmp: Path, n_a: int = 3, n_b: int = 2) -> Any:
    return parse_pipeline({"output_dir": str(tmp / "out"), "stages": [
        {"name": "a", "kind": "test_counter", "options": {"n": n_a}},
        {"name": "b", "kind": "test_counter", "inputs": {"src": "a"}, "options": {"n": n_b}},
    ]})


def run(p: Any, **kw: Any) -> dict:
    return run_pipeline(p, log=lambda m: None, **kw)


def test_bad_pipelines_are_refused_naming_the_key(tmp_path):
    ok = {"name": "a", "kind": "test_counter"}
    cases = [
        ({"stages": [ok]}, "output_dir"),
        ({"output_dir": "x", "stages": [{"name": "a", "kind": "nope"}]}, "unknown stage kind 'nope'"),
        ({"output_dir": "x", "stages": [ok, {**ok, "name": "b", "inputs": {"src": "c"}}]},
         "stages[1].inputs.src: 'c' is not an earlier stage"),
        ({"output_dir": "x", "stages": [ok, {**ok, "name": "b", "inputs": {"data": "a"}}]},
         "stages[1].inputs.data: stage kind 'test_counter' takes no input 'data'"),
        ({"output_dir": "x", "stages": [ok, ok]}, "stages[1].name: 'a' is used by an earlier stage"),
        ({"output_dir": "x", "stages": [{**ok, "options": {"n": 0}}]}, "stages[0].options.n"),
        ({"output_dir": "x", "stages": [{**ok, "options": {"m": 1}}]}, "stages[0].options.m"),
        ({"output_dir": "x", "stages": [{"name": "s", "kind": "pcoreset_select"}]},
         "stages[0].inputs.teacher: required"),
    ]
    for raw, message in cases:
        with pytest.raises(ConfigError) as e:
            parse_pipeline(raw)
        assert message in str(e.value), (message, str(e.value))


def test_fingerprints_skip_refuse_and_rebuild(tmp_path):
    RUNS.clear()
    first = run(pipe(tmp_path))
    assert RUNS == ["a", "b"] and [s["status"] for s in first["stages"]] == ["built", "built"]
    assert load_stage(tmp_path / "out", "b").table()["value"].tolist() == [3.0, 4.0]  # 0+1+2 = 3 added
    again = run(pipe(tmp_path))
    assert RUNS == ["a", "b"] and [s["status"] for s in again["stages"]] == ["reused", "reused"]
    assert again["stages"][1]["fingerprint"] == first["stages"][1]["fingerprint"]
    # a changed option: refused, naming the key with old and new values
    with pytest.raises(StaleArtefactError, match=r"stage 'a'.*options\.n \(artefact '3', now '4'\).*--rebuild a"):
        run(pipe(tmp_path, n_a=4))
    # rebuilding a rebuilds b too (its input changed); nothing else is run
    RUNS.clear()
    run(pipe(tmp_path, n_a=4), rebuild=["a"])
    assert RUNS == ["a", "b"]
    assert load_stage(tmp_path / "out", "b").table()["value"].tolist() == [6.0, 7.0]
    # b alone changed: a is reused
    RUNS.clear()
    run(pipe(tmp_path, n_a=4, n_b=3), rebuild=["b"])
    assert RUNS == ["b"]
    with pytest.raises(PipelineError, match="--rebuild c: no such stage"):
        run(pipe(tmp_path), rebuild=["c"])
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert [s["stage"] for s in report["stages"]] == ["a", "b"] and (tmp_path / "out" / "report.md").exists()


def test_a_changed_input_is_named(tmp_path):
    run(pipe(tmp_path))
    # rebuild a's artefact by hand with other options, leaving b's artefact from the old a
    run(parse_pipeline({"output_dir": str(tmp_path / "out"), "stages": [
        {"name": "a", "kind": "test_counter", "options": {"n": 5}}]}), rebuild=["a"])
    with pytest.raises(StaleArtefactError, match=r"stage 'b'.*inputs\.src"):
        run(pipe(tmp_path, n_a=5))


def test_damaged_artefact_is_refused(tmp_path):
    run(pipe(tmp_path))
    shard = next((tmp_path / "out" / "stages" / "a" / "artefact" / "numbers").glob("shard-*.npy"))
    data = bytearray(shard.read_bytes())
    data[-1] ^= 1
    shard.write_bytes(bytes(data))
    with pytest.raises(PipelineError, match="checksum mismatch"):
        run(pipe(tmp_path))
    record = tmp_path / "out" / "stages" / "b" / "artefact" / "stage.json"
    rec = json.loads(record.read_text())
    rec["meta"]["n"] = 99
    record.write_text(json.dumps(rec))
    with pytest.raises(PipelineError, match="damaged stage record"):
        load_stage(tmp_path / "out", "b")


def test_an_interrupted_stage_with_other_inputs_is_refused(tmp_path):
    p = pipe(tmp_path)
    work = tmp_path / "out" / "stages" / "a" / "work"
    work.mkdir(parents=True)
    from distill.pipelines.pipeline import StageContext, stage_fingerprint

    ctx = StageContext("a", work, 0, None)
    fp = stage_fingerprint(p, p.config.stages[0], {}, ctx)
    (work / "fingerprint.json").write_text(json.dumps({**fp, "options.n": "7"}))
    with pytest.raises(StaleArtefactError, match=r"interrupted run was started with other inputs: options\.n"):
        run(p)
    RUNS.clear()
    run(p, rebuild=["a"])
    assert RUNS == ["a", "b"]


# ------------------------------------------------------------------------- the real tiny pipeline, in processes


def cli(out: Path, *extra: str, **env_extra: str) -> list[str]:
    return [sys.executable, "-m", "distill.cli", "pipeline", str(TINY), "--set", f"output_dir={out}", *extra]


def env(**extra: str) -> dict[str, str]:
    e = dict(os.environ)
    e["OMP_NUM_THREADS"] = "1"  # the same thread count in every process keeps CPU kernels bit-identical
    e["PYTHONPATH"] = str(REPO / "src") + os.pathsep + e.get("PYTHONPATH", "")
    e.pop("DISTILL_TEST_PIPELINE_DELAY", None)
    e.update(extra)
    return e


@pytest.fixture(scope="module")
def full(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("full") / "out"
    subprocess.run(cli(out), check=True, env=env(), capture_output=True, cwd=tmp_path_factory.getbasetemp())
    return out


def tables(out: Path, stage: str) -> dict[str, dict[str, torch.Tensor]]:
    art = load_stage(out, stage)
    return {t: art.table(t) for t in art.stores}


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
def test_sigkill_mid_stage_resumes_to_the_uninterrupted_result(tmp_path, full):
    out = tmp_path / "out"
    proc = subprocess.Popen(cli(out), env=env(DISTILL_TEST_PIPELINE_DELAY="2"), cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = out / "stages" / "select" / "work" / "state.pt"
    deadline = time.time() + 240
    while not state.exists():
        if proc.poll() is not None:
            pytest.fail("the pipeline finished before it could be killed")
        if time.time() > deadline:
            proc.kill()
            pytest.fail("no round checkpoint appeared in time")
        time.sleep(0.05)
    time.sleep(0.3)  # inside the stage, after its first round's checkpoint
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "stages" / "select" / "artefact" / "stage.json").exists()
    done = torch.load(state, weights_only=True)["round"]
    assert 1 <= done < 4  # killed mid-stage

    resumed = subprocess.run(cli(out), env=env(), cwd=tmp_path, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "[select] resuming an interrupted run" in resumed.stdout
    assert f"[select] round {done - 1}:" not in resumed.stdout and "[select] round 3:" in resumed.stdout
    for stage in ("teacher", "select"):
        a, b = tables(full, stage), tables(out, stage)
        assert a.keys() == b.keys()
        for t in a:
            for c in a[t]:
                assert torch.equal(a[t][c], b[t][c]), (stage, t, c)
    assert load_stage(out, "select").digest == load_stage(full, "select").digest
    # the training stage downstream of the resumed selection ends with the same student
    assert load_stage(out, "distil").meta["student_sha256"] == load_stage(full, "distil").meta["student_sha256"]
    report = json.loads((out / "report.json").read_text())
    assert [s["status"] for s in report["stages"]] == ["reused", "resumed", "built"]

    # a stale artefact is refused by the command line, naming the key
    stale = subprocess.run(cli(out, "--set", "select.per_round=3"), env=env(), cwd=tmp_path, capture_output=True,
                           text=True)
    assert stale.returncode == 2
    assert "stage 'select': stale artefact" in stale.stderr and "options.per_round" in stale.stderr
    assert "--rebuild select" in stale.stderr


def test_stage_outputs_are_datasets(full):
    from helpers import demo_split

    sel = load_stage(full, "select")
    cols = sel.table("selection")
    assert len(cols["index"]) == 10 + 3 * 4 and len(set(cols["index"].tolist())) == len(cols["index"])
    train = demo_split("train")
    subset = stage_dataset(sel, "selection", base=train)
    assert len(subset) == len(cols["index"]) and torch.equal(subset.labels, cols["label"])
    assert torch.allclose(cols["soft_label"].sum(1), torch.ones(len(cols["index"])))
    plain = stage_dataset(sel, "selection", base=list(range(len(train))))
    assert isinstance(plain, torch.utils.data.Subset) and plain[0] == int(cols["index"][0])
    curve = stage_dataset(sel, "curve")
    assert curve.columns == ["round", "labels", "accuracy"] and len(curve) == 4
    assert yaml.safe_load(TINY.read_text())["stages"][1]["options"]["rounds"] == 3


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "pipelines").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_pipeline_recipes_validate(path):
    """Every shipped pipeline parses (kinds, inputs, options) and its train stages' configs validate too."""
    from distill.pipelines.kinds import Train
    from distill.pipelines.pipeline import StageContext, load_pipeline

    p = load_pipeline(path)
    assert p.config.output_dir.startswith("runs/pipelines/")
    for st in p.config.stages:
        if st.kind == "train":
            cfg = Train().config(StageContext(st.name, path.parent, 0, p.config.base_dir), p.options[st.name])
            assert cfg.methods


def test_a_subset_input_needs_the_whole_training_split(tmp_path):
    from types import SimpleNamespace

    from distill.pipelines.kinds import Train, TrainOptions
    from distill.pipelines.pipeline import StageContext

    demo = str(REPO / "src" / "distill" / "assets" / "cifar10_demo.tar.gz")
    opts = TrainOptions(config={"data": {"train": demo, "train_per_class": 5}, "student": {"arch": "resnet20"},
                                "methods": [{"name": "ce"}], "train": {"epochs": 1}})
    sel = SimpleNamespace(table=lambda name: {"index": torch.tensor([0, 1])}, stage="select")
    with pytest.raises(PipelineError, match="data.train_per_class is set, but the 'subset' input"):
        Train().run(StageContext("distil", tmp_path, 0, None), opts, {"subset": sel})


def test_an_option_added_later_at_its_default_is_not_a_change():
    from distill.pipelines.pipeline import comparable, option_defaults

    assert option_defaults(Counter) == {"options.n": "3"}
    old = {"kind": "test_counter", "seed": "0"}  # made before the kind had the option n
    assert comparable({**old, "options.n": "3"}, old, Counter) == old
    assert comparable({**old, "options.n": "4"}, old, Counter) == {**old, "options.n": "4"}
