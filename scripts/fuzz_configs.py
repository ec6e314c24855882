"""Mutate the YAML examples of the README, docs/*.md and configs/**/*.yaml and run each mutant through
``load_config`` and ``build_experiment`` (no training), in a worker process with a per-case timeout and a memory
cap, classifying every outcome:

- ``error``: a one-line :class:`distill.config.ConfigError` that names a key or a file (``KEY: ...``);
- ``unnamed``: a ConfigError of several lines or without a ``KEY:`` at its start;
- ``accepted``: the experiment was built (a bug when the mutation must be refused: ``accepted_bad``);
- ``traceback``: any other exception; ``crash``: the worker died (memory); ``hang``: the timeout passed.

The examples keep their structure; their data are pointed at small local files (the demo CIFAR archive, the SST
dev split, Cora, Cranfield, Tiny Shakespeare) so that a case builds in about a second. Usage::

    PYTHONPATH=src python scripts/fuzz_configs.py --n 800 --seed 0 [--json out.json] [--show traceback]

``tests/test_fuzz_configs.py`` runs a fixed-seed sample of it.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import multiprocessing as mp
import random
import re
import sys
import tempfile
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
#: config keys that name files or folders that must exist
PATH_KEYS = {"train", "eval", "text", "tokenizer", "train_jsonl", "eval_jsonl", "path", "cranfield", "docs",
             "queries", "qrels", "train_queries", "aspects", "weights", "scores"}
#: keys whose junk file content must be refused (model files and formats, not corpora)
FORMAT_KEYS = {"weights", "tokenizer", "aspects", "path", "cranfield", "scores"}
KEY_RE = re.compile(r"^[^\s:]+(?: \([^)]*\))?:")


@dataclass
class Case:
    name: str
    family: str
    text: str
    must_refuse: bool
    kind: str
    extra: dict[str, Any] = field(default_factory=dict)


# -- examples -----------------------------------------------------------------------------------------------------
def doc_examples() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for f in DOCUMENTS:
        for i, block in enumerate(re.findall(r"```yaml\n(.*?)```", f.read_text(), re.S)):
            raw = yaml.safe_load(block)
            if isinstance(raw, dict) and "methods" in raw:
                found.append((f"{f.relative_to(ROOT).as_posix()}#{i}", raw))
    return found


def config_examples() -> list[tuple[str, dict[str, Any]]]:
    from distill.config import load_raw

    out = []
    for f in sorted((ROOT / "configs").rglob("*.yaml")):
        if f.name.startswith("_") or f.parent.name == "continual" or "pipelines" in f.parts:
            continue  # stream and pipeline files are not experiment recipes (their own tests fuzz-check them)
        raw = load_raw(f)
        if "pipeline" in raw:  # a recipe read by its own runner (random teachers)
            continue
        out.append((f.relative_to(ROOT).as_posix(), raw))
    return out


def make_fixtures(tmp: Path) -> dict[str, Path]:
    """Small data files the examples are pointed at."""
    sst = SHARED / "data" / "sst" / "stsa.binary.dev"
    lines = sst.read_text().splitlines()
    texts = tmp / "texts.txt"
    texts.write_text("\n".join(line.split(" ", 1)[1] for line in lines[:200]) + "\n")
    qids = tmp / "train_qids.txt"
    qrels = [ln.split() for ln in (SHARED / "data" / "cranfield" / "cranqrel").read_text().splitlines() if ln.strip()]
    chosen = sorted({q[0] for q in qrels[:40]})[:5]
    qids.write_text("\n".join(chosen) + "\n")
    rng = random.Random(0)
    scores = tmp / "scores.tsv"
    rows = [f"{q} {d} {rng.random():.3f}" for q in chosen for d in range(1, 40)]
    scores.write_text("\n".join(rows) + "\n")
    junk = tmp / "junk.bin"
    junk.write_bytes(bytes(rng.randrange(256) for _ in range(4096)))
    notjson = tmp / "notjson.txt"
    notjson.write_text("this is not json {\n")
    lm = tmp / "lm"
    if not lm.exists():
        from tokenizers import Tokenizer, models, pre_tokenizers
        from transformers import PreTrainedTokenizerFast

        from distill.llm.models import small_llama

        words = ["<pad>", "<eos>", "<unk>", *sorted({w for ln in lines for w in ln.split()[1:]})[:300]]
        tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
        tk.pre_tokenizer = pre_tokenizers.Whitespace()
        tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
        tok.save_pretrained(lm / "tok")
        small_llama(len(words), hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32, max_positions=256,
                    eos_token_id=1, pad_token_id=0).save_pretrained(lm / "teacher")
        (lm / "input.txt").write_text(" ".join(ln.split(" ", 1)[1] for ln in lines[:300]))
    empty_dir = tmp / "empty_dir"
    empty_dir.mkdir(exist_ok=True)
    return {"dir": tmp, "lm": lm, "texts": texts, "qids": qids, "scores": scores, "junk": junk, "notjson": notjson,
            "empty_dir": empty_dir}


def teacher_weights(task: str, teacher: dict[str, Any], tmp: Path) -> Path:
    """A weights file of the example's teacher architecture (random values: the fuzzer never trains)."""
    from safetensors.torch import save_file

    opts = dict(teacher.get("options") or {})
    if task in ("text_classification", "image_classification"):
        from distill.models import build_model

        model = build_model(teacher["arch"], num_classes=2 if task == "text_classification" else 10, **opts)
    else:
        from distill.models.gnn import GRAPH_MODELS

        model = GRAPH_MODELS[teacher["arch"]](1433, 7, **opts)
    path = tmp / f"{task}_{teacher['arch']}.safetensors"
    if not path.exists():
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def runnable(raw: dict[str, Any], fx: dict[str, Path]) -> tuple[str, dict[str, Any]] | None:
    """The example with small local data; None if it cannot be made to run here."""
    raw = copy.deepcopy(raw)
    task = raw.get("task", "image_classification")
    d = raw.get("data") or {}
    if not isinstance(d, dict):
        return None
    t = raw.get("teacher")
    if isinstance(t, dict):
        t.pop("cache", None)
        if not t:
            raw.pop("teacher")
    if task == "image_classification":
        d.update(train="builtin:cifar10_demo.tar.gz", eval="builtin:cifar10_demo.tar.gz", train_per_class=3,
                 eval_per_class=2)
        d.pop("cache_dir", None)
    elif task == "text_classification":
        if d.get("aspects"):
            return None
        dev = str(SHARED / "data" / "sst" / "stsa.binary.dev")
        d.update(train=dev, eval=dev)
    elif task == "graph_node_classification":
        d["path"] = str(SHARED / "data" / "planetoid")
    elif task == "causal_lm":  # the example's GGUF model takes a minute to load: a tiny local one stands in
        d.update(tokenizer=str(fx["lm"] / "tok"), text=str(fx["lm"] / "input.txt"), train_blocks=8, eval_blocks=2)
        if isinstance(t, dict) and t.get("path"):
            t["path"] = str(fx["lm"] / "teacher")
    elif task == "embedding":
        d["train"] = str(fx["texts"])
    elif task == "ranking":
        d.update(cranfield=str(SHARED / "data" / "cranfield"), train_queries=str(fx["qids"]))
        if isinstance(t, dict) and "scores" in t:
            t["scores"] = str(fx["scores"])
    else:
        return None
    t = raw.get("teacher")
    if isinstance(t, dict) and t.get("weights") and not str(t["weights"]).startswith("builtin:"):
        t["weights"] = str(teacher_weights(task, t, fx["dir"]))  # the trained teacher of the example is not here
    raw["data"] = d
    train = raw.setdefault("train", {})
    train.update(progress=False)
    if task != "graph_node_classification":  # the small data sets hold a few batches of 4
        train["batch_size"] = 4
    return task, raw


