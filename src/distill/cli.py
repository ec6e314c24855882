"""The ``distill`` command line: train, eval, methods, demo, cache, export, report, pipeline, stream."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any


def _fail(message: str) -> int:
    print(f"config error: {message}", file=sys.stderr)
    return 2


def _error(message: object) -> int:
    """One line on stderr, exit status 2 (refused files, missing files, bad values: never a traceback)."""
    print(f"error: {message}", file=sys.stderr)
    return 2


def cmd_train(args: argparse.Namespace) -> int:
    from distill.config import ConfigError, load_config

    try:
        cfg = load_config(args.config, args.set)
        from distill.experiment import build_experiment

        exp = build_experiment(cfg, args.output_dir)
    except ConfigError as e:
        return _fail(str(e))
    except (FileNotFoundError, ValueError) as e:  # includes UnsafeFileError (a refused file: "<path>: <reason>")
        return _error(e)
    from distill.core.safe_pickle import UnsafeFileError
    from distill.data.image_tables import DataReadError
    from distill.train.checkpoint import CheckpointError
    from distill.train.lock import RunLock, RunLockedError
    from distill.train.runlog import print_teacher_evaluation
    from distill.train.trainer import NonFiniteError, ResumeMismatchError

    run_dir = exp.trainer.run_dir
    main = exp.trainer.accelerator.is_main_process  # several processes: rank 0 locks, writes and reports
    try:
        with RunLock(run_dir, enabled=main):  # before anything is written: a second run on the folder changes nothing
            teacher_metrics = None
            fresh = args.restart or not any((run_dir / "checkpoints").glob("step-*"))  # no check, no warning twice
            if main and fresh:  # once, before the first epoch (a resumed run printed it when it started)
                teacher_metrics = print_teacher_evaluation(exp)
            summary = exp.fit(resume=not args.restart, teacher_metrics=teacher_metrics)  # writes distill_config.json
    except RunLockedError as e:
        return _error(e)
    except (ResumeMismatchError, UnsafeFileError, CheckpointError) as e:  # a damaged or tampered checkpoint
        return _error(e)
    except NonFiniteError as e:  # a NaN/inf loss term, parameter or buffer: the last good checkpoint stays
        return _error(non_finite_message(e, run_dir))
    except DataReadError as e:  # a streamed image that cannot be decoded: the last checkpoint stays
        return _error(e)
    final = summary.get("final", {})
    if main:
        print(json.dumps({"run_dir": str(run_dir), "final": final,
                          "wall_time_s": round(summary["wall_time_s"], 1)}))
    return 0


def non_finite_message(e: BaseException, run_dir: Path) -> str:
    """The trainer's non-finite stop line, without its "last good checkpoint is kept" when none was written."""
    message = str(e)
    if not any((run_dir / "checkpoints").glob("step-*")):
        message = message.replace("the last good checkpoint is kept", "no checkpoint was written yet")
    return message


def cmd_eval(args: argparse.Namespace) -> int:
    from distill.config import ConfigError, load_config
    from distill.experiment import build_experiment
    from distill.train.progress import progress_enabled

    try:
        cfg = load_config(args.config, args.set)
        shown = cfg.train.progress  # train.progress: false switches the evaluation's bars off too (docs/feedback.md)
        cfg.train.progress = False
        exp = build_experiment(cfg, args.output_dir)
    except ConfigError as e:
        return _fail(str(e))
    except (FileNotFoundError, ValueError) as e:  # includes UnsafeFileError
        return _error(e)
    with progress_enabled(shown, cfg.train.progress_every):
        return _evaluate(args, cfg, exp)


