"""Progress output off a terminal: plain lines with count, percentage, elapsed time and ETA, at most one every N
seconds and the last one always; nothing when switched off; a rich bar on a terminal."""

from __future__ import annotations

import io

from distill.train.progress import Progress, format_duration, progress_enabled, track


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_durations_are_short_and_readable():
    assert [format_duration(s) for s in (0, 35.4, 59.6, 110.83, 3599, 7500)] == [
        "0 s", "35 s", "1m00s", "1m51s", "59m59s", "2h05m"]


def test_plain_lines_carry_count_percent_elapsed_and_eta_at_most_every_n_seconds():
    clock, out = FakeClock(), io.StringIO()
    bar = Progress("cache build", 5000, every=10.0, stream=out, tty=False, clock=clock, enabled=True)
    for _ in range(12):  # 100 examples per batch of 3 s
        clock.now += 3
        bar.update(100)
    assert out.getvalue().splitlines() == [
        "cache build: 400/5000 (8%), 12 s elapsed, ETA 2m18s",
        "cache build: 800/5000 (16%), 24 s elapsed, ETA 2m06s",
        "cache build: 1200/5000 (24%), 36 s elapsed, ETA 1m54s",
    ]
    clock.now += 1
    bar.update(3800, detail="done")  # the last item: always written, without an ETA
    assert out.getvalue().splitlines()[-1] == "cache build: 5000/5000 (100%), 37 s elapsed, done"
    bar.close()
    assert len(out.getvalue().splitlines()) == 4


def test_an_early_stop_or_an_unknown_total_ends_with_a_line():
    clock, out = FakeClock(), io.StringIO()
    with Progress("generation", None, every=60, stream=out, tty=False, clock=clock, enabled=True) as bar:
        clock.now += 5
        bar.update(16)
    assert out.getvalue() == "generation: 16 done, 5 s elapsed\n"
    out = io.StringIO()
    items = list(track(range(10), "teacher pass", every=60, stream=out, tty=False, clock=clock, enabled=True))
    assert items == list(range(10)) and out.getvalue() == "teacher pass: 10/10 (100%), 0 s elapsed\n"


def test_notes_and_switching_off():
    out = io.StringIO()
    with progress_enabled(False):
        bar = Progress("training", 10, stream=out, tty=False)
        bar.update(10)
        bar.note("epoch 1/1: loss 0.5")
        bar.close()
    assert out.getvalue() == ""
    with progress_enabled(True, every=0.0):
        bar = Progress("training", 10, stream=out, tty=False)
        bar.note("epoch 1/1: loss 0.5")
        assert bar.every == 0.0
    assert out.getvalue() == "epoch 1/1: loss 0.5\n"


def test_a_terminal_gets_one_rich_bar_at_a_time():
    out = io.StringIO()
    bar = Progress("training", 4, stream=out, tty=True, enabled=True)
    assert bar.bar is not None
    inner = Progress("teacher embeddings (eval)", 2, stream=out, tty=True, enabled=True)
    assert inner.bar is None and not inner.enabled  # inside another bar: silent
    inner.update(2)
    inner.close()
    bar.update(4)
    bar.close()
    assert "training" in out.getvalue() and "4/4" in out.getvalue() and "teacher" not in out.getvalue()
    after = Progress("cache build", 1, stream=out, tty=True, enabled=True)
    assert after.bar is not None
    after.close()
