"""What a release audit found by running the library on users' own files (docs/data.md, docs/graph.md): each test
builds the tiny file a user would have and checks what a run makes of it.

- an npz ``classes`` array names the classes of a graph (``data.format: npz``) and of feature rows, as it does for
  images; feature rows in a CSV may carry class names (``format: auto``), numbered like the table reader's;
- a ``.tsv`` table with named columns reads with ``format: csv`` (what the TSV reader's error tells users to do);
- an evaluation image folder without some class keeps the training split's numbering (it was refused);
- TIFF images are read by image classification as by the dense families, other files in class folders are named
  in a note rather than skipped without a word, and a 16-bit PNG is scaled to 8 bits rather than clipped white.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from distill.config import ConfigError, parse_config
from distill.core.family import FAMILIES

CLASSES = ["zebra", "apple", "mango"]  # not in sorted order: the file's order must be kept


# ------------------------------------------------------------------------------------------------------ graphs


def graph_arrays(n: int = 24) -> dict[str, np.ndarray]:
    g = np.random.default_rng(0)
    y = np.arange(n) % 3
    x = (g.normal(size=(n, 4)) + y[:, None]).astype(np.float32)
    edges = np.array([(i, (i + 3) % n) for i in range(n)], dtype=np.int64).T
    split = np.array(["train", "val", "test"])[(np.arange(n) // 3) % 3]
    return {"x": x, "y": y, "edge_index": edges, **{f"{s}_mask": split == s for s in ("train", "val", "test")}}


def test_graph_npz_classes_array_names_the_classes(tmp_path):
    pytest.importorskip("torch_geometric")
    from distill.cli import main
    from distill.data.graph_files import load_graph_npz

    arrays = graph_arrays()
    np.savez(tmp_path / "g.npz", **arrays, classes=np.array(CLASSES))
    g = load_graph_npz(tmp_path / "g.npz")
    assert g.classes == CLASSES and g.y.tolist() == arrays["y"].tolist()
    # labels stored as names, with the classes array giving the order (not sorted)
    names = np.array(CLASSES)[arrays["y"]]
    np.savez(tmp_path / "n.npz", **{**arrays, "y": names}, class_names=np.array(CLASSES))
    assert load_graph_npz(tmp_path / "n.npz").y.tolist() == arrays["y"].tolist()
    # a class without a node still has its output, named
    np.savez(tmp_path / "four.npz", **arrays, classes=np.array([*CLASSES, "kiwi"]))
    assert load_graph_npz(tmp_path / "four.npz").num_classes == 4
    np.savez(tmp_path / "nodes.npz", **arrays, names=np.array([f"node{i}" for i in range(24)]))  # names the nodes
    assert load_graph_npz(tmp_path / "nodes.npz").classes == ["0", "1", "2"]
    np.savez(tmp_path / "short.npz", **arrays, classes=np.array(CLASSES[:2]))
    with pytest.raises(ConfigError, match=r"short\.npz\['y'\].*label 2 has no class name"):
        load_graph_npz(tmp_path / "short.npz")
    raw = {"task": "graph_node_classification", "output_dir": str(tmp_path / "run"),
           "data": {"format": "npz", "path": str(tmp_path / "g.npz")},
           "student": {"arch": "graph_mlp", "options": {"hidden": 8, "num_layers": 2}}, "methods": [{"name": "ce"}],
           "train": {"optimizer": "adam", "lr": 0.01, "epochs": 2, "progress": False}}
    (tmp_path / "g.yaml").write_text(yaml.safe_dump(raw))
    assert main(["train", str(tmp_path / "g.yaml")]) == 0
    spec = json.loads((tmp_path / "run" / "student_spec.json").read_text())
    assert spec["facts"]["classes"] == CLASSES  # the model card's output -> class table


# ------------------------------------------------------------------------------------------------- feature rows


def load_vectors(tmp_path: Path, **data) -> object:
    raw = {"task": "vector_classification", "data": data, "student": {"arch": "mlp"}, "methods": [{"name": "ce"}]}
    return FAMILIES.get("vector_classification").load(parse_config(raw, base_dir=tmp_path))


def test_feature_rows_with_class_names_in_csv_and_npz(tmp_path):
    rows = [("1.0", "2.0", "setosa"), ("0.5", "1.5", "virginica"), ("3.0", "0.1", "versicolor"),
            ("2.0", "2.0", "setosa")]
    (tmp_path / "train.csv").write_text("petal,sepal,species\n" + "".join(",".join(r) + "\n" for r in rows))
    (tmp_path / "eval.csv").write_text("petal,sepal,species\n1,1,virginica\n2,2,setosa\n")
    loaded = load_vectors(tmp_path, train="train.csv", eval="eval.csv", label="species")
    assert loaded.train.classes == ["setosa", "versicolor", "virginica"]  # sorted, as the table reader numbers them
    assert loaded.train.tensors[1].tolist() == [0, 2, 1, 0] and loaded.eval.tensors[1].tolist() == [2, 0]
    assert loaded.num_outputs == 3
    (tmp_path / "bad.csv").write_text("petal,sepal,species\n1,1,rose\n")
    with pytest.raises(ConfigError, match=r"data\.eval: .*bad\.csv.*classes \['rose'\] are not among the training"):
        load_vectors(tmp_path, train="train.csv", eval="bad.csv", label="species")
    (tmp_path / "text.csv").write_text("petal,sepal,species\n1,n/a,setosa\n")
    with pytest.raises(ConfigError, match=r"text\.csv: line 2, column 'sepal': 'n/a' is not a number"):
        load_vectors(tmp_path, train="text.csv", label="species")
    # npz: the classes array names the labels; an evaluation file whose array orders them otherwise is remapped
    x = np.arange(12, dtype=np.float32).reshape(6, 2)
    np.savez(tmp_path / "train.npz", x=x, y=np.array([0, 1, 2, 0, 1, 2]), classes=np.array(CLASSES))
    np.savez(tmp_path / "eval.npz", x=x[:2], y=np.array([0, 1]), classes=np.array(["mango", "zebra", "apple"]))
    loaded = load_vectors(tmp_path, train="train.npz", eval="eval.npz")
    assert loaded.train.classes == CLASSES and loaded.eval.tensors[1].tolist() == [2, 0]


# ------------------------------------------------------------------------------------------------------ tables


def test_tsv_table_with_named_columns_reads_as_csv(tmp_path):
    pytest.importorskip("datasets")
    from distill.data.tables import labels_of, read_table

    (tmp_path / "t.tsv").write_text("id\treview\trating\n1\ta fine, warm film\tgood\n2\tdull\tbad\n3\tok, fine\tgood\n")
    table = read_table(tmp_path / "t.tsv", "csv", "data.train")
    assert table.column_names == ["id", "review", "rating"] and table["review"][0] == "a fine, warm film"
    labels, names = labels_of(table, "rating", "data.train", tmp_path / "t.tsv")
    assert names == ["bad", "good"] and labels.tolist() == [1, 0, 1]


# ------------------------------------------------------------------------------------------------------ images


def image_cfg(tmp_path: Path, root: Path, **data) -> object:
    raw = {"task": "image_classification", "data": {"train": str(root), "eval": str(root), "image_size": 8,
                                                    "augment": None, **data},
           "student": {"arch": "resnet8x4"}, "methods": [{"name": "ce"}]}
    return parse_config(raw, base_dir=tmp_path)


def write_image(path: Path, value: int, mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((6, 7, 3), value, dtype=np.uint8)).convert(mode).save(path)


def test_eval_folder_without_a_class_keeps_the_training_numbering(tmp_path):
    from distill.tasks.image.data import load_image_data

    root = tmp_path / "photos"
    for split in ("train", "test"):
        for k, cls in enumerate(["ant", "bee", "cat"]):
            if split == "test" and cls == "ant":
                continue  # a small test set missing a class
            write_image(root / split / cls / "a.png", 40 * k)
    train, evald, _ = load_image_data(image_cfg(tmp_path, root))
    assert evald.classes == train.classes == ["ant", "bee", "cat"] and evald.labels.tolist() == [1, 2]
    write_image(root / "test" / "dog" / "a.png", 200)
    with pytest.raises(ConfigError, match=r"data\.eval: .*class folders \['dog'\] that are not in the given classes"):
        load_image_data(image_cfg(tmp_path, root))


def test_tiff_images_read_other_files_named_and_16_bit_scaled(tmp_path, capsys):
    from distill.data.images import load_image_folder

    root = tmp_path / "imgs"
    write_image(root / "a" / "x.png", 10)
    write_image(root / "a" / "y.TIF", 20)
    (root / "b").mkdir()
    Image.fromarray(np.full((6, 7), 40000, dtype=np.uint16)).save(root / "b" / "z.png")  # a 16-bit PNG
    (root / "b" / "notes.txt").write_text("x")
    (root / "b" / ".DS_Store").write_bytes(b"\0")
    data = load_image_folder(root)
    assert data.labels.tolist() == [0, 0, 1]
    assert int(data.images[1].max()) == 20  # the TIFF was read
    assert int(data.images[2, 0, 0, 0]) == round(40000 / 257)  # not clipped to 255
    err = capsys.readouterr().err
    assert "1 file(s) in class folders skipped, not images (.txt: 1; e.g. b/notes.txt)" in err
    assert ".DS_Store" not in err


def test_16_bit_images_in_the_dense_readers(tmp_path):
    from distill.data.image_files import read_rgb

    Image.fromarray(np.full((3, 3), 65535, dtype=np.uint16)).save(tmp_path / "w.png")
    Image.fromarray(np.full((3, 3), 1000, dtype=np.uint16)).save(tmp_path / "d.tif")
    assert read_rgb(tmp_path / "w.png", "data.train").max() == 255
    assert read_rgb(tmp_path / "d.tif", "data.train").max() == round(1000 / 257)


def test_graph_files_name_nodes_by_their_own_ids(tmp_path):
    """Node and edge files as exported from a citation database: papers named by their ids (not 0..N-1), the edge
    list naming them by those ids; the nodes keep the file's order."""
    from distill.data.graph_files import load_graph_files

    ids = ["p31336", "p1061127", "x-9", "p31336b", "p77", "p5"]
    y = ["Theory", "Rule_Learning", "Theory", "Rule_Learning", "Theory", "Rule_Learning"]
    split = ["train", "train", "val", "val", "test", "test"]
    (tmp_path / "nodes.csv").write_text("node_id,f0,f1,label,split\n" + "".join(
        f"{n},{i},{2 * i},{c},{s}\n" for i, (n, c, s) in enumerate(zip(ids, y, split))))
    (tmp_path / "edges.csv").write_text("cited,citing\np31336,x-9\np77,p5\np1061127,p31336b\n")
    g = load_graph_files(tmp_path)
    assert g.x[:, 0].tolist() == list(range(6)) and g.classes == ["Rule_Learning", "Theory"]
    assert sorted(map(tuple, g.edge_index.T.tolist())) == [(0, 2), (1, 3), (2, 0), (3, 1), (4, 5), (5, 4)]
    (tmp_path / "edges.csv").write_text("cited,citing\np31336,x-9\np77,p6\n")
    with pytest.raises(ConfigError, match=r"edges\.csv: line 3: node id 'p6' is not in nodes\.csv's node-id column"):
        load_graph_files(tmp_path)


