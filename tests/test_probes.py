"""benchmarks/probes.py: the probe maths on tiny tensors against hand values, and one probe of a run folder."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import probes as P  # noqa: E402


def test_linear_cka_invariances_and_a_hand_value():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 8, generator=g)
    q, _ = torch.linalg.qr(torch.randn(8, 8, generator=g))
    assert P.linear_cka(x, x) == pytest.approx(1.0)
    assert P.linear_cka(x, x @ q) == pytest.approx(1.0)  # an orthogonal rotation
    assert P.linear_cka(x, 3.0 * x + 1.0) == pytest.approx(1.0)  # isotropic scale, shift
    assert P.linear_cka(x, x.view(50, 2, 2, 2)) == pytest.approx(1.0)  # trailing dims flattened
    # one feature each: linear CKA is the squared Pearson correlation; x = (1, 2, 3, 4), y = (1, 3, 2, 4): r = 0.8
    a = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
    b = torch.tensor([[1.0], [3.0], [2.0], [4.0]])
    assert P.linear_cka(a, b) == pytest.approx(0.64)
    y = torch.randn(50, 8, generator=g)  # unrelated: well below 1
    assert P.linear_cka(x, y) < 0.5
    assert P.linear_cka(x, torch.zeros(50, 3)) == 0.0  # no variance: 0, not NaN


def test_at_distance_hand_cases():
    f = torch.rand(2, 3, 4, 4)
    assert P.at_distance(f, f.clone()) == 0.0
    assert P.at_distance(f, 2.0 * f) == pytest.approx(0.0, abs=1e-12)  # Q(cA) = Q(A)
    s = torch.tensor([1.0, 0.0]).view(1, 1, 1, 2)
    t = torch.tensor([0.0, 1.0]).view(1, 1, 1, 2)
    assert P.at_distance(s, t) == pytest.approx(1.0)  # the spec's hand case: code-mode loss 1
    big = torch.rand(2, 3, 8, 8)  # unequal sizes: the larger map is pooled to the smaller
    assert P.at_distance(big, torch.nn.functional.adaptive_avg_pool2d(big, 4)) == pytest.approx(0.0, abs=1e-12)


def test_relational_distances_vanish_for_the_teacher_geometry():
    g = torch.Generator().manual_seed(1)
    e = torch.randn(6, 5, generator=g)
    assert P.cc_distance(e, e) == 0.0 and P.cc_distance(e, 2 * e) == pytest.approx(0.0, abs=1e-7)
    d, a = P.rkd_terms(e, 3.0 * e)  # RKD is invariant to scale
    assert d == pytest.approx(0.0, abs=1e-6) and a == pytest.approx(0.0, abs=1e-6)
    d, a = P.rkd_terms(e, torch.randn(6, 5, generator=g))
    assert d > 0 and a > 0


def test_regression_probe_fits_a_linear_teacher_and_not_noise():
    g = torch.Generator().manual_seed(2)
    s = torch.randn(20, 3, 4, 4, generator=g)
    w = torch.randn(3, 5, generator=g)
    t = torch.einsum("nchw,cd->ndhw", s, w) + 0.5  # teacher = a 1x1 linear map of the student, plus a bias
    out = P.regression_probe(s, t)
    assert out["hint"] == pytest.approx(0.0, abs=1e-8)
    noise = torch.randn(20, 5, 4, 4, generator=g)
    far = P.regression_probe(s, noise)
    assert far["hint"] == pytest.approx(1.0, abs=0.25)  # nothing to explain: about the teacher's variance
    assert far["nll"] > out["nll"]
    # VID's NLL for a Gaussian with the fitted variance: 1/2 (1 + log var) when the held-out residuals match it
    assert far["nll"] == pytest.approx(0.5 * (1 + math.log(far["hint"])), abs=0.1)


def test_sign_agreement_and_spearman_hand_values():
    assert P.sign_agreement(torch.tensor([2.0, -2.0]), torch.tensor([1.0, -1.0])) == 1.0
    assert P.sign_agreement(torch.tensor([0.0, 0.0]), torch.tensor([1.0, -1.0])) == 0.5
    with pytest.raises(ValueError):
        P.sign_agreement(torch.zeros(2), torch.zeros(3))
    a = torch.tensor([[1.0, 2.0, 3.0], [0.3, 0.1, 0.2]])
    assert P.spearman_rows(a, 10 * a + 1) == pytest.approx(1.0)
    assert P.spearman_rows(a, -a) == pytest.approx(-1.0)


def test_fitted_sign_agreement_across_channel_counts():
    """Maps with other channel counts (MobileNetV2 -> ResNet-56) go through a fresh 1x1 connector: a teacher that is
    a linear map of the student agrees everywhere; an unrelated one about half the time."""
    g = torch.Generator().manual_seed(4)
    s = torch.randn(40, 3, 4, 4, generator=g)
    t = torch.einsum("nchw,cd->ndhw", s, torch.randn(3, 5, generator=g)) - 0.1
    assert P.fitted_sign_agreement(s, t) == 1.0
    assert P.fitted_sign_agreement(s, torch.randn(40, 5, 4, 4, generator=g)) == pytest.approx(0.5, abs=0.05)
    big = torch.nn.functional.interpolate(s, scale_factor=2)  # the larger map is pooled to the smaller's size
    assert P.fitted_sign_agreement(big, t) == pytest.approx(1.0, abs=1e-6)
    # a student without pre-ReLU taps (MobileNetV2) is read at f1..f3 against the teacher's f1_pre..f3_pre
    feats_s = {k: torch.randn(12, 2, 2, 2, generator=g) for k in ("f1", "f2", "f3")}
    feats_s |= {"pooled": torch.randn(12, 2, generator=g), "logits": torch.randn(12, 4, generator=g)}
    feats_t = {k + "_pre": torch.einsum("nchw,cd->ndhw", feats_s[k], torch.ones(2, 3)) + 0.01 for k in P.STAGES}
    feats_t |= {k: feats_t[k + "_pre"].relu() for k in P.STAGES}
    feats_t |= {"pooled": feats_s["pooled"], "logits": feats_s["logits"]}
    q = P.probe(feats_s, feats_t, [])
    assert q["ab_agreement"] == 1.0 and "fsp" not in q  # FSP needs equal channels, as the method does


def test_probe_of_the_teacher_itself_is_perfect():
    g = torch.Generator().manual_seed(3)
    feats = {"f1": torch.rand(10, 4, 8, 8, generator=g), "f2": torch.rand(10, 6, 4, 4, generator=g),
             "f3": torch.rand(10, 8, 2, 2, generator=g), "pooled": torch.rand(10, 8, generator=g),
             "logits": torch.randn(10, 5, generator=g)}
    for k in ("f1", "f2", "f3"):
        feats[k + "_pre"] = feats[k] - 0.5
    q = P.probe(feats, {k: v.clone() for k, v in feats.items()}, [("f2", "f2"), ("f3", "f3_pre")])
    assert q["at"] == 0.0 and q["sp"] == pytest.approx(0.0, abs=1e-12) and q["rkd_distance"] == 0.0
    assert q["ab_agreement"] == 1.0 and q["cka:f2/f2"] == pytest.approx(1.0) and q["spearman"] == pytest.approx(1.0)
    assert q["hint"] == pytest.approx(0.0, abs=1e-8)
    assert q["fsp"] == 0.0 and q["nst"] == pytest.approx(0.0, abs=1e-6)
    # FSP's matrix distance, by hand for one batch: G = F1 F2^T / HW per image, mean of the squared difference
    # (no f0 here: the pairs are (f1, f2) and (f2, f3); f1 doubled moves only the first, f1 pooled to 4x4)
    other = {k: v * 2 if k == "f1" else v for k, v in feats.items()}
    g = lambda a, b: torch.einsum("nchw,ndhw->ncd", a, b) / (a.shape[2] * a.shape[3])  # noqa: E731
    f1p = torch.nn.functional.adaptive_avg_pool2d(feats["f1"], feats["f2"].shape[-2:])
    hand = float((g(2 * f1p, feats["f2"]) - g(f1p, feats["f2"])).pow(2).mean())
    assert P.probe(other, feats, [])["fsp"] == pytest.approx(hand, rel=1e-5)
    assert 0 < q["cka:f3/f3_pre"] <= 1.0 + 1e-9  # a shifted copy: CKA is shift-invariant
    assert q["cka:f3/f3_pre"] == pytest.approx(1.0)


def test_run_description_from_the_folder_name_and_from_the_config(tmp_path):
    old = tmp_path / "benchmarks" / "work" / "runs" / "resnet20-e30-n500-kd-seed2"
    old.mkdir(parents=True)
    d = P.run_description(old)
    assert (d["student"], d["arm"], d["seed"], d["epochs"], d["per_class"]) == ("resnet20", "kd", 2, 30, 500)
    assert P.repo_relative(old) == "benchmarks/work/runs/resnet20-e30-n500-kd-seed2"
    new = tmp_path / "somewhere"
    new.mkdir()
    (new / "distill_config.json").write_text(json.dumps({
        "seed": 1, "student": {"arch": "mobilenetv2", "options": {"width": 0.5}},
        "train": {"epochs": 15}, "data": {"train_per_class": 500}}))
    with pytest.raises(ValueError):
        P.run_description(new)  # a config but no arm anywhere: the name must give it
    named = tmp_path / "mobilenetv2-e15-n500-sp-seed1"
    new.rename(named)
    d = P.run_description(named)
    assert (d["student"], d["options"], d["seed"], d["arm"]) == ("mobilenetv2", {"width": 0.5}, 1, "sp")


def test_probe_script_on_a_tiny_run_folder(tmp_path):
    from distill.models import build_model
    from distill.train.checkpoint import save_weights

    run = tmp_path / "benchmarks" / "work" / "runs" / "resnet20-e1-n10-fitnet-seed0"
    run.mkdir(parents=True)
    torch.manual_seed(0)  # the probe's own initialisation for seed 0: the same weights
    save_weights(run / "student.safetensors", build_model("resnet20", num_classes=10).state_dict())
    out = tmp_path / "out"
    cmd = [sys.executable, str(REPO / "benchmarks" / "probes.py"), "--name", "t", "--images", "20", "--out", str(out),
           str(run)]
    subprocess.run(cmd, check=True, cwd=REPO, capture_output=True, text=True,
                   env={"PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    data = json.loads((out / "probes_t.json").read_text())
    assert data["images"] == 20 and data["data"] == "src/distill/assets/cifar10_demo.tar.gz"
    assert str(run) not in json.dumps(data)  # the run folder repository-relative, in the command line too
    (rec,) = data["runs"]
    assert rec["run_dir"] == "benchmarks/work/runs/resnet20-e1-n10-fitnet-seed0" and rec["arm"] == "fitnet"
    q = rec["quantities"]
    for key in ("at", "sp", "cc", "rkd_distance", "pkt", "hint", "vid_nll", "ab_agreement", "cka:f2/f2",
                "cka:f1/f1_pre", "pooled_norm", "spearman", "accuracy"):
        assert key in q and math.isfinite(q[key]), key
    assert data["init"]["resnet20/seed0"]["hint"] == pytest.approx(q["hint"])  # these weights are an initialisation
    assert 0.0 <= data["teacher"]["accuracy"] <= 1.0
    run2 = run.with_name("resnet20-e1-n10-fitnet-seed1")  # a second call adds its runs to the file
    run2.mkdir()
    save_weights(run2 / "student.safetensors", build_model("resnet20", num_classes=10).state_dict())
    subprocess.run(cmd[:-1] + [str(run2)], check=True, cwd=REPO, capture_output=True, text=True,
                   env={"PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    data = json.loads((out / "probes_t.json").read_text())
    assert [r["seed"] for r in data["runs"]] == [0, 1] and len(data["commands"]) == 2
    # the summary beside the JSON: each arm's mean over its seeds, the untrained students' mean last
    md = (out / "probes_t.md").read_text()
    assert "| quantity | fitnet (2 seeds) | untrained |" in md
    hint = sum(r["quantities"]["hint"] for r in data["runs"]) / 2
    init = sum(data["init"][f"resnet20/seed{s}"]["hint"] for s in (0, 1)) / 2
    assert f"| hint | {hint:.4g} | {init:.4g} |" in md
