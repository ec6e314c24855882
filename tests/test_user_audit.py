"""What a user bringing their own data hits after training: a teacher cache that would not store the taps the
methods read is refused before it is built; ``distill eval`` of a run folder's config finds the run (its
``--output-dir``) and fails when there is nothing to evaluate; the model card and the report name the classes of
the student's outputs (labels 1..K read as names); a ranking run on MS MARCO-style files reads its own saved config
back (export); the crop-size error names the resize mode it describes. Tiny files written by the tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from distill.cli import main
from distill.config import ConfigError, parse_config
from distill.experiment import build_experiment


def vector_run(tmp_path: Path) -> Path:
    """A 1-epoch vector run on labels 1..3 read as names, trained through ``distill train --output-dir``."""
    g = np.random.default_rng(0)
    x = g.normal(size=(30, 4)).astype("float32")
    y = np.arange(30) % 3 + 1
    np.savez(tmp_path / "train.npz", x=x, y=y)
    np.savez(tmp_path / "test.npz", x=x[:9], y=y[:9])
    (tmp_path / "v.yaml").write_text(yaml.safe_dump({
        "task": "vector_classification", "data": {"train": "train.npz", "eval": "test.npz", "integer_labels": "names"},
        "student": {"arch": "mlp", "options": {"hidden": 8}}, "methods": [{"name": "ce"}],
        "train": {"epochs": 1, "batch_size": 10, "progress": False}}))
    run = tmp_path / "myrun"
    assert main(["train", str(tmp_path / "v.yaml"), "--output-dir", str(run)]) == 0
    return run


def test_eval_of_a_run_folder_config_finds_the_run_and_fails_with_nothing_to_evaluate(tmp_path, capsys):
    run = vector_run(tmp_path)
    capsys.readouterr()
    assert json.loads((run / "distill_config.json").read_text())["output_dir"] == str(run)
    assert main(["eval", str(run / "distill_config.json")]) == 0
    assert "student" in json.loads(capsys.readouterr().out)
    # no student weights where the config points and no teacher: an error, not an empty result
    rc = main(["eval", str(tmp_path / "v.yaml"), "--output-dir", str(tmp_path / "nothing")])
    out = capsys.readouterr()
    assert rc != 0 and "no student weights" in out.err and "no teacher to evaluate" in out.err
    assert out.out.strip() == ""


def test_model_card_and_report_name_the_classes(tmp_path, capsys):
    run = vector_run(tmp_path)
    assert main(["export", str(run), "--format", "safetensors"]) == 0
    card = (run / "export-safetensors" / "README.md").read_text()
    assert "## Classes" in card and "| 0 | 1 |\n| 1 | 2 |\n| 2 | 3 |" in card
    assert main(["report", str(run), "--out", str(tmp_path / "r.html")]) == 0
    html = (tmp_path / "r.html").read_text()
    assert "classes (output order)</th><td>0: 1, 1: 2, 2: 3</td>" in html


def test_teacher_cache_without_the_methods_taps_is_refused_before_it_is_built(tmp_path, capsys):
    raw = yaml.safe_load("""