def _evaluate(args: argparse.Namespace, cfg: Any, exp: Any) -> int:
    import torch

    from distill.core.safe_pickle import UnsafeFileError
    from distill.experiment import evaluate_model
    from distill.models.weights import load_weights_into
    from distill.train.runlog import evaluate_teacher

    if exp.eval_data is None:
        return _fail("data.eval: required to evaluate")
    weights = Path(args.weights) if args.weights else exp.trainer.run_dir / "student.safetensors"
    results = {}
    if weights.exists():
        try:
            load_weights_into(exp.student, weights)
        except UnsafeFileError as e:
            return _error(f"--weights: {e}")
        model = exp.student
        method_weights = weights.with_name("methods.safetensors")
        if method_weights.exists():  # heads or combiners that a method's inference wrapper needs (DHO, LELP)
            from distill.train.checkpoint import load_weights

            exp.trainer.prepare_methods()
            try:
                exp.methods.load_state_dict(load_weights(method_weights))
            except UnsafeFileError as e:
                return _error(f"--weights (methods.safetensors beside it): {e}")
            model = exp.module.inference_model()
        results["student"] = evaluate_model(model, exp.task, exp.eval_data)
    teacher = exp.live_teacher if exp.live_teacher is not None else exp.teacher  # a cache has no model to run
    if not weights.exists():
        if teacher is None:
            return _fail(f"--weights: no student weights at {weights} and no teacher to evaluate (train first, or "
                         "give --weights or the run's --output-dir)")
        print(f"note: no student weights at {weights}; evaluating the teacher only", file=sys.stderr)
    device = "cuda" if torch.cuda.is_available() and not cfg.train.cpu else "cpu"
    teacher_metrics = evaluate_teacher(teacher, exp.task, exp.eval_data, cfg.train.eval_batch_size, device) \
        if teacher is not None else None
    if teacher_metrics is not None:
        results["teacher"] = teacher_metrics
    elif teacher is not None:
        print(f"note: the teacher ({type(teacher).__name__}) is not a model run on the eval inputs; not evaluated",
              file=sys.stderr)
    print(json.dumps(results, indent=2))
    return 0


def method_options(cls: type) -> dict[str, str]:
    """The options of a method class (its constructor's keyword arguments) with their defaults, as text."""
    import inspect

    out = {}
    for name, param in inspect.signature(cls.__init__).parameters.items():
        if name == "self" or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        out[name] = "required" if param.default is inspect.Parameter.empty else repr(param.default)
    return out


def cmd_methods(args: argparse.Namespace) -> int:
    from distill.core.family import FAMILIES
    from distill.methods import METHODS

    rows = []
    for e in METHODS:
        tasks = e.obj.tasks
        rows.append({**e.as_dict(), "tasks": sorted(tasks) if tasks is not None else None,
                     "pipeline": getattr(e.obj, "pipeline", None)})
    if args.family:
        families = sorted({r["family"] for r in rows})
        if args.family not in families:
            print(f"--family: unknown family {args.family!r}; choose from {', '.join(families)}", file=sys.stderr)
            return 2
        rows = [r for r in rows if r["family"] == args.family]
    if args.task:
        if args.task not in FAMILIES:
            print(f"--task: unknown task {args.task!r}; allowed: {', '.join(FAMILIES.names())}", file=sys.stderr)
            return 2
        from distill.config import applicability_error

        rows = [{**r, "options": method_options(METHODS.get(r["name"]))} for r in rows
                if applicability_error(r["name"], args.task) is None]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:  # piped or redirected: rich would assume 80 columns and fold every title
        console = Console(width=240)
    if args.task:
        table = Table(title=f"methods for task {args.task} ({len(rows)})")
        for col in ("name", "family", "options (default)", "summary"):
            table.add_column(col, overflow="fold", no_wrap=col == "name")
        for r in rows:
            opts = ", ".join(f"{k}={v}" for k, v in r["options"].items()) or "-"
            table.add_row(r["name"], r["family"], opts, _pipeline_note(r) + r["summary"])
        console.print(table)
        return 0
    table = Table(title=f"distill methods ({len(rows)})")
    for col in ("name", "family", "paper", "year", "arXiv", "code", "file"):
        table.add_column(col, overflow="fold", no_wrap=col in ("name", "year", "arXiv", "file"))
    for r in rows:
        p = r["provenance"] or {}
        repo = (p.get("repo") or "").removeprefix("https://github.com/")
        paper = _pipeline_note(r) + (p.get("paper") or r["summary"])
        table.add_row(r["name"], r["family"], paper, str(p.get("year") or ""),
                      p.get("arxiv") or "", repo, r["file"])
    console.print(table)
    return 0


def _pipeline_note(row: dict) -> str:
    """A method trained only by a pipeline (not from a methods list) says so before its summary."""
    return f"(pipeline: {row['pipeline']}; not for a methods list) " if row.get("pipeline") else ""


