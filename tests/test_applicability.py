"""Which tasks each method applies to: every built-in method declares them, a config that pairs a method with
another task is refused in one line naming the method, the task and the tasks it applies to, and
``distill methods --task NAME`` lists what applies with the options and their defaults."""

from __future__ import annotations

import json

import pytest

from distill.cli import main
from distill.config import ConfigError, parse_config
from distill.core.family import FAMILIES
from distill.core.method import CLASSIFICATION_TASKS
from distill.methods import METHODS

#: the smallest valid config of each family (validation reads no file), with ``methods`` to fill in
BASES = {
    "image_classification": {"data": {"train": "x"}, "student": {"arch": "resnet20"},
                             "teacher": {"arch": "resnet56", "weights": "random"}},
    "vector_classification": {"task": "vector_classification", "data": {"train": "x.npz"},
                              "student": {"arch": "mlp"}, "teacher": {"arch": "mlp", "weights": "random"}},
    "text_classification": {"task": "text_classification", "data": {"train": "x.txt"},
                            "student": {"arch": "textcnn"}, "teacher": {"arch": "bilstm", "weights": "random"}},
    "graph_node_classification": {"task": "graph_node_classification", "data": {"path": "x"},
                                  "student": {"arch": "graph_mlp"},
                                  "teacher": {"arch": "graph_gcn", "weights": "random"}},
    "causal_lm": {"task": "causal_lm", "data": {"tokenizer": "tok", "text": "input.txt"},
                  "student": {"arch": "llama"}, "teacher": {"path": "teacher"}},
    "ranking": {"task": "ranking", "data": {"docs": "d.tsv", "queries": "q.tsv", "qrels": "r.txt"},
                "teacher": {"path": "t"}},
    "embedding": {"task": "embedding", "data": {"train": "t.txt"}, "teacher": {"path": "t"}},
    "anomaly_detection": {"task": "anomaly_detection", "data": {"texture": "brick"},
                          "student": {"arch": "dbfad_student"}, "teacher": {"arch": "resnet56", "weights": "random"}},
    "semantic_segmentation": {"task": "semantic_segmentation", "student": {"arch": "seg_resnet_student"},
                              "teacher": {"arch": "seg_resnet_teacher", "weights": "random"}},
    "masked_image_pretraining": {"task": "masked_image_pretraining", "data": {"train": "t.tar.gz"},
                                 "student": {"arch": "mae_vit"}},
    "paired_views": {"task": "paired_views", "data": {"train": "t.tar.gz"}, "student": {"arch": "resnet20"},
                     "teacher": {"arch": "resnet56", "weights": "random"}},
    "super_resolution": {"task": "super_resolution", "data": {"source": "textures"},
                         "student": {"arch": "span", "conv_lora": {"conv_2": {"rank": 2, "alpha": 2}}},
                         "teacher": {"arch": "span", "weights": "random"}},
}


def config(task: str, *methods: dict) -> dict:
    return {**BASES[task], "methods": list(methods)}


def test_every_method_declares_registered_tasks():
    names = set(FAMILIES.names())
    assert set(BASES) == names
    for entry in METHODS:
        tasks = entry.obj.tasks
        assert tasks, f"{entry.name} declares no tasks"
        assert tasks <= names, (entry.name, tasks - names)
    by_task = {t: {e.name for e in METHODS if t in e.obj.tasks} for t in names}
    assert {"kd", "ce", "dkd", "fitnet", "rkd"} <= by_task["vector_classification"]
    assert by_task["ranking"] == {"margin_mse", "score_mse", "ranking_nll"}
    assert by_task["causal_lm"] == {"fkl", "rkl", "gjsd", "tvd", "skl", "srkl", "taid", "on_policy", "lm_ce",
                                    "uld"}
    assert by_task["anomaly_detection"] == {"reverse_distillation"}
    assert by_task["super_resolution"] == {"l1", "dsclora", "fitnet"}
    assert by_task["masked_image_pretraining"] == {"mae_reconstruction", "dmae"}
    assert by_task["paired_views"] == {"paired_view_kd"}
    assert by_task["semantic_segmentation"] == {"ce", "fitnet", "transkd", "acam_kd", "cnn_vit_coop"}
    maps_only = by_task["image_classification"] - by_task["text_classification"]
    assert {"at", "ab", "ft", "fsp", "nst", "reviewkd"} <= maps_only


def test_a_ranking_loss_on_an_image_task_is_refused():
    with pytest.raises(ConfigError, match=r"^methods\[1\]\.name: 'margin_mse' applies to task ranking; this run is "
                                          r"image_classification$"):
        parse_config(config("image_classification", {"name": "ce"}, {"name": "margin_mse"}))