def test_weights_of_an_earlier_run_on_other_classes_are_refused(tmp_path):
    """A previous run's student as the teacher (or the start) of a run whose class folders changed (one renamed):
    the same number of outputs, so the weights would load and every output be read as another class."""
    from distill.experiment import build_experiment

    root = tmp_path / "photos"
    for k, cls in enumerate(["aaa_bee", "cat", "dog"]):  # the earlier run had 'bee', sorted after 'ant'...
        write_image(root / cls / "a.png", 40 * k)
    run = tmp_path / "runs" / "old"
    (run / "best").mkdir(parents=True)
    spec = {"task": "image_classification", "facts": {"num_outputs": 3, "classes": ["bee", "cat", "dog"]}}
    (run / "student_spec.json").write_text(json.dumps(spec))
    for weights in (run / "student.safetensors", run / "best" / "student.safetensors"):
        weights.write_bytes(b"")  # never read: refused before any weights are loaded
        for key in ("teacher", "student"):
            raw = {"task": "image_classification", "output_dir": str(tmp_path / "new"),
                   "data": {"train": str(root), "image_size": 8, "augment": None},
                   "student": {"arch": "resnet8x4"}, "teacher": {"arch": "resnet8x4", "weights": "random"},
                   "methods": [{"name": "kd"}]}
            raw[key] = {"arch": "resnet8x4", "weights": str(weights)}
            with pytest.raises(ConfigError, match=rf"^{key}\.weights: .*student\.safetensors was trained on classes "
                                                  r"\['bee', 'cat', 'dog'\] .* the data's classes are \['aaa_bee', "
                                                  r"'cat', 'dog'\] \(other classes\)"):
                build_experiment(parse_config(raw, base_dir=tmp_path))
    spec["facts"]["classes"] = ["0", "1", "2"]  # a run on numbered classes names nothing to compare
    (run / "student_spec.json").write_text(json.dumps(spec))
    raw["student"] = {"arch": "resnet8x4", "weights": str(run / "student.safetensors")}
    with pytest.raises(ConfigError, match=r"^student\.weights: (?!.*trained on classes)"):
        build_experiment(parse_config(raw, base_dir=tmp_path))  # the empty file itself is refused