def cmd_demo(args: argparse.Namespace) -> int:
    from distill.demo import run_demo

    run_demo(Path(args.out), epochs=args.epochs, seed=args.seed)
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    """``distill cache build CONFIG`` | ``verify CONFIG_OR_DIR`` | ``info DIR``."""
    from distill.cache import CacheError, TeacherCache, cache_info
    from distill.config import ConfigError, load_config

    if args.action == "info":
        try:
            print(json.dumps(cache_info(args.target), indent=2))
        except CacheError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        return 0
    target = Path(args.target)
    try:
        if args.action == "verify" and target.is_dir():  # checksums only: no config to compare fingerprints with
            cache = TeacherCache(target)
            print(json.dumps({"ok": True, "checked": "checksums", **_brief(cache.info())}))
            return 0
        cfg = load_config(target, args.set)
        cache_cfg = getattr(cfg.teacher, "cache", None) if cfg.teacher is not None else None
        mixture = getattr(cfg.teacher, "mixture", None) if cfg.teacher is not None else None
        members = [m for m in mixture.members if m.cache is not None] if mixture is not None else []
        if cache_cfg is None and not members:
            return _fail("teacher.cache: required key is missing (where to build the cache and what to store)")
        if args.action == "build":
            from distill.experiment import check_cache_features

            check_cache_features(cfg)  # a cache without the taps the methods read would be refused when training
        from dataclasses import replace

        def settle(c: Any) -> Any:
            if args.action == "build":
                return replace(c, build="always" if args.force else "if_missing")
            return replace(c, build="never", verify=True)

        if args.action == "build":
            cfg.train.progress = True  # asked for a long step: show it even where training runs quietly
        if cache_cfg is not None:
            cfg.teacher.cache = settle(cache_cfg)
        for m in members:  # a mixture's member caches (teacher.mixture.members[i].cache)
            m.cache = settle(m.cache)
        from distill.experiment import build_parts, student_builder

        # data, task and teacher, no trainer; the student is built (not trained) so that the random numbers a
        # teacher without weights draws are those of `distill train`
        parts = build_parts(cfg, need_teacher=True, student=student_builder(cfg))
    except ConfigError as e:
        return _fail(str(e))
    except CacheError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as e:  # includes UnsafeFileError (a refused file)
        return _error(e)
    checked = "checksums and fingerprint" if args.action == "verify" else "built"
    if cache_cfg is None:  # member caches only: one line of facts per cached member
        cached = [{"member": i, "name": mixture.members[i].name, **_brief(t.info())}
                  for i, t in enumerate(parts.teacher.members) if mixture.members[i].cache is not None]
        print(json.dumps({"ok": True, "checked": checked, "members": cached}))
        return 0
    print(json.dumps({"ok": True, "checked": checked, **_brief(parts.teacher.info())}))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """``distill export RUN --format F [--out DIR]``: the run's student in another format, with a model card."""
    from distill.config import ConfigError
    from distill.core.safe_pickle import UnsafeFileError
    from distill.export import export_run

    try:
        out = export_run(args.run, args.format, args.out, args.weights)
    except ConfigError as e:
        return _fail(str(e))
    except (FileNotFoundError, ValueError, UnsafeFileError) as e:  # ExportError, RunFolderError: one line
        return _error(e)
    print(json.dumps({"format": args.format, "out": str(out),
                      "files": sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())}))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """``distill report RUN [RUN ...] --out report.html``: one self-contained HTML page comparing runs."""
    from distill.export.run import RunFolderError
    from distill.report.html import write_report

    try:
        out = write_report(args.runs, args.out, title=args.title)
    except (FileNotFoundError, RunFolderError) as e:
        return _error(e)
    print(json.dumps({"report": str(out), "runs": len(args.runs), "bytes": out.stat().st_size}))
    return 0


def cmd_pipeline(args: argparse.Namespace) -> int:
    """``distill pipeline CONFIG [--rebuild STAGE]``: run a pipeline's stages (docs/pipelines.md)."""
    from distill.config import ConfigError
    from distill.pipelines.pipeline import PipelineError, load_pipeline, run_pipeline

    try:
        pipe = load_pipeline(args.config, args.set)
        report = run_pipeline(pipe, rebuild=args.rebuild)
    except ConfigError as e:
        return _fail(str(e))
    except (PipelineError, FileNotFoundError, ValueError) as e:  # a stale or damaged artefact: the keys named
        return _error(e)
    print(json.dumps({"output_dir": str(pipe.output_dir),
                      "stages": {r["stage"]: r["status"] for r in report["stages"]}}))
    return 0


def cmd_stream(args: argparse.Namespace) -> int:
    """``distill stream CONFIG [--restart] [--set KEY=VALUE]``: a continual or domain-shift run, task after task
    (the same as ``python -m distill.streams``)."""
    from distill.streams.__main__ import main as stream_main

    return stream_main([args.config, *(["--restart"] if args.restart else []),
                        *[f"--set={a}" for a in args.set]])


def _brief(info: dict) -> dict:
    return {k: info[k] for k in ("path", "examples", "views", "bytes")} | {"meta": info["meta"]}


def _plugin_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                   help="import this module first (installed or on PYTHONPATH) so that the models and methods it "
                        "registers can be named in the config; repeatable")