task: semantic_segmentation
data: {texmosaic: {train_size: 4, eval_size: 2, size: 32}}
student: {arch: seg_resnet_student}
teacher: {arch: seg_resnet_teacher, weights: random, cache: {path: tc}}
methods: [{name: ce}, {name: fitnet, student: f3, teacher: f3}]
train: {epochs: 1, batch_size: 2, progress: false}
""")
    with pytest.raises(ConfigError, match=r"teacher\.cache\.features: .*\['f3'\].*add them"):
        build_experiment(parse_config(raw, base_dir=tmp_path), tmp_path / "run")
    assert not (tmp_path / "tc").exists()
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    assert main(["cache", "build", str(tmp_path / "c.yaml")]) != 0  # distill cache build refuses it too
    assert "teacher.cache.features" in capsys.readouterr().err and not (tmp_path / "tc").exists()


def test_ranking_msmarco_run_config_reads_back(tmp_path):
    from distill.export.run import config_dict

    (tmp_path / "collection.tsv").write_text("1\tthe wing\n2\ta plate\n3\tthe flow\n")
    (tmp_path / "queries.tsv").write_text("7\twing\n")
    (tmp_path / "scores.tsv").write_text("5.0\t1.0\t7\t1\t2\n4.0\t2.0\t7\t1\t3\n")
    raw = {"task": "ranking", "data": {"docs": "collection.tsv", "queries": "queries.tsv"},
           "teacher": {"scores": "scores.tsv"}, "methods": [{"name": "margin_mse"}]}
    cfg = parse_config(raw, base_dir=tmp_path)
    saved = config_dict(cfg)  # every default written out, as in distill_config.json
    assert saved["data"]["train_queries"] is None and saved["data"]["num_negatives"] == 3
    parse_config(saved, base_dir=tmp_path)  # refused before: data.train_queries / num_negatives "given"
    explicit = {**raw, "data": {**raw["data"], "num_negatives": 3}}  # the default, written by the user: refused
    with pytest.raises(ConfigError, match=r"data\.num_negatives: applies to data\.hard_negatives"):
        parse_config(explicit, base_dir=tmp_path)
    (tmp_path / "qrels.txt").write_text("7 0 1 1\n")
    judged = {**raw, "data": {"docs": "collection.tsv", "queries": "queries.tsv", "qrels": "qrels.txt"}}
    parse_config(config_dict(parse_config(judged, base_dir=tmp_path)), base_dir=tmp_path)  # triples_format "given"


def test_crop_size_error_names_the_side_of_its_resize_mode(tmp_path):
    for mode, side in (("shorter_side", "the shorter side"), ("longer_side_pad", "the side")):
        raw = {"task": "semantic_segmentation", "student": {"arch": "seg_resnet_student"}, "methods": [{"name": "ce"}],
               "data": {"source": "folders", "train": ".", "image_size": 64, "crop_size": 96, "resize": mode}}
        with pytest.raises(ConfigError, match=rf"larger than data\.image_size \(64\), {side} of every resized image "
                                              rf"\(data\.resize: {mode}\)"):
            parse_config(raw, base_dir=tmp_path)


@pytest.mark.parametrize("id_name", ["node_id", ""])  # "": the index column pandas' to_csv writes
def test_graph_nodes_csv_id_column_orders_the_rows_and_is_no_feature(tmp_path, id_name):
    from distill.data.graph_files import load_graph_files

    x = np.arange(12, dtype=np.float32).reshape(6, 2)
    y = [0, 1, 0, 1, 0, 1]
    split = ["train", "train", "val", "val", "test", "test"]
    order = [3, 0, 5, 1, 4, 2]  # rows listed out of id order
    lines = [f"{id_name},f0,f1,label,split"] + [f"{i},{x[i, 0]:g},{x[i, 1]:g},{y[i]},{split[i]}" for i in order]
    (tmp_path / "nodes.csv").write_text("\n".join(lines) + "\n")
    (tmp_path / "edges.csv").write_text("0,1\n2,3\n4,5\n")
    g = load_graph_files(tmp_path)
    assert g.x.tolist() == x.tolist() and g.y.tolist() == y  # features and labels of node i on row i, no id feature
    assert g.train_mask.tolist() == [True, True, False, False, False, False]
    (tmp_path / "nodes.csv").write_text("\n".join(lines[:-1] + [lines[1]]) + "\n")  # node 3 twice, node 2 missing
    with pytest.raises(ConfigError, match=rf"nodes\.csv: row 5, node-id column '{id_name}': node 3 is listed twice"):
        load_graph_files(tmp_path)


def test_graph_class_names_reach_the_run_facts(tmp_path):
    from distill.data.graph_files import load_graph_npz
    from distill.tasks.graph.build import GraphFamily

    y = np.array(["Theory", "Neural_Networks", "Theory", "Case_Based", "Neural_Networks", "Case_Based"])
    np.savez(tmp_path / "g.npz", x=np.eye(6, dtype=np.float32), y=y, edge_index=np.array([[0, 2, 4], [1, 3, 5]]),
             train_mask=np.array([1, 1, 0, 0, 0, 0], bool), val_mask=np.array([0, 0, 1, 1, 0, 0], bool),
             test_mask=np.array([0, 0, 0, 0, 1, 1], bool))
    g = load_graph_npz(tmp_path / "g.npz")
    assert g.classes == ["Case_Based", "Neural_Networks", "Theory"] and g.y.tolist() == [2, 1, 2, 0, 1, 0]
    assert g.row_normalized().classes == g.classes
    from distill.core.family import Loaded

    facts = GraphFamily().export_facts(Loaded(None, None, num_outputs=3, info={"graph": g}))
    assert facts["classes"] == ["Case_Based", "Neural_Networks", "Theory"]


def test_hard_negative_system_misspelt_beside_a_real_one_is_refused(tmp_path):
    from distill.text.msmarco import read_hard_negatives

    path = tmp_path / "hn.jsonl"
    path.write_text(json.dumps({"qid": 1, "pos": [0], "neg": {"bm25": [1, 2, 3], "tas-b": [4, 5]}}) + "\n")
    table, _ = read_hard_negatives(path, 2, ["bm25", "tas-b"], 0, None, None)
    assert len(table) == 1
    with pytest.raises(ValueError, match=r"no system \['tasb'\] in any line; the file's systems: \['bm25', 'tas-b'\]"):
        read_hard_negatives(path, 2, ["bm25", "tasb"], 0, None, None)


def test_report_names_the_data_of_an_msmarco_run(tmp_path):
    from distill.export.run import RunFolder
    from distill.report.html import run_summary

    raw = {"task": "ranking", "data": {"docs": "c.tsv", "queries": "q.tsv", "hard_negatives": "hn.jsonl.gz",
                                       "train": None}}
    assert run_summary(RunFolder(tmp_path, raw, None, None), [])["data"] == "hn.jsonl.gz"


@pytest.mark.parametrize("raw", [
    {"task": "text_classification", "data": {"train": "t.tsv", "surface_transform": {"name": "upper_swap"}},
     "student": {"arch": "textcnn"}, "methods": [{"name": "ce"}]},
    {"task": "image_classification", "data": {"train": "x"}, "student": {"arch": "resnet8x4"},
     "methods": [{"name": "kd"}],
     "teacher": {"mixture": {"members": [{"arch": "resnet8x4", "weights": "random"}] * 2, "route": "column",
                             "column": "src"}}},
])
def test_saved_run_configs_read_back(tmp_path, raw):
    """distill_config.json writes every default out; reading it back (export, eval) must not take them as keys the
    user gave (refused before: surface_transform's min_length, a mixture's teacher.reduce)."""
    from distill.export.run import config_dict

    saved = config_dict(parse_config(raw, base_dir=tmp_path))
    assert parse_config(saved, base_dir=tmp_path).task == raw["task"]
    bad = json.loads(json.dumps(raw))
    if raw["task"] == "text_classification":
        bad["data"]["surface_transform"]["min_length"] = 4  # the default, written by the user: still refused
        match = r"min_length: only read with name: char_noise"
    else:
        bad["teacher"]["reduce"] = "logits"
        match = r"teacher\.reduce: combines an ensemble"
    with pytest.raises(ConfigError, match=match):
        parse_config(bad, base_dir=tmp_path)


def _recipes() -> list[Path]:
    import re

    configs = Path(__file__).resolve().parents[1] / "configs"
    return sorted(p for p in configs.rglob("*.y*ml")
                  if not p.name.startswith("_") and p.parent.name != "continual" and "pipelines" not in p.parts
                  and not re.search(r"^pipeline:", p.read_text(), re.M))


def test_every_recipe_reads_back_from_its_saved_config():
    """What ``distill_config.json`` holds for each recipe of configs/ (every default written out) parses back to the
    same config, so ``distill export`` / ``distill eval`` / rerunning a run folder work for every family."""
    from distill.config import load_config
    from distill.export.run import config_dict

    failures = []
    for path in _recipes():
        cfg = load_config(path)
        saved = config_dict(cfg)
        try:
            again = parse_config(saved, base_dir=cfg.base_dir)
        except ConfigError as e:
            failures.append(f"{path.name}: {str(e).splitlines()[0]}")
            continue
        if config_dict(again) != saved:
            failures.append(f"{path.name}: differs after reading back")
    assert not failures, failures