# ------------------------------------------------------------------------------------------------ segmentation


def test_colour_coded_and_rgb_gray_masks(tmp_path):
    """Masks as annotation tools save them: a palette PNG, the same classes drawn in colours (CamVid-style; with
    ``data.mask_colors``, a colour may also be stored as the ignore value), and a gray mask saved as RGB."""
    from distill.core.batch import IGNORE_INDEX
    from distill.tasks.segmentation.data import load_segmentation_data

    classes = np.array([[0, 1, 2, 2], [1, 1, 0, 3]], dtype=np.uint8)  # 3: unlabelled (boundary) pixels
    colours = np.array([[0, 0, 0], [255, 0, 0], [0, 128, 0], [224, 224, 192]], dtype=np.uint8)
    for kind in ("pal", "rgb", "gray"):
        (tmp_path / kind / "images").mkdir(parents=True)
        (tmp_path / kind / "masks").mkdir()
        Image.fromarray(np.full((2, 4, 3), 90, dtype=np.uint8)).save(tmp_path / kind / "images" / "a.jpg")
    stored = np.where(classes == 3, 255, classes).astype(np.uint8)
    pal = Image.fromarray(stored, mode="L").convert("P")
    pal.save(tmp_path / "pal" / "masks" / "a.png")
    Image.fromarray(colours[classes]).save(tmp_path / "rgb" / "masks" / "a.png")
    Image.fromarray(np.repeat(stored[:, :, None], 3, 2)).save(tmp_path / "gray" / "masks" / "a.png")

    def masks(folder: str, **data) -> np.ndarray:
        raw = {"task": "semantic_segmentation", "student": {"arch": "seg_resnet_student"}, "methods": [{"name": "ce"}],
               "data": {"source": "folders", "train": folder, **data}}
        return load_segmentation_data(parse_config(raw, base_dir=tmp_path))[0].masks.numpy()[0]

    want = np.where(classes == 3, IGNORE_INDEX, classes.astype(np.int64))
    assert (masks("pal") == want).all() and (masks("gray") == want).all()
    coded = {"0,0,0": 0, "255,0,0": 1, "#008000": 2, "224,224,192": 255}
    assert (masks("rgb", mask_colors=coded) == want).all()
    with pytest.raises(ConfigError, match=r"mask a\.png is colour-coded .*data\.mask_colors"):
        masks("rgb")
    with pytest.raises(ConfigError, match=r"holds the colour 224,224,192 \(pixels: 1\), which data\.mask_colors does"):
        masks("rgb", mask_colors={k: v for k, v in coded.items() if v != 255})
    with pytest.raises(ConfigError, match=r"data\.mask_colors: .*colour '1,2': expected 'R,G,B'"):
        masks("rgb", mask_colors={"1,2": 0})