# -- mutations ----------------------------------------------------------------------------------------------------
def leaves(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[tuple[Any, ...], Any]]:
    out = []
    if isinstance(node, dict):
        for k, v in node.items():
            out += leaves(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += leaves(v, (*path, i))
    if path:
        out.append((path, node))
    return out


def mappings(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [path] if isinstance(node, dict) else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += mappings(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += mappings(v, (*path, i))
    return out


def get(node: Any, path: tuple[Any, ...]) -> Any:
    for p in path:
        node = node[p]
    return node


def dump(raw: dict[str, Any]) -> str:
    return yaml.safe_dump(raw, sort_keys=False, default_flow_style=None, width=1000)


def misspell(key: str, rng: random.Random) -> str:
    if len(key) < 3:
        return key + "x"
    i = rng.randrange(len(key) - 1)
    return key[:i] + key[i + 1] + key[i] + key[i + 2:] if key[i] != key[i + 1] else key + "s"


def mutate(family: str, raw: dict[str, Any], rng: random.Random, fx: dict[str, Path]) -> Case:
    kind = rng.choice(["unknown_key", "misspell", "wrong_type", "number", "nonfinite", "missing", "bad_path",
                       "duplicate", "alias", "structure", "options", "special"])
    r = copy.deepcopy(raw)
    lv = [(p, v) for p, v in leaves(r) if isinstance(p[-1], str)]
    if kind == "unknown_key":
        where = rng.choice(mappings(r))
        key = rng.choice(["colour", "nu_mlayers", "tempreature", "lr_rate", "extra"])
        get(r, where)[key] = 1
        return Case(f"{'.'.join(map(str, where))}.{key} added", family, dump(r), True, kind)
    if kind == "misspell":
        path, _ = rng.choice(lv)
        parent = get(r, path[:-1])
        new = misspell(path[-1], rng)
        if new == path[-1] or new in parent:
            new = path[-1] + "_x"
        parent[new] = parent.pop(path[-1])
        must = not (path[:1] == ("methods",) and path[-1] == "label")
        return Case(f"{'.'.join(map(str, path))} -> {new}", family, dump(r), must, kind)
    if kind == "wrong_type":
        path, v = rng.choice(lv)
        if isinstance(v, (dict, list)):
            new: Any = "abc"
        elif isinstance(v, bool):
            new = rng.choice(["maybe", [1], {"a": 1}])
        elif isinstance(v, (int, float)):
            new = rng.choice(["abc", [1, 2], {"a": 1}])
        else:
            new = rng.choice([[1, 2], {"a": 1}, 3.5])
        get(r, path[:-1])[path[-1]] = new
        return Case(f"{'.'.join(map(str, path))} = {new!r}", family, dump(r), True, kind)
    if kind in ("number", "nonfinite"):
        nums = [(p, v) for p, v in leaves(r) if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if not nums:
            return mutate(family, raw, rng, fx)
        path, v = rng.choice(nums)
        new = (rng.choice([math.nan, math.inf, -math.inf]) if kind == "nonfinite"
               else rng.choice([-1, 0, 1e30, -1e30, 10**12, 2.5, 1e-30]))
        get(r, path[:-1])[path[-1]] = new
        must = kind == "nonfinite" or (isinstance(v, int) and new in (1e30, 10**12, 2.5, 1e-30, -1e30))
        if path[-1] in ("seed", "subset_seed") and new in (-1, 0, 10**12):
            must = False
        if "milestones" in path and new in (2.5, 1e-30):  # epochs, fractional ones allowed
            must = False
        return Case(f"{'.'.join(map(str, path))} = {new!r}", family, dump(r), must, kind)
    if kind == "missing":
        path, _ = rng.choice(lv)
        del get(r, path[:-1])[path[-1]]
        must = path == ("teacher", "weights") and "arch" in r.get("teacher", {})
        return Case(f"{'.'.join(map(str, path))} deleted", family, dump(r), must, kind)
    if kind == "bad_path":
        paths = [(p, v) for p, v in lv if p[-1] in PATH_KEYS and isinstance(v, str) and p[0] != "methods"]
        if not paths:
            return mutate(family, raw, rng, fx)
        path, _ = rng.choice(paths)
        choice = rng.choice(["dir", "missing", "junk", "traversal", "notjson"])
        new = {"dir": str(fx["empty_dir"]), "missing": str(fx["empty_dir"] / "nothing.here"), "junk": str(fx["junk"]),
               "traversal": "builtin:../../../../../../etc/passwd", "notjson": str(fx["notjson"])}[choice]
        get(r, path[:-1])[path[-1]] = new
        must = choice in ("dir", "missing", "traversal") or path[-1] in FORMAT_KEYS
        return Case(f"{'.'.join(map(str, path))} = {choice}", family, dump(r), must, kind)
    if kind == "duplicate":
        text = dump(r)
        choice = rng.choice([k for k in ("train", "methods", "data", "seed") if k in r] or ["methods"])
        extra = {"train": "train:\n  epochs: 200\n", "methods": "methods:\n- {name: ce}\n",
                 "data": "data: {train: x}\n", "seed": "seed: 3\n"}[choice]
        return Case(f"duplicate {choice}", family, text + extra, True, kind)
    if kind == "alias":
        levels = ["&a [x, x, x, x, x, x, x, x, x]"]
        levels += [f"&{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]" for i in range(8)]
        r.setdefault("student", {}).setdefault("options", {})["bomb"] = "BOMB"
        text = dump(r).replace("bomb: BOMB", f"bomb: [{', '.join(levels)}]")
        return Case("alias bomb", family, text, True, kind)
    if kind == "structure":
        choice = rng.choice(["list_top", "scalar_top", "methods_dict", "student_list", "train_scalar", "big"])
        if choice == "list_top":
            return Case(choice, family, "- 1\n- 2\n", True, kind)
        if choice == "scalar_top":
            return Case(choice, family, "just a string\n", True, kind)
        if choice == "big":
            return Case(choice, family, dump(r) + ("# padding\n" * 200_000), True, kind)
        if choice == "methods_dict":
            r["methods"] = {"name": "kd"}
        elif choice == "student_list":
            r["student"] = ["resnet20"]
        else:
            r["train"] = 5
        return Case(choice, family, dump(r), True, kind)
    if kind == "options":
        models = [k for k in ("student", "teacher") if isinstance(r.get(k), dict) and r[k].get("arch")]
        if not models:
            return mutate(family, raw, rng, fx)
        key = rng.choice(models)
        opts = r[key].setdefault("options", {})
        name, value = rng.choice([("nu_mlayers", 2), ("num_layers", 2.5), ("num_layers", -3), ("hidden", 0),
                                  ("hidden", 10**9), ("hidden_size", 10**9), ("layers", 1.5), ("width", 0),
                                  ("dropout", math.nan), ("embed_dim", 10**8), ("pretrained", "yes"),
                                  ("freeze_embeddings", "sure"), ("projection_dim", -5), ("depth", 10**7)])
        opts[name] = value
        return Case(f"{key}.options.{name} = {value!r}", family, dump(r), True, kind)
    # special: the named cases
    choice = rng.choice(["num_classes", "fp16", "no_weights", "copies", "bool_string", "neg_weight"])
    if choice == "num_classes" and isinstance(r.get("student"), dict) and r["student"].get("arch") and family in (
            "image_classification", "text_classification", "graph_node_classification"):
        r["student"]["num_classes"] = 5 if family != "text_classification" else 3
        return Case("student.num_classes mismatch", family, dump(r), True, choice)
    if choice == "fp16":
        r.setdefault("train", {})["mixed_precision"] = "fp16"
        import torch

        return Case("train.mixed_precision fp16", family, dump(r), not torch.cuda.is_available(), choice)
    if choice == "no_weights" and isinstance(r.get("teacher"), dict) and r["teacher"].get("arch"):
        r["teacher"].pop("weights", None)
        return Case("teacher.weights removed", family, dump(r), True, choice)
    if choice == "copies" and family == "text_classification":
        r["data"]["augment"] = {"copies": 1e30}
        return Case("data.augment.copies = 1e30", family, dump(r), True, choice)
    if choice == "bool_string":
        r.setdefault("train", {})["nesterov"] = "perhaps"
        return Case("train.nesterov = 'perhaps'", family, dump(r), True, choice)
    r["methods"][0]["weight"] = rng.choice([math.nan, math.inf])
    return Case("methods[0].weight non-finite", family, dump(r), True, "nonfinite")


def make_cases(n: int, seed: int, tmp: Path) -> list[Case]:
    fx = make_fixtures(tmp)
    bases: dict[str, list[dict[str, Any]]] = {}
    for _, raw in doc_examples() + config_examples():
        got = runnable(raw, fx)
        if got is not None:
            bases.setdefault(got[0], []).append(got[1])
    rng = random.Random(seed)
    families = sorted(bases)
    cases = []
    for i in range(n):
        family = families[i % len(families)]
        cases.append(mutate(family, rng.choice(bases[family]), rng, fx))
    return cases


# -- running ------------------------------------------------------------------------------------------------------
def run_case(text: str, tmp: str) -> tuple[str, str]:
    from distill.config import ConfigError, load_config

    path = Path(tmp) / "case.yaml"
    path.write_text(text)
    try:  # one worker runs many cases: forget the accelerator state (mixed precision) of the last one
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state(True)
    except (ImportError, AttributeError):
        pass
    try:
        cfg = load_config(path)
        cfg.model_dump_json()  # what ``distill train`` writes to config.json
        from distill.experiment import build_experiment

        build_experiment(cfg, Path(tmp) / "run")
    except ConfigError as e:
        msg = str(e)
        named = "\n" not in msg and bool(KEY_RE.match(msg))
        return ("error" if named else "unnamed"), msg
    except Exception as e:  # noqa: BLE001 - classifying is the point
        return "traceback", f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=-3)}"
    return "accepted", ""


def _worker(conn: Any, mem_bytes: int) -> None:
    import resource

    import torch

    torch.set_num_threads(1)
    if mem_bytes:
        resource.setrlimit(resource.RLIMIT_AS, (mem_bytes, mem_bytes))
    with tempfile.TemporaryDirectory() as tmp:
        while True:
            text = conn.recv()
            if text is None:
                return
            conn.send(run_case(text, tmp))


class Runner:
    """One forked worker process, restarted after a hang or a crash."""

    def __init__(self, timeout: float, mem_gb: float) -> None:
        self.timeout = timeout
        self.mem = int(mem_gb * 2**30)
        self.proc: Any = None

    def start(self) -> None:
        ctx = mp.get_context("fork")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker, args=(child, self.mem), daemon=True)
        self.proc.start()

    def run(self, text: str) -> tuple[str, str]:
        if self.proc is None or not self.proc.is_alive():
            self.start()
        self.conn.send(text)
        if not self.conn.poll(self.timeout):
            self.stop()
            return "hang", f"no answer in {self.timeout:.0f} s"
        try:
            return self.conn.recv()
        except EOFError:
            self.stop()
            return "crash", "the worker died"

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.join()
            self.proc = None

    def close(self) -> None:
        if self.proc is not None and self.proc.is_alive():
            self.conn.send(None)
            self.proc.join(5)
        self.stop()


def fuzz(n: int, seed: int, timeout: float = 60.0, mem_gb: float = 8.0, log: Any = None,
         start: int = 0) -> list[dict[str, Any]]:
    import distill.config  # noqa: F401  (imported before forking, so the worker starts warm)
    import distill.experiment  # noqa: F401

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        cases = make_cases(n, seed, Path(tmp))
        runner = Runner(timeout, mem_gb)
        try:
            for i, case in enumerate(cases):
                if i < start:
                    continue
                outcome, msg = runner.run(case.text)
                if outcome == "accepted" and case.must_refuse:
                    outcome = "accepted_bad"
                results.append({"i": i, "family": case.family, "kind": case.kind, "case": case.name,
                                "outcome": outcome, "message": msg})
                if log is not None:
                    print(f"{i:4d} {outcome:12s} {case.family:26s} {case.name}: {msg.splitlines()[0] if msg else ''}"
                          [:240], file=log, flush=True)
        finally:
            runner.close()
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=800)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--mem-gb", type=float, default=8.0)
    p.add_argument("--start", type=int, default=0, help="skip the first cases (to split a run over processes)")
    p.add_argument("--json", type=Path)
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    results = fuzz(args.n, args.seed, args.timeout, args.mem_gb, None if args.quiet else sys.stdout, args.start)
    counts = Counter(r["outcome"] for r in results)
    print(json.dumps(dict(sorted(counts.items()))))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    bad = counts["traceback"] + counts["crash"] + counts["hang"] + counts["accepted_bad"] + counts["unnamed"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