def test_an_lm_divergence_on_an_image_task_is_refused():
    with pytest.raises(ConfigError, match=r"^methods\[0\]\.name: 'fkl' applies to task causal_lm; this run is "
                                          r"image_classification$"):
        parse_config(config("image_classification", {"name": "forward_kl"}))  # an alias: named canonically


def test_a_graph_method_on_text_is_refused():
    with pytest.raises(ConfigError, match=r"^methods\[0\]\.name: 'glnn' applies to task graph_node_classification; "
                                          r"this run is text_classification$"):
        parse_config(config("text_classification", {"name": "glnn"}))


def test_feature_map_and_mixing_methods_list_every_task_they_apply_to():
    with pytest.raises(ConfigError, match=r"^methods\[0\]\.name: 'mixup' applies to tasks image_classification, "
                                          r"vector_classification; this run is text_classification$"):
        parse_config(config("text_classification", {"name": "mixup"}, {"name": "kd"}))
    with pytest.raises(ConfigError, match=r"^methods\[0\]\.name: 'at' applies to task image_classification; "):
        parse_config(config("vector_classification", {"name": "at"}))
    with pytest.raises(ConfigError, match=r"^methods\[0\]\.name: 'kd' applies to tasks graph_node_classification, "
                                          r"image_classification, text_classification, vector_classification; this run "
                                          r"is causal_lm$"):
        parse_config(config("causal_lm", {"name": "kd"}))


@pytest.mark.parametrize("task", sorted(CLASSIFICATION_TASKS))
def test_kd_is_accepted_on_every_classification_family(task):
    cfg = parse_config(config(task, {"name": "ce", "weight": 0.1}, {"name": "kd", "weight": 0.9}))
    assert cfg.task == task and [m.name for m in cfg.methods] == ["ce", "kd"]


def test_each_familys_own_methods_are_accepted():
    for task, method in [("ranking", "margin_mse"), ("embedding", "leaf"), ("causal_lm", "fkl"),
                         ("graph_node_classification", "glnn"), ("vector_classification", "mixup")]:
        extra = [{"name": "ce"}] if method == "mixup" else []
        assert parse_config(config(task, {"name": method}, *extra)).methods[0].name == method


def test_methods_task_lists_what_applies_with_options_and_defaults(capsys):
    assert main(["methods", "--task", "ranking", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == ["margin_mse", "ranking_nll", "score_mse"]
    assert rows[1]["options"] == {"scale": "1.0"} and rows[1]["tasks"] == ["ranking"]
    assert main(["methods", "--task", "causal_lm"]) == 0
    table = capsys.readouterr().out
    assert "methods for task causal_lm (10)" in table and "temperature=1.0" in table
    assert " kd " not in table and "margin_mse" not in table


def test_methods_task_marks_the_pipeline_only_methods(capsys):
    """d2dgn applies to graph tasks but runs only as a pipeline (a methods list refuses it): the listing says so."""
    assert main(["methods", "--task", "graph_node_classification", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["d2dgn"]["pipeline"] == "distill.pipelines.graph_unlearning" and rows["glnn"]["pipeline"] is None
    assert main(["methods", "--task", "graph_node_classification"]) == 0
    lines = capsys.readouterr().out.splitlines()
    d2dgn = next(ln for ln in lines if " d2dgn " in ln)
    assert "(pipeline: distill.pipelines.graph_unlearning; not for a methods list)" in d2dgn.replace("│", " ")
    assert not any("(pipeline:" in ln for ln in lines if " glnn " in ln)
    with pytest.raises(ConfigError, match=r"trained by the pipeline distill\.pipelines\.graph_unlearning"):
        parse_config(config("graph_node_classification", {"name": "d2dgn"}))


def test_methods_task_refuses_an_unknown_task(capsys):
    assert main(["methods", "--task", "images"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == ("--task: unknown task 'images'; allowed: anomaly_detection, causal_lm, embedding, "
                           "graph_node_classification, image_classification, masked_image_pretraining, paired_views, "
                           "ranking, semantic_segmentation, "
                           "super_resolution, text_classification, vector_classification")


def test_a_plugin_family_can_take_the_methods_of_a_built_in_task(monkeypatch):
    from distill.config import applicability_error
    from distill.core.family import Family

    class Tabular(Family):
        name = "tabular_plugin"
        methods_as = "vector_classification"

    class Other(Family):
        name = "other_plugin"

    monkeypatch.setitem(FAMILIES._families, "tabular_plugin", Tabular())
    monkeypatch.setitem(FAMILIES._families, "other_plugin", Other())
    assert applicability_error("kd", "tabular_plugin") is None
    assert applicability_error("mixup", "tabular_plugin") is None
    assert applicability_error("at", "tabular_plugin") == ("'at' applies to task image_classification; this run is "
                                                          "tabular_plugin")
    assert applicability_error("kd", "other_plugin").endswith("; this run is other_plugin")