# ------------------------------------------------------------------------------------------------------ sentences


def test_headerless_tsv_with_class_names(tmp_path):
    """``label<TAB>text`` lines whose labels are class names (not integers): read, not taken for a header."""
    from distill.data.text import TextDataError, load_text_classification

    (tmp_path / "t.tsv").write_text("very positive\ta stirring , funny film\nnegative\tdull\tslow\n"
                                    "very positive\tgreat\n")
    got = load_text_classification(tmp_path / "t.tsv")
    assert got.classes == ["negative", "very positive"] and got.labels == [1, 0, 1]
    assert got.texts == ["a stirring , funny film", "dull\tslow", "great"]
    (tmp_path / "h.tsv").write_text("category\tcomment\npos\tgood\nneg\tbad\n")  # a header of other names: refused
    with pytest.raises(TextDataError, match=r"h\.tsv, line 1: a TSV file needs a header"):
        load_text_classification(tmp_path / "h.tsv")


def test_pandas_index_column_is_no_feature(tmp_path, capsys):
    """``DataFrame.to_csv`` writes the row index as a first, unnamed column: row numbers are no feature (a table
    sorted by class would hand the model its labels)."""
    pytest.importorskip("datasets")
    (tmp_path / "rows.csv").write_text(",a,b,label\n0,1.0,2.0,x\n1,3.0,4.0,y\n2,5.0,6.0,x\n")
    for fmt in ("auto", "csv"):
        loaded = load_vectors(tmp_path, train="rows.csv", format=fmt)
        assert loaded.train.tensors[0].tolist() == [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]
        assert "is not used as a feature" in capsys.readouterr().err
