"""The NRR-DD / INFER / KD^3 stage kinds inside pipelines: the tiny shipped recipes run, a SIGKILL mid-stage
resumes to the uninterrupted result, a stale artefact is refused naming the option, and the outputs are what the
methods say (one UFC per natural set broadcast over the classes; the stored budget)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from distill.config import read_yaml
from distill.pipelines.pipeline import StaleArtefactError, load_stage, parse_pipeline, run_pipeline

REPO = Path(__file__).resolve().parents[1]
TINY_DD = REPO / "configs" / "pipelines" / "tiny_dd.yaml"
TINY_KD3 = REPO / "configs" / "pipelines" / "tiny_kd3.yaml"


def cli(recipe: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "distill.cli", "pipeline", str(recipe), "--set", f"output_dir={out}", *extra]


def env(**extra: str) -> dict[str, str]:
    import os

    e = dict(os.environ)
    e["OMP_NUM_THREADS"] = "1"
    e["PYTHONPATH"] = str(REPO / "src") + os.pathsep + e.get("PYTHONPATH", "")
    e.pop("DISTILL_TEST_PIPELINE_DELAY", None)
    e.update(extra)
    return e


def tables(out: Path, stage: str) -> dict[str, dict[str, torch.Tensor]]:
    art = load_stage(out, stage)
    return {t: art.table(t) for t in art.stores}


@pytest.fixture(scope="module")
def full(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dd") / "out"
    subprocess.run(cli(TINY_DD, out), check=True, env=env(), capture_output=True, cwd=tmp_path_factory.getbasetemp())
    return out


def test_infer_set_is_natural_plus_one_broadcast_ufc_per_teacher(full):
    art = load_stage(full, "infer")
    s, stored, ufc = art.table("set"), art.table("stored"), art.table("ufc")["ufc"]
    n_init, m = art.meta["ipc_init"], art.meta["teachers"]
    assert (n_init, m) == (1, 2) and len(s["label"]) == 10 * (m + 1) * n_init
    assert art.meta["stored_images"] == 10 * n_init + m * n_init <= 10 * 2
    nat = s["image"][:10]
    assert torch.equal(nat, stored["natural"])
    for t in range(m):
        block = s["image"][10 * (t + 1):10 * (t + 2)]
        from distill.pipelines.methods.dd_eval import clamp_valid

        assert torch.allclose(block, clamp_valid(nat + ufc[t:t + 1]), atol=1e-6)  # one u for all 10 classes
    assert s["static_logits"].shape == (30, 10) and art.meta["label_floats"] == 300
    ev = load_stage(full, "eval_infer").meta
    assert ev["labels"] == "static" and ev["set_images"] == 30 and 0 <= ev["accuracy"] <= 1


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
def test_sigkill_mid_stage_resumes_to_the_uninterrupted_result(tmp_path, full):
    out = tmp_path / "out"
    proc = subprocess.Popen(cli(TINY_DD, out), env=env(DISTILL_TEST_PIPELINE_DELAY="2"), cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = out / "stages" / "eval_nrr" / "work" / "state.pt"
    deadline = time.time() + 300
    while not state.exists():
        if proc.poll() is not None:
            pytest.fail("the pipeline finished before it could be killed")
        if time.time() > deadline:
            proc.kill()
            pytest.fail("no checkpoint appeared in time")
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "stages" / "eval_nrr" / "artefact" / "stage.json").exists()
    done = torch.load(state, weights_only=True)["step"]
    assert 2 <= done < 8
    resumed = subprocess.run(cli(TINY_DD, out), env=env(), cwd=tmp_path, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "[eval_nrr] resuming an interrupted run" in resumed.stdout and f"resuming at step {done}" in resumed.stdout
    for stage in ("random", "nrr", "infer", "eval_nrr", "eval_infer"):
        a, b = tables(full, stage), tables(out, stage)
        for t in a:
            for c in a[t]:
                assert torch.equal(a[t][c], b[t][c]), (stage, t, c)
        assert load_stage(out, stage).digest == load_stage(full, stage).digest
    stale = subprocess.run(cli(TINY_DD, out, "--set", "nrr.epsilon=0.4"), env=env(), cwd=tmp_path,
                           capture_output=True, text=True)
    assert stale.returncode == 2
    assert "stage 'nrr': stale artefact" in stale.stderr and "options.epsilon" in stale.stderr


def test_kd3_pipeline_runs_and_refuses_a_stale_artefact(tmp_path):
    pytest.importorskip("skimage", reason="the junk textures come with scikit-image (extra 'vision')")
    raw = read_yaml(TINY_KD3)
    raw["output_dir"] = str(tmp_path / "out")
    report = run_pipeline(parse_pipeline(raw, base_dir=TINY_KD3.parent), log=lambda m: None)
    assert [s["status"] for s in report["stages"]] == ["built", "built"]
    pool = load_stage(tmp_path / "out", "pool").table("pool")
    assert len(pool["image"]) == 36 and int(pool["junk"].sum()) == 6
    assert pool["teacher_logits"].shape == (36, 2, 10) and pool["teacher_feat"].shape == (36, 2, 64)
    assert (pool["true_label"][pool["junk"].bool()] == -1).all()
    kd3 = load_stage(tmp_path / "out", "kd3")
    sel = kd3.table("selection")
    assert len(sel["epoch"]) == 3 and 0 <= kd3.meta["junk_rejected_last"] <= 1
    raw["stages"][1]["options"]["tau_sel"] = 0.5
    with pytest.raises(StaleArtefactError, match=r"options\.tau_sel"):
        run_pipeline(parse_pipeline(raw, base_dir=TINY_KD3.parent), log=lambda m: None)
    raw["stages"][0]["options"]["junk"] = 3
    with pytest.raises(StaleArtefactError, match=r"stage 'pool'.*options\.junk"):
        run_pipeline(parse_pipeline(raw, base_dir=TINY_KD3.parent), log=lambda m: None)


def test_bad_options_are_refused_naming_the_key():
    from distill.config import ConfigError

    data = {"path": "builtin:cifar10_demo.tar.gz"}
    cases = [
        ({"name": "s", "kind": "kd3_train", "inputs": {"pool": "p"}, "options": {"data": data, "selection": "all"}},
         "stages[1].options.selection"),
        ({"name": "s", "kind": "infer_synthesize", "options": {"data": data, "teachers": []}},
         "stages[1].options.teachers"),
        ({"name": "s", "kind": "nrr_dd_synthesize", "options": {"data": data, "method": "dream"}},
         "stages[1].options.method"),
        ({"name": "s", "kind": "dd_evaluate", "inputs": {"set": "p"}, "options": {"data": data, "labels": "fkd"}},
         "stages[1].options.labels"),
        ({"name": "s", "kind": "dd_evaluate", "inputs": {"set": "p"}, "options": {"data": data, "stepz": 3}},
         "stages[1].options.stepz"),
        ({"name": "s", "kind": "kd3_train", "options": {"data": data}}, "stages[1].inputs.pool: required"),
    ]
    first = {"name": "p", "kind": "web_pool", "options": {"data": data}}
    for stage, message in cases:
        with pytest.raises(ConfigError) as e:
            parse_pipeline({"output_dir": "x", "stages": [first, stage]})
        assert message in str(e.value), (message, str(e.value))