def load_plugins(modules: list[str]) -> None:
    """Installed packages' entry points (``distill.families``, ``distill.models``, ``distill.methods``), then each
    ``--plugin`` module, before any config is read."""
    from distill.core.family import FAMILIES
    from distill.plugins import import_plugin

    FAMILIES.names()
    for module in modules:
        import_plugin(module)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="distill", description="Knowledge distillation: any teacher, any student.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a student from a YAML experiment file (resumes if a checkpoint exists)")
    p.add_argument("config")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--output-dir", default=None)
    p.add_argument("--restart", action="store_true", help="start over: remove the run folder's checkpoints first")
    _plugin_flag(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a trained student (and the teacher) on the config's eval data")
    p.add_argument("config")
    p.add_argument("--weights", default=None, help="student weights (default: RUN_DIR/student.safetensors)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--output-dir", default=None)
    _plugin_flag(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("methods", help="list the method catalogue with provenance")
    p.add_argument("--json", action="store_true")
    p.add_argument("--family", default=None, help="only this family (e.g. logits, features, relations)")
    p.add_argument("--task", default=None, help="only the methods that apply to this task (e.g. ranking), with "
                                                "their options and defaults")
    _plugin_flag(p)
    p.set_defaults(func=cmd_methods)

    p = sub.add_parser("demo", help="distil a pretrained ResNet-56 into a ResNet-20 on shipped CIFAR-10 images "
                                    "(a few CPU minutes)")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("cache", help="teacher caches: build one from a YAML experiment (teacher.cache), verify, info")
    p.add_argument("action", choices=["build", "verify", "info"])
    p.add_argument("target", help="build: the experiment YAML; verify: the YAML (checksums and fingerprint) or "
                                  "the cache directory (checksums only); info: the cache directory")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--force", action="store_true", help="build: rebuild even if a cache exists (stale or not)")
    p.add_argument("--output-dir", default=None)
    _plugin_flag(p)
    p.set_defaults(func=cmd_cache)

    from distill.export import FORMATS

    p = sub.add_parser("export", help="a run's student as a Hugging Face / sentence-transformers folder, safetensors "
                                      "+ JSON, or ONNX, with a model card")
    p.add_argument("run", help="the run folder (output_dir of distill train)")
    p.add_argument("--format", required=True, choices=FORMATS, metavar="{" + ",".join(FORMATS) + "}")
    p.add_argument("--out", default=None, help="output folder (default: RUN/export-FORMAT)")
    p.add_argument("--weights", default=None, help="student weights (default: RUN/student.safetensors; e.g. "
                                                    "RUN/best/student.safetensors)")
    _plugin_flag(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("report", help="one self-contained HTML page: configs, final metrics and curves of runs")
    p.add_argument("runs", nargs="+", help="run folders")
    p.add_argument("--out", default="report.html")
    p.add_argument("--title", default="distill report")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("pipeline", help="run a pipeline of stages (training runs, selections, searches) from a YAML "
                                        "file; resumes, skips completed stages, refuses stale artefacts")
    p.add_argument("config")
    p.add_argument("--rebuild", action="append", default=[], metavar="STAGE",
                   help="rebuild this stage (and every stage after it that uses it) even if it is stored; repeatable")
    p.add_argument("--set", action="append", default=[], metavar="STAGE.KEY=VALUE",
                   help="override a stage's option (or a top-level key such as seed=1)")
    p.set_defaults(func=cmd_pipeline)

    p = sub.add_parser("stream", help="a continual or domain-shift run from a stream file (configs/continual/): "
                                      "task after task, the setting's metrics after each, resumable")
    p.add_argument("config")
    p.add_argument("--restart", action="store_true", help="start over instead of resuming")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.set_defaults(func=cmd_stream)
    return parser


def line_buffered_logs() -> None:
    """Off a terminal (``nohup``, SLURM, CI, a pipe) stdout and stderr write every line as it is printed, so a log
    file shows the run as it goes instead of in blocks (or only at the end)."""
    for stream in (sys.stdout, sys.stderr):
        isatty = getattr(stream, "isatty", None)
        reconfigure = getattr(stream, "reconfigure", None)
        if callable(isatty) and callable(reconfigure) and not isatty():
            try:
                reconfigure(line_buffering=True)
            except (ValueError, OSError):  # a closed or detached stream: nothing to buffer
                pass


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    line_buffered_logs()
    args = build_parser().parse_args(argv)
    if hasattr(args, "plugin"):
        from distill.plugins import PluginError

        try:
            load_plugins(args.plugin)
        except PluginError as e:
            return _error(e)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
