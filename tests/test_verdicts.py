"""benchmarks/verdicts.py: each criterion kind on synthetic results, the seed and control-arm gates, the CIFAR
catalogue's coverage, the layers its CKA criteria read, and the verdict file being up to date."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import sweep  # noqa: E402
import verdicts as V  # noqa: E402
import verdicts_families as F  # noqa: E402


def ev(**arms: list[float]) -> V.Evidence:
    return V.Evidence({a: dict(enumerate(vals)) for a, vals in arms.items()})


# -- the 2x seed-spread rule (classic C0 (b), C1) ------------------------------------------------------------------
def test_beats_spread_works_missed_and_pending():
    check = V.beats_spread("kd", "scratch")
    assert check(ev(kd=[65, 66, 67], scratch=[60, 61, 62]), 3).status == V.WORKS  # +5 > 2 x 1
    missed = check(ev(kd=[61, 62.5, 60.5], scratch=[60, 61, 62]), 3)
    assert missed.status == V.MISSED and "+0.33" in missed.detail
    assert check(ev(kd=[70], scratch=[60]), 3).status == V.PENDING  # one seed: never works, whatever the gap
    no_control = check(ev(kd=[65, 66, 67]), 3)
    assert no_control.status == V.PENDING and "not run yet: scratch" in no_control.detail


def test_two_x_spread_uses_the_larger_sd_and_the_factor_two():
    # kd sd 1, scratch sd 2: spread 2, the bar is a gain of 4
    scratch = [58, 60, 62]
    assert V.beats_spread("kd", "scratch")(ev(kd=[63.5, 64.5, 65.5], scratch=scratch), 3).status == V.WORKS  # +4.5
    # +2.5 would clear 2x kd's own sd (2) but not 2x the larger one (4)
    assert V.beats_spread("kd", "scratch")(ev(kd=[61.5, 62.5, 63.5], scratch=scratch), 3).status == V.MISSED


def test_two_x_spread_bar_exactly():
    scratch = [59.0, 60.0, 61.0]  # sd 1, kd sd 1: bar 2
    assert V.beats_spread("kd", "scratch")(ev(kd=[61.1, 62.1, 63.1], scratch=scratch), 3).status == V.WORKS
    assert V.beats_spread("kd", "scratch")(ev(kd=[60.5, 61.5, 62.5], scratch=scratch), 3).status == V.MISSED
    # 1.5 spreads is not enough with the spec's factor 2, enough with k = 1
    assert V.beats_spread("kd", "scratch", k=1.0)(ev(kd=[60.5, 61.5, 62.5], scratch=scratch), 3).status == V.WORKS


# -- margins, noise, probes -----------------------------------------------------------------------------------------
def test_margin_needs_the_interval_above_zero_for_a_claimed_gain():
    gain = V.margin("dho", "kd", 0.5)
    assert gain(ev(dho=[61, 62, 63], kd=[60, 61, 62]), 3).status == V.WORKS  # +1 every seed: interval above 0
    shaky = gain(ev(dho=[63, 60, 64], kd=[60, 61, 62]), 3)  # mean +1.33, differences 3, -1, 2
    assert shaky.status == V.MISSED and "not established" in shaky.detail
    assert gain(ev(dho=[60.2, 61.2, 62.2], kd=[60, 61, 62]), 3).status == V.MISSED  # +0.2 < 0.5
    # non-inferiority: PLD >= KD - 0.2 holds at -0.1 without any interval condition
    assert V.margin("pld", "kd", -0.2)(ev(pld=[59.9, 61.2, 61.6], kd=[60, 61, 62]), 3).status == V.WORKS
    assert V.margin("pld", "kd", -0.2)(ev(pld=[59.5, 60.5, 61.5], kd=[60, 61, 62]), 3).status == V.MISSED
    strict = V.margin("a", "b", 0.0, strict=True)
    assert strict(ev(a=[1, 2, 3], b=[1, 2, 3]), 3).status == V.MISSED  # equal is not "beats"


def test_margin_against_the_best_control():
    check = V.margin_best("tgeo", ["kd_a3", "kd_a5"], -0.2)
    assert "kd_a5" in check(ev(tgeo=[60, 61, 62], kd_a3=[59, 60, 61]), 3).detail  # pending until all have run
    e = ev(tgeo=[60, 61, 62], kd_a3=[59, 60, 61], kd_a5=[60.1, 61.1, 62.1])  # best: alpha 0.5, -0.1 >= -0.2
    v = check(e, 3)
    assert v.status == V.WORKS and "kd_a5" in v.detail
    e.values["kd_a5"] = {0: 60.5, 1: 61.5, 2: 62.5}  # -0.5 against the best
    assert check(e, 3).status == V.MISSED


def test_lower_is_better_metrics_flip_the_direction():
    e = V.Evidence({"fkl": {0: 700.0, 1: 710.0, 2: 690.0}, "ce": {0: 2400.0, 1: 2300.0, 2: 2500.0}}, higher=False)
    assert V.beats_spread("fkl", "ce")(e, 3).status == V.WORKS
    assert V.beats_spread("ce", "fkl")(e, 3).status == V.MISSED


def test_not_below_within_noise():
    assert V.not_below("at", "scratch")(ev(at=[59, 60, 61], scratch=[60, 61, 62]), 2).status == V.WORKS  # -1 vs 2
    assert V.not_below("at", "scratch")(ev(at=[55, 56, 57], scratch=[60, 61, 62]), 2).status == V.MISSED


def probes(arm_values: dict[str, list[float]], quantity: str) -> dict[str, dict[int, dict[str, float]]]:
    return {a: {i: {quantity: v} for i, v in enumerate(vals)} for a, vals in arm_values.items()}


def test_probe_toward_the_teacher():
    e = ev(sp=[68, 69], scratch=[60, 61])
    check = V.probe_toward("sp", "scratch", "sp")
    assert check(e, 2).status == V.PENDING  # no probe yet
    e.probes = probes({"sp": [0.001, 0.002]}, "sp")
    assert "probe sp on scratch" in check(e, 2).detail  # the baseline's probe is missing
    e.probes = probes({"sp": [0.001, 0.002], "scratch": [0.003, 0.004]}, "sp")
    assert check(e, 2).status == V.WORKS
    e.probes = probes({"sp": [0.005, 0.006], "scratch": [0.003, 0.004]}, "sp")
    assert check(e, 2).status == V.MISSED
    higher = V.probe_toward("ab", "scratch", "agree", lower=False)
    e2 = ev(ab=[1, 2], scratch=[1, 2])
    e2.probes = probes({"ab": [0.7, 0.8], "scratch": [0.5, 0.6]}, "agree")
    assert higher(e2, 2).status == V.WORKS
    # closer on the mean but inside the seeds' own scatter (CC's 0.0010760 vs 0.0010763): no movement
    e.probes = probes({"sp": [0.0010849, 0.0010671], "scratch": [0.0010792, 0.0010733]}, "sp")
    tie = check(e, 2)
    assert tie.status == V.MISSED and "within 2x the seed spread" in tie.detail


def test_probe_vs_init_and_teacher():
    e = ev(fitnet=[75, 76])
    e.probes = probes({"fitnet": [0.2, 0.3]}, "hint")
    assert V.probe_vs_init("fitnet", "hint")(e, 2).status == V.PENDING  # no value at initialisation
    e.probes["@init"] = {0: {"hint": 1.0}, 1: {"hint": 1.0}}
    assert V.probe_vs_init("fitnet", "hint", 0.5)(e, 2).status == V.WORKS  # 0.25x
    assert V.probe_vs_init("fitnet", "hint", 0.2)(e, 2).status == V.MISSED
    e.probes = probes({"nd": [6.0, 7.0]}, "pooled_norm")
    e.values["nd"] = {0: 1.0, 1: 2.0}
    assert V.probe_vs_teacher("nd", "pooled_norm")(e, 2).status == V.PENDING
    e.facts["teacher_probe"] = {"pooled_norm": 6.4}
    assert V.probe_vs_teacher("nd", "pooled_norm")(e, 2).status == V.WORKS
    e.facts["teacher_probe"] = {"pooled_norm": 6.6}
    assert V.probe_vs_teacher("nd", "pooled_norm")(e, 2).status == V.MISSED
    # three seeds of accuracy, two of them probed: pending unless two probed seeds suffice (probe_seeds=2)
    e.values["nd"] = {0: 1.0, 1: 2.0, 2: 3.0}
    e.probes = {"nd": {1: {"pooled_norm": 7.0}, 2: {"pooled_norm": 8.0}}}
    assert V.probe_vs_teacher("nd", "pooled_norm")(e, 3).status == V.PENDING
    judged = V.probe_vs_teacher("nd", "pooled_norm", probe_seeds=2)(e, 3)
    assert judged.status == V.WORKS and "7.5 vs teacher 6.6 (2 probed seeds)" in judged.detail


# -- rows: the seed gate, control arms, conjunctions ------------------------------------------------------------------
def test_row_with_too_few_seeds_is_pending_even_if_a_check_would_miss():
    row = V.Criterion("q", "spec", 3, (V.beats_spread("kd", "scratch"),))
    v = row.judge(ev(kd=[50], scratch=[60]))  # -10 on one seed
    assert v.status == V.PENDING and "kd 1 of 3" in v.detail
    fact = V.Criterion("q", "spec", 3, (V.margin("a", "b"), V.fact_check("cos", lambda x: x > 0.9, str)))
    e = ev(a=[1, 2], b=[0, 1])
    e.facts["cos"] = 0.5  # a failed fact does not decide a row whose arms lack seeds
    assert fact.judge(e).status == V.PENDING


def test_two_seed_rows_need_a_third_when_the_two_differ_by_more_than_a_point():
    row = V.Criterion("q", "spec", 2, (V.margin("a", "b", 1.0),))
    assert row.judge(ev(a=[63, 63.5], b=[60, 60.4])).status == V.WORKS
    v = row.judge(ev(a=[63, 65], b=[60, 60.4]))  # a's seeds differ by 2 points: Protocol rule 4 asks a third
    assert v.status == V.PENDING and "a 2 of 3" in v.detail
    assert row.judge(ev(a=[63, 65, 64], b=[60, 60.4, 60.2])).status == V.WORKS


def test_row_without_control_arm_is_pending_and_a_measured_miss_decides():
    row = V.Criterion("q", "spec", 3, (V.margin("dho", "dho_single_head", 0.5),))
    v = row.judge(ev(dho=[70, 71, 72], scratch=[60, 61, 62]))
    assert v.status == V.PENDING and "dho_single_head" in v.detail
    both = V.Criterion("q", "spec", 3, (V.margin("mixup_t1", "mixup", 0.0), V.missing("the Mix-T teacher")))
    assert both.judge(ev(mixup_t1=[60, 61, 62], mixup=[60, 61, 62])).status == V.PENDING
    failed = both.judge(ev(mixup_t1=[58, 59, 60], mixup=[60, 61, 62]))  # the measured half fails
    assert failed.status == V.MISSED and "-2.00" in failed.detail
    works = V.Criterion("q", "spec", 2, (V.margin("a", "b", 1.0), V.not_below("a", "b")))
    v = works.judge(ev(a=[63, 64], b=[60, 61]))
    assert v.status == V.WORKS and str(v).startswith("works (")


def test_verdict_text():
    assert str(V.Verdict(V.MISSED, "x -1")) == "missed: x -1"
    assert str(V.Verdict(V.PENDING, "seeds")) == "pending: seeds"
    assert str(V.Verdict(V.NA, "why")) == "not applicable here: why"
    assert V.counts({"a": V.Verdict(V.WORKS), "b": V.Verdict(V.ROLE, "baseline"), "c": V.Verdict(V.NA, "x")}) == \
        {"works": 1, "missed": 0, "pending": 0, "n.a.": 1}


# -- the CIFAR catalogue ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("folder, student", [("cifar10", "resnet20"), ("cifar10_mobilenetv2", "mobilenetv2")])
def test_every_cifar_arm_has_a_criterion_or_an_explicit_entry(folder, student):
    arms = sweep.discover_arms(REPO / "configs" / folder)
    crit = V.cifar_criteria(student)
    assert set(arms) <= set(crit), f"arms without a verdict entry: {sorted(set(arms) - set(crit))}"
    for arm in arms:
        c = crit[arm]
        assert c.role or c.na or (c.checks and c.quote and c.spec and c.seeds >= 2), arm
        if c.na.startswith("no criterion in the spec"):
            assert len(c.na) > len("no criterion in the spec: ")  # says why
    assert crit["kd"].seeds == 3 and crit["at"].seeds == 2  # logit 3, feature 2 (Protocol rule 4)
    assert crit["scratch"].role


@pytest.mark.parametrize("student, folder", [("resnet20", "cifar10"), ("mobilenetv2", "cifar10_mobilenetv2")])
def test_cka_criteria_read_the_layers_the_methods_read(student, folder):
    from distill.methods import METHODS

    for arm, pairs in V.CKA_TAPS[student].items():
        _, cfg = sweep.load_recipe(REPO / "configs" / folder / f"{arm}.yaml")
        (m,) = [m for m in cfg.methods if m.name == arm]
        method = METHODS.get(m.name)(**m.options())
        assert list(zip(method.student_taps(), method.teacher_taps())) == pairs, arm


def test_cifar_evidence_takes_probes_of_the_same_schedule_only(tmp_path):
    runs = [{"arm": a, "seed": s, "accuracy": acc} for a, s, acc in
            [("scratch", 0, 0.60), ("scratch", 1, 0.61), ("sp", 0, 0.62), ("sp", 1, 0.625)]]
    data = {"runs": runs, "args": {"student": "resnet20", "epochs": 30, "per_class": 500}}
    rec = lambda arm, seed, sp, epochs=30: {"arm": arm, "seed": seed, "student": "resnet20", "epochs": epochs,  # noqa
                                            "per_class": 500, "quantities": {"sp": sp}}
    (tmp_path / "probes_a.json").write_text(json.dumps({"teacher": {}, "init": {}, "runs": [
        rec("scratch", 0, 0.004), rec("scratch", 1, 0.005), rec("sp", 0, 0.001), rec("sp", 1, 0.002),
        rec("sp", 0, 0.9, epochs=15)]}))
    e = V.cifar_evidence(data, tmp_path)
    assert e.probes["sp"][0]["sp"] == 0.001  # the 15-epoch run's probe is not this table's
    verdict = V.cifar_verdicts(data, tmp_path)["sp"]
    assert verdict.status == V.WORKS and "SP Gram distance" in verdict.detail


def test_markdown_table_verdict_column():
    rows = sweep.summarise([{"arm": "kd", "seed": 0, "accuracy": 0.6}, {"arm": "scratch", "seed": 0, "accuracy": 0.5}],
                           baseline="scratch", order=["scratch"])
    table = sweep.markdown_table(rows, baseline="scratch", verdicts={"kd": V.Verdict(V.PENDING, "seeds | 1")})
    assert table[0].endswith("| verdict |") and table[1].count("---") == 5
    assert table[3].endswith("| pending: seeds / 1 |") and table[2].endswith("|  |")
    assert sweep.markdown_table(rows)[0].endswith("| per seed |")


# -- the result files ------------------------------------------------------------------------------------------------
def test_current_results_one_seed_rows_are_pending_and_the_file_is_current():
    everything = V.all_verdicts()
    catalogue = everything["cifar10_catalogue"]  # an arm with one seed: nothing about it may be decided
    runs = json.loads((REPO / "benchmarks" / "results" / "cifar10_catalogue.json").read_text())["runs"]
    one_seed = [arm for arm in catalogue if sum(r["arm"] == arm for r in runs) == 1]
    assert one_seed and all(catalogue[a].status in (V.PENDING, V.NA, V.ROLE) for a in one_seed)
    assert catalogue["kd"].status != V.PENDING or "seeds" in catalogue["kd"].detail
    assert everything["sst2_makd"]["makd"].status == V.NA
    ffg2m = everything["cora"]["ffg2m"]  # 5 seeds, +0.26 over GLNN against the spec's > 0.5
    assert ffg2m.status == V.MISSED and "+0.26" in ffg2m.detail
    warm = everything["cora_unlearn"]["d2dgn_warm"]  # its settings were chosen on seed 0: judged on seeds 1-5
    assert warm.status != V.PENDING and "over 5 seeds" in warm.detail
    assert "over 6 seeds" in everything["cora_unlearn"]["d2dgn"].detail  # the other arms keep seed 0
    assert everything["digits_lelp"]["lelp_s2"].status == V.MISSED
    texts, _ = V.render()
    for name, text in texts.items():
        assert (REPO / "benchmarks" / "results" / name).read_text() == text, "run python benchmarks/verdicts.py"


def test_sst2_rows_read_either_record_form():
    old = [{"student": "bilstm", "arm": a, "seed": s, "accuracy": v} for a, s, v in
           [("scratch", 0, .80), ("scratch", 1, .81), ("scratch", 2, .80), ("lsf_idm", 0, .83), ("lsf_idm", 1, .84),
            ("lsf_idm", 2, .83)]]
    new = [{"arm": f"{r['student']}_{r['arm']}", "seed": r["seed"], "accuracy": r["accuracy"]} for r in old]
    data = {"teacher": {"dev_accuracy": 0.86}, "latency_ms": {"teacher": 15.0, "bilstm": 2.9}}
    for runs in (old, new):
        v = V.sst2_verdicts(data | {"runs": runs})
        assert set(v) == {"bilstm/scratch", "bilstm/lsf_idm"}
        assert v["bilstm/lsf_idm"].status == V.PENDING and "bilstm/scratch_aug" in v["bilstm/lsf_idm"].detail
    runs = old + [{"student": "bilstm", "arm": "scratch_aug", "seed": s, "accuracy": .83} for s in range(3)]
    v = V.sst2_verdicts(data | {"runs": runs})["bilstm/lsf_idm"]  # +3 over scratch, 5.2x faster, below the teacher,
    assert v.status == V.MISSED and "scratch_aug" in v.detail  # but not above the same data without a teacher


# -- the task-family tables (benchmarks/verdicts_families.py) -----------------------------------------------------

def test_every_family_table_is_judged_by_the_verdict_file():
    assert set(F.FAMILY_TABLES) <= set(V.TABLES)


def test_anomaly_needs_two_textures_at_090_and_a_win_over_no_student():
    def runs(auroc: dict[str, float], base: float = 0.5) -> dict:
        out = {}
        for tex, a in auroc.items():
            for s in range(3):
                out[f"{tex}/rd4ad/{s}"] = {"image_auroc": a + 0.001 * s}
                out[f"{tex}/no_student/{s}"] = {"image_auroc": base}
        return {"runs": out}
    assert F.anomaly_verdicts(runs({"brick": 0.95, "grass": 0.91, "gravel": 0.6}))["rd4ad"].status == V.WORKS
    one = F.anomaly_verdicts(runs({"brick": 0.95, "grass": 0.89, "gravel": 0.6}))["rd4ad"]
    assert one.status == V.MISSED and "1 of 3 >= 90" in one.detail
    # above 0.90 but not above the no-student detector on most textures: missed
    assert F.anomaly_verdicts(runs({"brick": 0.95, "grass": 0.91, "gravel": 0.92}, base=0.96))["rd4ad"].status \
        == V.MISSED


def test_random_teachers_need_three_points_on_every_seed():
    def data(a0: list[float], a1: list[float], teacher: float) -> dict:
        runs = {f"student_a0/{s}": {"linear": v} for s, v in enumerate(a0)}
        runs |= {f"student_a1/{s}": {"linear": v} for s, v in enumerate(a1)}
        return {"runs": runs | {"teacher": {"linear": teacher}}}
    assert F.random_teacher_verdicts(data([0.25, 0.26, 0.27], [0.20, 0.20, 0.21], 0.20))["student_a0"].status \
        == V.WORKS
    one_short = F.random_teacher_verdicts(data([0.25, 0.22, 0.27], [0.20, 0.20, 0.21], 0.20))["student_a0"]
    assert one_short.status == V.MISSED and "+2.00" in one_short.detail


def test_dense_sr_merge_check_reads_each_run():
    runs = []
    for s in range(3):
        runs += [{"arm": "finetune_l1", "seed": s, "psnr": 24.0 + 0.01 * s},
                 {"arm": "convlora_l1", "seed": s, "psnr": 24.1 + 0.02 * s},
                 {"arm": "dsclora", "seed": s, "psnr": 24.3 + 0.01 * s, "merged_params": 100, "base_params": 100,
                  "merge_max_abs_diff": 0.0}]
    assert F.dense_sr_verdicts({"runs": runs})["dsclora"].status == V.WORKS
    runs[-1]["merge_max_abs_diff"] = 1e-3
    bad = F.dense_sr_verdicts({"runs": runs})["dsclora"]
    assert bad.status == V.MISSED and "1.0e-03" in bad.detail


def test_continual_forgetting_is_judged_lower_is_better():
    ci = {"ER": {"final_accuracy": [0.5, 0.52, 0.51], "forgetting": [0.4, 0.41, 0.42]},
          "OCM-lite": {"final_accuracy": [0.6, 0.61, 0.62], "forgetting": [0.3, 0.31, 0.32]},
          "OnPro": {"final_accuracy": [0.65, 0.665, 0.67], "forgetting": [0.2, 0.21, 0.22]}}
    assert F.continual_verdicts({"seeds": [0, 1, 2], "suites": {"ci": ci}})["ci/OnPro"].status == V.WORKS
    ci["OnPro"]["forgetting"] = [0.35, 0.36, 0.37]  # more forgetting than OCM-lite
    worse = F.continual_verdicts({"seeds": [0, 1, 2], "suites": {"ci": ci}})["ci/OnPro"]
    assert worse.status == V.MISSED and "forgetting" in worse.detail


def test_continual_reads_each_arm_at_its_own_seeds():
    # Cr-KD's seeds finished in the order 1, 2, 0: each is +0.5 over UNO's same seed (read in list order, the
    # paired differences would be +10.5, +10.5, -19.5)
    ncd = {"UNO": {"seeds": [0, 1, 2], "novel": [0.40, 0.50, 0.60]},
           "Cr-KD": {"seeds": [1, 2, 0], "novel": [0.505, 0.605, 0.405]}}
    got = F.continual_verdicts({"dataset": "cifar10", "seeds": [0, 1, 2], "suites": {"ncd": ncd}})["ncd/Cr-KD"]
    assert got.status == V.MISSED and "+0.50 [95% CI +0.50, +0.50]" in got.detail
    ncd["Cr-KD"] = {"seeds": [1, 2], "novel": [0.52, 0.615]}
    assert F.continual_verdicts({"seeds": [0, 1, 2], "suites": {"ncd": ncd}})["ncd/Cr-KD"].status == V.PENDING


def test_a_method_that_has_not_run_is_pending_not_absent():
    got = F.mst_verdicts({"seeds": {"0": {"s_ce": {"accuracy": 50.0}}}})
    assert got["mst"].status == V.PENDING


# -- issue 18's demonstrations not yet run (dmae, ortrack, paired_views, trg_lt, cnn_vit_coop) ----------------------
def sweep_runs(key: str = "accuracy", **arms: list[float]) -> list[dict]:
    """``runs`` as ``sweep.Sweep`` writes them: one record per (arm, seed), the metric as a fraction."""
    return [{"arm": a.replace("__", ":"), "seed": s, key: v} for a, vals in arms.items() for s, v in enumerate(vals)]


def test_dmae_needs_a_point_on_the_probe_and_mask_095_not_below_mae():
    mae = [0.300, 0.310, 0.320]
    data = {"runs": sweep_runs("probe_accuracy", mae=mae, dmae=[0.315, 0.325, 0.336], dmae_m95=[0.301, 0.309, 0.322])}
    v = F.dmae_verdicts(data)
    assert v["dmae"].status == V.WORKS and "+1.53" in v["dmae"].detail and v["dmae_m95"].status == V.ROLE
    # +1.5 on the mean, but the differences (+4, -1, +1.6) leave the interval reaching 0: not established
    shaky = F.dmae_verdicts({"runs": sweep_runs("probe_accuracy", mae=mae, dmae=[0.340, 0.300, 0.336],
                                                dmae_m95=[0.31, 0.32, 0.33])})["dmae"]
    assert shaky.status == V.MISSED and "not established" in shaky.detail
    low = F.dmae_verdicts({"runs": sweep_runs("probe_accuracy", mae=mae, dmae=[0.315, 0.325, 0.336],
                                              dmae_m95=[0.29, 0.30, 0.31])})["dmae"]  # mask 0.95 one point below
    assert low.status == V.MISSED and "dmae_m95" in low.detail and "-1.00" in low.detail
    two = F.dmae_verdicts({"runs": sweep_runs("probe_accuracy", mae=mae[:2], dmae=[0.4, 0.4], dmae_m95=[0.4, 0.4])})
    assert two["dmae"].status == V.PENDING and "dmae 2 of 3" in two["dmae"].detail
    no_m95 = F.dmae_verdicts({"runs": sweep_runs("probe_accuracy", mae=mae, dmae=[0.315, 0.325, 0.336])})["dmae"]
    assert no_m95.status == V.PENDING and "dmae_m95" in no_m95.detail


def ortrack_runs(arm: str, clean: list[float], occluded: list[float]) -> list[dict]:
    return [{"arm": arm, "seed": s, "accuracy": c, "occluded_0.3": o, "occluded_0.5": o - 0.1}
            for s, (c, o) in enumerate(zip(clean, occluded))]


def test_ortrack_orr_gains_occluded_without_losing_clean_and_afkd_not_below_uniform_mse():
    base = ortrack_runs("ce_finetune", [0.80, 0.81, 0.80], [0.50, 0.51, 0.52])
    part_b = ortrack_runs("mse_uniform", [0.72] * 3, [0.45, 0.46, 0.47])

    def judge(orr_clean: list[float], orr_occ: list[float], afkd_occ: list[float]) -> dict[str, V.Verdict]:
        return F.ortrack_verdicts({"runs": base + part_b + ortrack_runs("orr", orr_clean, orr_occ)
                                   + ortrack_runs("afkd", [0.72] * 3, afkd_occ)})

    v = judge([0.80, 0.805, 0.80], [0.52, 0.53, 0.535], [0.46, 0.46, 0.47])
    assert v["orr"].status == V.WORKS and v["afkd"].status == V.WORKS and v["ce_finetune"].status == V.ROLE
    gain = judge([0.81, 0.82, 0.81], [0.52, 0.53, 0.535], [0.45] * 3)["orr"]
    assert gain.status == V.WORKS  # a clean gain is no harm
    costly = judge([0.79, 0.80, 0.79], [0.52, 0.53, 0.535], [0.45] * 3)["orr"]  # clean -1.00: not within 0.5
    assert costly.status == V.MISSED and "clean orr" in costly.detail and "-1.00" in costly.detail
    below = judge([0.80] * 3, [0.52] * 3, [0.44, 0.45, 0.47])["afkd"]  # -0.67 on occluded top-1
    assert below.status == V.MISSED and "-0.67" in below.detail
    one = F.ortrack_verdicts({"runs": base + ortrack_runs("orr", [0.8], [0.6])})
    assert one["orr"].status == V.PENDING and "orr 1 of 3" in one["orr"].detail
    assert one["afkd"].status == V.PENDING  # not run yet: listed, not silent


def test_paired_views_share_of_the_gap_and_the_adapter_reported():
    oracle = [0.80, 0.81, 0.79]

    def data(kd: list[float], source: float | None = 0.40, **more: list[float]) -> dict:
        d = {"runs": sweep_runs(oracle=oracle, paired_kd=kd, **more)}
        return d if source is None else d | {"source_only": source}

    v = F.paired_views_verdicts(data([0.65, 0.66, 0.64], adapter=[0.55, 0.56, 0.57]))
    assert v["paired_kd"].status == V.WORKS and "+62.50" in v["paired_kd"].detail  # (65 - 40) / (80 - 40)
    assert v["adapter"].status == V.ROLE and "closes 40 %" in v["adapter"].detail
    assert "adapter: " in F.verdict_text(v, also=("adapter",)) and "adapter" not in F.verdict_text(v)
    short = F.paired_views_verdicts(data([0.58, 0.59, 0.60]))["paired_kd"]  # 47.5 %
    assert short.status == V.MISSED and "+47.50" in short.detail
    assert F.paired_views_verdicts(data([0.65, 0.66, 0.64], source=None))["paired_kd"].status == V.PENDING
    few = F.paired_views_verdicts(data([0.65, 0.66]))["paired_kd"]
    assert few.status == V.PENDING and "paired_kd 2 of 3" in few.detail
    no_gap = F.paired_views_verdicts(data([0.65, 0.66, 0.64], source=0.85))["paired_kd"]
    assert no_gap.status == V.NA and "no gap" in no_gap.detail


def test_trg_needs_both_settings_margins_over_kd():
    bal_kd, lt_kd = [0.620, 0.630, 0.640], [0.400, 0.410, 0.420]

    def judge(bal: list[float], lt: list[float] | None) -> V.Verdict:
        arms = {"balanced__kd": bal_kd, "balanced__trg": bal, "balanced__scratch": [0.6] * 3}
        if lt is not None:
            arms |= {"lt__kd": lt_kd[:len(lt)], "lt__trg": lt}
        v = F.trg_verdicts({"args": {"epochs": 15}, "runs": sweep_runs(**arms)})
        assert v["balanced:kd"].status == v["balanced:trg"].status == V.ROLE
        return v["trg"]

    assert judge([0.627, 0.636, 0.646], [0.412, 0.421, 0.433]).status == V.WORKS  # +0.63 and +1.2
    lt_short = judge([0.627, 0.636, 0.646], [0.408, 0.418, 0.428])  # +0.8 on LT, needs +1
    failed, held = lt_short.detail.split(" (held: ")  # the failed part, then the part that held
    assert lt_short.status == V.MISSED and "LT trg" in failed and "balanced" not in failed and "balanced" in held
    assert judge([0.627, 0.636, 0.646], None).status == V.PENDING  # LT not run: balanced alone cannot decide
    assert judge([0.622, 0.632, 0.642], None).status == V.MISSED  # but a measured miss on balanced does
    few = judge([0.627, 0.636, 0.646], [0.430, 0.440])  # +3 on LT over 2 seeds: a third is needed
    assert few.status == V.PENDING and "lt:trg 2 of 3" in few.detail


def test_cnn_vit_coop_needs_both_students_a_point_over_independent_and_coop_not_below_dml():
    def data(coop_cnn: float, coop_vit: float, seeds: int = 3, vit_measured: bool = True) -> dict:
        runs = []
        for arm, cnn, vit in (("independent", 0.70, 0.50), ("dml", 0.72, 0.53), ("coop", coop_cnn, coop_vit)):
            for s in range(seeds):
                runs.append({"arm": arm, "seed": s, "accuracy": cnn + 0.01 * s,
                             "peer_accuracy": vit + 0.01 * s if vit_measured or arm != "coop" else -1.0})
        return {"runs": runs}

    assert F.cnn_vit_coop_verdicts(data(0.73, 0.54))["coop"].status == V.WORKS
    vit_short = F.cnn_vit_coop_verdicts(data(0.73, 0.505))["coop"]  # ViT +0.5 over independent
    assert vit_short.status == V.MISSED and "ViT coop - independent +0.50" in vit_short.detail
    below_dml = F.cnn_vit_coop_verdicts(data(0.715, 0.54))["coop"]  # CNN +1.5 over independent, -0.5 vs DML
    assert below_dml.status == V.MISSED and "CNN coop - dml -0.50" in below_dml.detail
    assert F.cnn_vit_coop_verdicts(data(0.73, 0.54, seeds=2))["coop"].status == V.PENDING
    unscored = F.cnn_vit_coop_verdicts(data(0.73, 0.54, vit_measured=False))["coop"]  # peer_accuracy -1: not a value
    assert unscored.status == V.PENDING and "coop" in unscored.detail


def test_cnn_vit_coop_seg_judges_both_students_mious_against_independent_and_dml():
    def data(coop_cnn: float, coop_vit: float, seeds: int = 3) -> dict:
        runs = []
        for arm, cnn, vit in (("independent", 0.60, 0.45), ("dml", 0.62, 0.47), ("coop", coop_cnn, coop_vit)):
            for s in range(seeds):
                runs.append({"arm": arm, "seed": s, "miou": cnn + 0.01 * s, "peer_miou": vit + 0.005 * s})
        return {"runs": runs}

    assert F.cnn_vit_coop_seg_verdicts(data(0.63, 0.48))["coop"].status == V.WORKS
    vit_short = F.cnn_vit_coop_seg_verdicts(data(0.63, 0.455))["coop"]  # ViT +0.5 mIoU over independent
    assert vit_short.status == V.MISSED and "ViT coop - independent +0.50" in vit_short.detail
    below_dml = F.cnn_vit_coop_seg_verdicts(data(0.615, 0.48))["coop"]  # CNN +1.5 over independent, -0.5 vs DML
    assert below_dml.status == V.MISSED and "CNN coop - dml -0.50" in below_dml.detail
    assert F.cnn_vit_coop_seg_verdicts(data(0.63, 0.48, seeds=2))["coop"].status == V.PENDING
    assert "cnn_vit_coop_seg" in F.FAMILY_TABLES


def test_transkd_needs_two_miou_over_ce_and_not_below_the_better_feature_mse():
    ce, fit, fit01 = [0.500, 0.510, 0.520], [0.520, 0.530, 0.540], [0.45, 0.46, 0.47]
    v = F.transkd_verdicts({"runs": sweep_runs("miou", mit_ce=ce, mit_fitnet=fit, mit_fitnet_w01=fit01,
                                               transkd_base=[0.530, 0.545, 0.550], transkd_gl=[0.54, 0.55, 0.56])})
    assert v["transkd_base"].status == V.WORKS and "+3.17" in v["transkd_base"].detail
    assert "mit_fitnet +1.17" in v["transkd_base"].detail  # judged against the better MSE weight (here weight 1)
    assert v["mit_ce"].status == V.ROLE and v["mit_fitnet_w01"].status == V.ROLE and "transkd_ea" not in v
    short = F.transkd_verdicts({"runs": sweep_runs("miou", mit_ce=ce, mit_fitnet=[0.4] * 3, mit_fitnet_w01=[0.4] * 3,
                                                   transkd_base=[0.515, 0.525, 0.535])})["transkd_base"]
    assert short.status == V.MISSED and "+1.50" in short.detail  # +1.5 mIoU over CE on every seed: below +2
    better = [0.56, 0.57, 0.58]
    below_w01 = F.transkd_verdicts({"runs": sweep_runs("miou", mit_ce=ce, mit_fitnet=fit, mit_fitnet_w01=better,
                                                       transkd_base=[0.530, 0.545, 0.550])})["transkd_base"]
    assert below_w01.status == V.MISSED and "mit_fitnet_w01 -2.83" in below_w01.detail
    two = F.transkd_verdicts({"runs": sweep_runs("miou", mit_ce=ce[:2], mit_fitnet=fit[:2], mit_fitnet_w01=fit01[:2],
                                                 transkd_base=[0.6, 0.6])})["transkd_base"]
    assert two.status == V.PENDING
    no_w01 = F.transkd_verdicts({"runs": sweep_runs("miou", mit_ce=ce, mit_fitnet=fit,
                                                    transkd_base=[0.6, 0.61, 0.62])})
    assert no_w01["transkd_base"].status == V.PENDING and "mit_fitnet_w01" in no_w01["transkd_base"].detail
    assert F.transkd_verdicts({"runs": []})["transkd_base"].status == V.PENDING


def test_the_new_tables_are_registered_under_the_names_their_scripts_write():
    for name, fn in (("dmae", F.dmae_verdicts), ("ortrack", F.ortrack_verdicts),
                     ("paired_views", F.paired_views_verdicts), ("trg_lt", F.trg_verdicts),
                     ("cnn_vit_coop", F.cnn_vit_coop_verdicts),
                     ("transkd_seg", F.transkd_verdicts)):
        assert V.TABLES[name][1] is fn
        text = (REPO / "benchmarks" / f"{name}.py").read_text()
        assert f'"{name}"' in text or f'"{name}.json"' in text, name  # the result file's stem
        assert fn.__name__ in text  # the script's own verdict line is this function's


def test_leaf_unaligned_control_is_judged_against_a_random_ranking():
    def rows(asym, control, random=0.005):
        per = {str(s): {"ndcg@10": v} for s, v in enumerate([0.30, 0.31, 0.29])}
        return {"rows": {"random": {"all": {"ndcg@10": random}},
                         "leaf_sym": per,
                         "leaf_asym": {str(s): {"ndcg@10": asym + d, "query_cosine_to_teacher": 0.95}
                                       for s, d in enumerate([0.0, 0.01, -0.01])},
                         "label_only_asym": {str(s): {"ndcg@10": control} for s in range(3)}}}
    v = V.cranfield_verdicts(rows(asym=0.32, control=0.05))["leaf_asym"]
    assert v.status == V.WORKS and "random 0.50" in v.detail  # 5.0 is nearer 0.5 than 32
    v = V.cranfield_verdicts(rows(asym=0.32, control=0.25))["leaf_asym"]
    assert v.status == V.MISSED and "unaligned control 25.00" in v.detail
    data = rows(asym=0.32, control=0.05)
    del data["rows"]["random"]
    assert V.cranfield_verdicts(data)["leaf_asym"].status == V.PENDING


def test_tgeo_protocol_needs_its_alpha_probe_and_the_best_fixed_alpha():
    def run(arm, seed, acc, groups=None):
        return {"arm": arm, "seed": seed, "accuracy": acc, **({"alpha_groups": groups} if groups else {})}

    def groups(noise, wrong, right):
        return {"noise": {"mean_alpha": noise, "n": 250}, "teacher_wrong": {"mean_alpha": wrong, "n": 400},
                "teacher_right": {"mean_alpha": right, "n": 4600}}

    runs = [run(f"kd_alpha0{a}", s, 0.70 + a / 1000) for a in (3, 5, 7, 9) for s in range(3)]
    data = {"args": {"student": "resnet20", "name": "cifar10_tgeo"}, "runs": runs + [
        run("tgeo", s, 0.71, groups(0.2, 0.3, 0.6)) for s in range(3)]}
    v = V.cifar_verdicts(data)["tgeo"]
    assert v.status == V.WORKS and "noise 0.200" in v.detail
    data["runs"][-1]["alpha_groups"] = groups(0.9, 0.1, 0.6)  # one seed reversed: the means decide
    assert V.cifar_verdicts(data)["tgeo"].status == V.WORKS
    for r in data["runs"][-3:]:
        r["alpha_groups"] = groups(0.7, 0.3, 0.6)  # noise above the teacher-right images
    assert V.cifar_verdicts(data)["tgeo"].status == V.MISSED
    for r in data["runs"][-3:]:
        del r["alpha_groups"]
    assert V.cifar_verdicts(data)["tgeo"].status == V.PENDING
    data["args"]["name"] = "cifar10_catalogue"  # the catalogue's arm points to the protocol table
    assert "cifar10_tgeo" in V.cifar_verdicts(data)["tgeo"].detail


def test_catalogue_mixup_row_reads_the_mix_t_table(tmp_path):
    runs = [{"arm": a, "seed": s, "accuracy": acc} for a, acc in (("mixup", 0.60), ("mixup_t1", 0.62), ("scratch", 0.6))
            for s in range(3)]
    cat = {"args": {"student": "resnet20", "name": "cifar10_catalogue"}, "runs": runs}
    assert "mixup_t1_mixt" in V.cifar_verdicts(cat, tmp_path)["mixup_t1"].detail  # pending: the Mix-T arms
    mixt = [{"arm": a, "seed": s, "accuracy": acc} for a, acc in (("mixup_t1_mixt", 0.58), ("mixup_mixt", 0.61))
            for s in range(3)]
    (tmp_path / "cifar10_mixt.json").write_text(json.dumps({"args": {"name": "cifar10_mixt"}, "runs": mixt}))
    v = V.cifar_verdicts(cat, tmp_path)["mixup_t1"]  # T=1 wins with the plain teacher, loses with Mix-T
    assert v.status == V.MISSED and "Mix-T" in v.detail


def test_queued_arms_of_a_group_come_from_the_jobs_file(tmp_path):
    jobs = tmp_path / "jobs.txt"
    jobs.write_text("# student arm seed\nmobilenetv2 sp 0\nmobilenetv2 sp 1\ntgeo tgeo 0\n\nmobilenetv2 dkd 0\n")
    assert V.queued_arms("mobilenetv2", jobs) == ["sp", "dkd"]
    assert V.queued_arms("tgeo", jobs) == ["tgeo"] and V.queued_arms("mealv2", jobs) == []
    assert V.queued_arms("mobilenetv2", tmp_path / "none.txt") == []


def test_a_third_seed_is_queued_where_two_differ_by_more_than_a_point(tmp_path):
    runs = [{"arm": "scratch", "seed": s, "accuracy": a} for s, a in enumerate([0.44, 0.443, 0.439])]
    runs += [{"arm": "at", "seed": 0, "accuracy": 0.4361}, {"arm": "at", "seed": 1, "accuracy": 0.4260},  # 1.01 apart
             {"arm": "sp", "seed": 0, "accuracy": 0.50}, {"arm": "sp", "seed": 1, "accuracy": 0.505},  # 0.5 apart
             {"arm": "dkd", "seed": 0, "accuracy": 0.46}]  # a logit arm: 3 seeds
    (tmp_path / "cifar10_catalogue_mobilenetv2.json").write_text(json.dumps(
        {"args": {"student": "mobilenetv2", "name": "cifar10_catalogue_mobilenetv2"}, "runs": runs}))
    wanted = V.missing_seed_jobs(tmp_path)
    assert ("mobilenetv2", "at", 2) in wanted and not any(a == "sp" for _, a, _ in wanted)
    assert {("mobilenetv2", "dkd", 1), ("mobilenetv2", "dkd", 2)} <= set(wanted)
    jobs = tmp_path / "jobs.txt"
    jobs.write_text("# group arm seed\nmobilenetv2 at 0\nmobilenetv2 at 1\nmobilenetv2 sp 1\ntgeo tgeo 0\n")
    added = V.extend_jobs(jobs, [("mobilenetv2", "at", 2), ("mobilenetv2", "dkd", 1), ("mobilenetv2", "sp", 1),
                                 ("resnet20", "kd", 2)])
    assert added == ["mobilenetv2 at 2", "mobilenetv2 dkd 1", "resnet20 kd 2"]  # sp 1 was listed already
    assert jobs.read_text().splitlines() == ["# group arm seed", "mobilenetv2 at 0", "mobilenetv2 at 1",
                                             "mobilenetv2 at 2", "mobilenetv2 sp 1", "mobilenetv2 dkd 1",
                                             "tgeo tgeo 0", "resnet20 kd 2"]
    assert V.extend_jobs(jobs, [("mobilenetv2", "at", 2)]) == []  # idempotent
