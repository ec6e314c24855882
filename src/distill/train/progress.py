"""Progress of the long steps of a run (training, a teacher-cache build, a teacher pass over the data, generation,
augmentation), on stderr so that stdout keeps only results.

On a terminal it is a rich progress bar with the elapsed time and an ETA. When stderr is not a terminal (``nohup``,
SLURM, CI, a pipe) a bar would be redrawn into the log or printed only at the end, so plain lines are written
instead, at most one every ``every`` seconds, plus the last one::

    cache build: 1200/5000 (24%), 35 s elapsed, ETA 1m51s

:func:`progress_enabled` switches every bar of a block of code off or on (the experiment builder follows
``train.progress``); a loop asks for its bar with :class:`Progress`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TextIO, TypeVar

T = TypeVar("T")

#: seconds between two plain progress lines when stderr is not a terminal
DEFAULT_EVERY = 10.0
_ENABLED: ContextVar[bool] = ContextVar("distill_progress", default=True)
_EVERY: ContextVar[float] = ContextVar("distill_progress_every", default=DEFAULT_EVERY)
#: the bars drawn now: a terminal shows one at a time, so a step inside another's (an evaluation's teacher
#: embeddings during training) stays silent
_LIVE: list[Progress] = []


@contextmanager
def progress_enabled(enabled: bool, every: float | None = None) -> Iterator[None]:
    """Within the block, bars are shown (``enabled``) or not, and plain lines are ``every`` seconds apart."""
    token = _ENABLED.set(bool(enabled))
    every_token = _EVERY.set(float(every)) if every is not None else None
    try:
        yield
    finally:
        _ENABLED.reset(token)
        if every_token is not None:
            _EVERY.reset(every_token)


def format_duration(seconds: float) -> str:
    """``35 s``, ``1m51s``, ``2h05m``."""
    s = int(round(max(seconds, 0.0)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class Progress:
    """Progress of one step over ``total`` items (None: unknown), ``done`` of them already done.

    ``enabled``: None follows :func:`progress_enabled`; ``every``: None follows it too; ``stream`` (default
    stderr), ``tty`` (default: whether ``stream`` is a terminal) and ``clock`` are there for tests. Use as a
    context manager, or call :meth:`close`."""

    def __init__(self, label: str, total: int | None, *, done: int = 0, enabled: bool | None = None,
                 every: float | None = None, stream: TextIO | None = None, tty: bool | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.label = label
        self.total = total
        self.done = done
        self.start_done = done
        self.enabled = _ENABLED.get() if enabled is None else enabled
        self.every = _EVERY.get() if every is None else every
        self.stream = stream if stream is not None else sys.stderr
        self.clock = clock
        self.started = clock()
        self.last_line = self.started
        self.written = done  # the count the last plain line showed
        self.closed = False
        self.detail = ""
        self.bar: Any = None
        if tty is None:
            isatty = getattr(self.stream, "isatty", None)
            tty = bool(isatty()) if callable(isatty) else False
        self.tty = tty
        if self.enabled and self.tty:
            if _LIVE:
                self.enabled = False
            else:
                self._start_bar()

    def _start_bar(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as Bar

        self.bar = Bar(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                       TextColumn("ETA"), TimeRemainingColumn(), console=Console(file=self.stream),
                       transient=False)
        self.bar.start()
        _LIVE.append(self)
        self.task_id = self.bar.add_task(self.label, total=self.total, completed=self.done)

    def line(self) -> str:
        """The plain progress line of now: ``label: done/total (pct%), elapsed, ETA``."""
        elapsed = self.clock() - self.started
        if self.total:
            text = f"{self.label}: {self.done}/{self.total} ({100 * self.done // self.total}%)"
        else:
            text = f"{self.label}: {self.done} done"
        text += f", {format_duration(elapsed)} elapsed"
        new = self.done - self.start_done
        if self.total and 0 < new and self.done < self.total:
            text += f", ETA {format_duration(elapsed / new * (self.total - self.done))}"
        return text + (f", {self.detail}" if self.detail else "")

    def update(self, advance: int = 1, detail: str | None = None) -> None:
        """``advance`` more items done; ``detail`` (e.g. the loss) is shown beside the count."""
        self.done += advance
        if detail is not None:
            self.detail = detail
        if not self.enabled:
            return
        if self.bar is not None:
            desc = f"{self.label} {self.detail}".strip()
            self.bar.update(self.task_id, advance=advance, description=desc)
            return
        now = self.clock()
        if now - self.last_line >= self.every or (self.total is not None and self.done >= self.total):
            self._write(self.line())
            self.last_line, self.written = now, self.done

    def note(self, text: str) -> None:
        """A line of its own (e.g. an epoch's metrics), printed above the bar or among the plain lines."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.console.print(text, markup=False, highlight=False)
        else:
            self._write(text)

    def _write(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.bar is not None:
            self.bar.stop()
            _LIVE.remove(self)
        elif self.enabled and self.done != self.written:
            self._write(self.line())  # stopped early, or no total: say where it ended

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def track(items: Iterable[T], label: str, total: int | None = None, size: Callable[[T], int] | None = None,
          **kwargs: Any) -> Iterator[T]:
    """Yield ``items`` while showing their progress; ``size(item)`` counts the examples in each (default 1)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with Progress(label, total, **kwargs) as bar:
        for item in items:
            yield item
            bar.update(size(item) if size is not None else 1)
