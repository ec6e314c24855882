"""``python -m distill.streams CONFIG.yaml [--restart] [--set key=value ...]``: run a stream config (continual,
domain-shift or novel-class run), resuming from its newest checkpoint unless ``--restart``; prints the metrics after
each task as a JSON line as soon as the task is done (a resumed run's earlier tasks first)."""

from __future__ import annotations

import argparse
import json
import sys

from distill.config import set_override
from distill.core.errors import ConfigError


def main(argv: list[str] | None = None) -> int:
    from distill.config import read_yaml
    from distill.streams.runner import build_runner
    from distill.streams.section import parse_stream_config
    from distill.train.checkpoint import CheckpointError
    from distill.train.lock import RunLock, RunLockedError
    from distill.train.trainer import ResumeMismatchError

    p = argparse.ArgumentParser(prog="python -m distill.streams")
    p.add_argument("config")
    p.add_argument("--restart", action="store_true", help="start over instead of resuming")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    args = p.parse_args(argv)
    try:
        raw = read_yaml(args.config)
        for assignment in args.set:
            set_override(raw, assignment)
        cfg = parse_stream_config(raw)
        runner = build_runner(cfg)  # the data and what only it can refuse (a class it lacks, an image size)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    try:
        with RunLock(runner.output_dir):  # a second run on the same folder changes nothing
            runner.run(resume=not args.restart, on_task=lambda row: print(json.dumps(row), flush=True))
    except (RunLockedError, ResumeMismatchError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
