"""The data-generating LLM rows are pipeline stage kinds, not losses: rationale KD (row 20: ``teacher_rationales``,
``rationale_subset``), PGKD (row 40: ``pgkd``, ``unguided_generate``) and symbolic KD (row 43:
``symbolic_generate``, ``critic_filter``). Each of ``STAGE_EXAMPLES`` (stages, not methods: the methods' examples
are ``YAML_EXAMPLES``) is one stage of a pipeline file; it validates, and a bad key or value is refused with its
place named."""

from __future__ import annotations

import pytest
import yaml

from distill.config import ConfigError
from distill.pipelines.pipeline import parse_pipeline
from distill.pipelines.stage import STAGE_KINDS

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
STAGE_EXAMPLES = {
    "teacher_rationales": f"{{name: corpus, kind: teacher_rationales, options: {{teacher: {GGUF}, "
                          "data: stsa.binary.train, sentences: 60, max_tokens: 32}}",
    "rationale_subset": "{name: sub, kind: rationale_subset, inputs: {corpus: corpus}, options: {n: 30, rule: margin}}",
    "pgkd": f"{{name: pgkd, kind: pgkd, options: {{teacher: {GGUF}, data: stsa.fine.train, class_names: [a, b, c], "
            "max_steps: 10, patience: 3, per_class: 10}}",
    "unguided_generate": f"{{name: unguided, kind: unguided_generate, inputs: {{pgkd: pgkd}}, options: "
                         f"{{teacher: {GGUF}, data: stsa.fine.train, class_names: [a, b, c]}}}}",
    "symbolic_generate": f"{{name: generate, kind: symbolic_generate, options: {{teacher: {GGUF}, "
                         "data: stsa.binary.train, candidates: 100, shots: 5, top_p: 0.9}}",
    "critic_filter": "{name: critic, kind: critic_filter, inputs: {candidates: generate}, "
                     "options: {data: stsa.binary.train, target_recalls: [0.8, 0.5]}}",
}
ORDER = ["teacher_rationales", "rationale_subset", "pgkd", "unguided_generate", "symbolic_generate", "critic_filter"]


def pipeline(*stages):
    return {"output_dir": "runs/pipelines/x", "seed": 0, "stages": list(stages)}


def test_every_example_validates_as_one_pipeline():
    assert set(STAGE_EXAMPLES) == set(ORDER) and set(ORDER) <= set(STAGE_KINDS)
    p = parse_pipeline(pipeline(*[yaml.safe_load(STAGE_EXAMPLES[k]) for k in ORDER]))
    assert p.options["sub"].rule == "margin" and p.options["pgkd"].patience == 3
    assert p.options["critic"].target_recalls == [0.8, 0.5]


@pytest.mark.parametrize("kind,key,value,match", [
    ("teacher_rationales", "sentencs", 5, "stages[0].options.sentencs"),
    ("rationale_subset", "rule", "best", "stages[1].options.rule"),
    ("pgkd", "patience", 0, "stages[0].options.patience"),
    ("symbolic_generate", "top_p", 1.5, "stages[0].options.top_p"),
])
def test_bad_options_are_refused_naming_the_key(kind, key, value, match):
    stages = [yaml.safe_load(STAGE_EXAMPLES[k]) for k in ORDER[:2]] if kind == "rationale_subset" else \
        [yaml.safe_load(STAGE_EXAMPLES[kind])]
    stages[-1]["options"][key] = value
    with pytest.raises(ConfigError, match=match.replace("[", r"\[").replace("]", r"\]")):
        parse_pipeline(pipeline(*stages))


def test_a_stage_needs_its_input():
    with pytest.raises(ConfigError, match="inputs.candidates"):
        st = yaml.safe_load(STAGE_EXAMPLES["critic_filter"])
        del st["inputs"]
        parse_pipeline(pipeline(st))
