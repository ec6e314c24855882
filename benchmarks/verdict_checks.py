"""The machinery of the verdicts (issue 17): :class:`Verdict`, :class:`Evidence`, the checks every table shares and
:class:`Criterion`. The tables and their criteria are in ``verdicts.py`` (the classic and text/graph rows) and
``verdicts_families.py`` (the rows of the task-family issues); see ``verdicts.py`` for the rules."""


from __future__ import annotations

import statistics
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sweep import paired_difference  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"

WORKS, MISSED, PENDING, NA, ROLE = "works", "missed", "pending", "n.a.", "role"
COUNTED = (WORKS, MISSED, PENDING, NA)


@dataclass(frozen=True)
class Verdict:
    status: str  # works / missed / pending / n.a. / role (a baseline or control: not counted)
    detail: str = ""

    def __str__(self) -> str:
        if self.status == WORKS:
            return "works" + (f" ({self.detail})" if self.detail else "")
        if self.status == NA:
            return f"not applicable here: {self.detail}"
        if self.status == ROLE:
            return self.detail
        return f"{self.status}: {self.detail}"


@dataclass
class Evidence:
    """What a table's result file holds: ``values[arm][seed]`` (the metric, in the table's unit), optional
    ``probes[arm][seed][quantity]`` (``init`` probes under ``probes["@init"]``, the teacher's under ``facts``),
    and table ``facts`` (teacher accuracy, latencies, ...). ``higher`` says which way the metric is better."""

    values: dict[str, dict[int, float]]
    probes: dict[str, dict[int, dict[str, float]]] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)
    higher: bool = True
    metrics: dict[str, Evidence] = field(default_factory=dict)  # other metrics of the same rows (see :func:`on`)

    def seeds(self, arm: str) -> int:
        return len(self.values.get(arm, {}))


Check = Callable[[Evidence, int], Verdict]


def with_arms(check: Check, *arms: str) -> Check:
    """Record on ``check`` the arms it compares (:meth:`Criterion.judge` gates the row on their seeds)."""
    check.arms = arms  # type: ignore[attr-defined]
    return check


def fmt(x: float, unit: str = "") -> str:
    return f"{x:+.2f}{unit}"


def _sd(vals: Mapping[int, float]) -> float:
    return statistics.stdev(vals.values()) if len(vals) > 1 else 0.0


def _arms_ready(ev: Evidence, arms: Sequence[str], seeds: int) -> Verdict | None:
    """Pending when an arm is absent (a control arm) or has fewer seeds than asked; None when all are ready."""
    absent = [a for a in arms if a not in ev.values]
    if absent:
        return Verdict(PENDING, "not run yet: " + ", ".join(absent))
    few = [f"{a} {ev.seeds(a)} of {seeds} seeds" for a in arms if ev.seeds(a) < seeds]
    if few:
        return Verdict(PENDING, "seeds: " + ", ".join(few))
    common = set.intersection(*(set(ev.values[a]) for a in arms)) if arms else set()
    if len(arms) > 1 and len(common) < seeds:
        return Verdict(PENDING, f"seeds: {' and '.join(arms)} share {len(common)} of {seeds} seeds")
    return None


def _paired(ev: Evidence, arm: str, base: str) -> tuple[float, tuple[float, float] | None, int]:
    """The paired difference arm - base in the better direction (positive = arm better)."""
    a, b = (ev.values[arm], ev.values[base]) if ev.higher else (ev.values[base], ev.values[arm])
    diff, ci, n = paired_difference(a, b)
    return float(diff or 0.0), ci, n


def _minus(ev: Evidence, arm: str, base: str) -> str:
    """How a paired difference reads: ``arm - base``, or ``base - arm`` where lower is better (positive = arm
    better either way)."""
    return f"{arm} - {base}" if ev.higher else f"{base} - {arm}"


# -- checks ------------------------------------------------------------------------------------------------------
def beats_spread(arm: str, base: str, k: float = 2.0) -> Check:
    """``arm`` better than ``base`` by more than k x the seed spread (the larger sample sd of the two)."""
    def check(ev: Evidence, seeds: int) -> Verdict:
        wait = _arms_ready(ev, [arm, base], max(seeds, 2))
        if wait:
            return wait
        diff, _, n = _paired(ev, arm, base)
        spread = max(_sd(ev.values[arm]), _sd(ev.values[base]))
        text = f"{_minus(ev, arm, base)} {fmt(diff)} over {n} seeds vs {k:g}x seed spread {k * spread:.2f}"
        return Verdict(WORKS if diff > k * spread else MISSED, text)
    return with_arms(check, *(arm, base))


def margin(arm: str, base: str, d: float = 0.0, strict: bool = False, label: str = "") -> Check:
    """``arm >= base + d`` (``>`` with ``strict``) on the paired mean; a positive claimed gain (d > 0, or d = 0 with
    ``strict``) also needs the 95% interval above zero."""
    def check(ev: Evidence, seeds: int) -> Verdict:
        wait = _arms_ready(ev, [arm, base], seeds)
        if wait:
            return wait
        diff, ci, n = _paired(ev, arm, base)
        need = f"{'>' if strict else '>='} {d:+.2f}" if d else ("> 0" if strict else ">= 0")
        ci_text = f" [95% CI {ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else ""
        text = f"{_minus(ev, label or arm, base)} {fmt(diff)}{ci_text} over {n} seeds (needs {need})"
        cleared = diff > d if strict else diff >= d
        if not cleared:
            return Verdict(MISSED, text)
        if d > 0 or (d == 0 and strict):
            if ci is None or ci[0] <= 0:
                return Verdict(MISSED, text + ": not established, the interval reaches 0")
        return Verdict(WORKS, text)
    return with_arms(check, *(arm, base))


def margin_best(arm: str, candidates: Sequence[str], d: float = 0.0, label: str = "") -> Check:
    """:func:`margin` against the best of ``candidates`` (on the mean; e.g. the best fixed alpha): pending until
    every candidate has run."""
    def check(ev: Evidence, seeds: int) -> Verdict:
        absent = [c for c in candidates if c not in ev.values]
        if absent:
            return Verdict(PENDING, "not run yet: " + ", ".join(absent))
        wait = _arms_ready(ev, list(candidates), seeds)  # "the best" only once every candidate has its seeds
        if wait:
            return wait
        sign = 1.0 if ev.higher else -1.0
        best = max(candidates, key=lambda c: sign * statistics.mean(ev.values[c].values()))
        return margin(arm, best, d, label=label or f"{arm} vs the best of {', '.join(candidates)}")(ev, seeds)
    return with_arms(check, arm, *candidates)


def not_below(arm: str, base: str, k: float = 2.0) -> Check:
    """``arm`` not below ``base`` by more than k x the seed spread ("at or above the baseline within noise")."""
    def check(ev: Evidence, seeds: int) -> Verdict:
        wait = _arms_ready(ev, [arm, base], seeds)
        if wait:
            return wait
        diff, _, n = _paired(ev, arm, base)
        noise = k * max(_sd(ev.values[arm]), _sd(ev.values[base]))
        text = f"{_minus(ev, arm, base)} {fmt(diff)} over {n} seeds (noise {k:g}x spread {noise:.2f})"
        return Verdict(WORKS if diff >= -noise else MISSED, text)
    return with_arms(check, *(arm, base))


def _probe_ready(ev: Evidence, arms: Sequence[str], quantity: str, seeds: int) -> Verdict | None:
    for a in arms:
        have = [s for s, q in ev.probes.get(a, {}).items() if quantity in q and s in ev.values.get(a, {})]
        if len(have) < seeds:
            return Verdict(PENDING, f"probe {quantity} on {a}: {len(have)} of {seeds} seeds "
                                    "(benchmarks/probes.py)")
    return None


def probe_toward(arm: str, base: str, quantity: str, lower: bool = True, label: str = "", k: float = 2.0) -> Check:
    """The probe ``quantity`` of ``arm`` closer to the teacher than ``base``'s (lower, or higher with
    ``lower=False``) on the mean over the seeds both were probed on, by more than k x its seed spread (the larger
    sample sd of the two arms' probe values), as :func:`beats_spread` asks of accuracy: a gap inside the seeds'
    own scatter is no movement toward the teacher."""
    def check(ev: Evidence, seeds: int) -> Verdict:
        wait = _arms_ready(ev, [arm, base], seeds) or _probe_ready(ev, [arm, base], quantity, seeds)
        if wait:
            return wait
        common = sorted(set(ev.probes[arm]) & set(ev.probes[base]) & set(ev.values[arm]) & set(ev.values[base]))
        common = [s for s in common if quantity in ev.probes[arm][s] and quantity in ev.probes[base][s]]
        if len(common) < seeds:
            return Verdict(PENDING, f"probe {quantity}: {arm} and {base} share {len(common)} of {seeds} seeds")
        xs = {s: ev.probes[arm][s][quantity] for s in common}
        ys = {s: ev.probes[base][s][quantity] for s in common}
        a, b = statistics.mean(xs.values()), statistics.mean(ys.values())
        spread = max(_sd(xs), _sd(ys))
        gap = b - a if lower else a - b
        text = f"{label or quantity} {a:.4g} vs {base} {b:.4g} ({len(common)} seeds"
        if gap <= 0:
            return Verdict(MISSED, text + ")")
        if gap <= k * spread:
            return Verdict(MISSED, text + f"): the gap {gap:.3g} is within {k:g}x the seed spread {k * spread:.3g}")
        return Verdict(WORKS, text + f"; gap {gap:.3g} > {k:g}x seed spread {k * spread:.3g})")
    return with_arms(check, *(arm, base))


def probe_vs_init(arm: str, quantity: str, at_most: float = 0.5, label: str = "") -> Check:
    """The probe ``quantity`` of ``arm`` at most ``at_most`` x its value for the same student at initialisation."""
    def check(ev: Evidence, seeds: int) -> Verdict:
        wait = _arms_ready(ev, [arm], seeds) or _probe_ready(ev, [arm], quantity, seeds)
        if wait:
            return wait
        init = ev.probes.get("@init", {})
        common = [s for s in ev.probes[arm] if quantity in ev.probes[arm][s] and quantity in init.get(s, {})]
        if len(common) < seeds:
            return Verdict(PENDING, f"probe {quantity} at initialisation: {len(common)} of {seeds} seeds")
        ratio = statistics.mean(ev.probes[arm][s][quantity] / init[s][quantity] for s in common)
        text = f"{label or quantity} {ratio:.2f}x its value at initialisation (needs <= {at_most:g}x)"
        return Verdict(WORKS if ratio <= at_most else MISSED, text)
    return with_arms(check, *(arm,))


def probe_vs_teacher(arm: str, quantity: str, label: str = "", probe_seeds: int | None = None) -> Check:
    """The probe ``quantity`` of ``arm`` (mean over its probed seeds) at least the teacher's
    (``facts["teacher_probe"]``); ``probe_seeds``: how many probed seeds suffice (default: the criterion's)."""
    def check(ev: Evidence, seeds: int) -> Verdict:
        wait = _arms_ready(ev, [arm], seeds) or _probe_ready(ev, [arm], quantity, probe_seeds or seeds)
        if wait:
            return wait
        teacher = ev.facts.get("teacher_probe", {}).get(quantity)
        if teacher is None:
            return Verdict(PENDING, f"probe {quantity} of the teacher")
        got = [q[quantity] for q in ev.probes[arm].values() if quantity in q]
        a = statistics.mean(got)
        return Verdict(WORKS if a >= teacher else MISSED,
                       f"{label or quantity} {a:.3g} vs teacher {teacher:.3g} ({len(got)} probed seeds)")
    return with_arms(check, *(arm,))


def value_vs_fact(arm: str, fact: str, at_most: bool = True, label: str = "") -> Check:
    """The mean metric of ``arm`` at most (or at least) the table fact ``fact`` (e.g. the teacher's accuracy)."""
    def check(ev: Evidence, seeds: int) -> Verdict:
        wait = _arms_ready(ev, [arm], seeds)
        if wait:
            return wait
        ref = ev.facts.get(fact)
        if ref is None:
            return Verdict(PENDING, f"{fact} not measured")
        a = statistics.mean(ev.values[arm].values())
        ok = a <= ref if at_most else a >= ref
        return Verdict(WORKS if ok else MISSED, f"{label or arm} {a:.2f} vs {fact} {ref:.2f}")
    return with_arms(check, *(arm,))


def fact_check(fact: str, test: Callable[[Any], bool], text: Callable[[Any], str]) -> Check:
    """A table fact (a latency ratio, a mean cosine, ...) against the spec's bound; pending when not measured."""
    def check(ev: Evidence, seeds: int) -> Verdict:
        value = ev.facts.get(fact)
        if value is None:
            return Verdict(PENDING, f"{fact} not measured")
        return Verdict(WORKS if test(value) else MISSED, text(value))
    return check


def on(metric: str, check: Check) -> Check:
    """``check`` applied to another metric of the same rows (``ev.metrics[metric]``; pending when absent)."""
    def wrapped(ev: Evidence, seeds: int) -> Verdict:
        if metric not in ev.metrics:
            return Verdict(PENDING, f"{metric} not measured")
        return check(ev.metrics[metric], seeds)
    return with_arms(wrapped, *getattr(check, "arms", ()))


def missing(what: str) -> Check:
    """A part of the criterion nothing measures yet."""
    return lambda ev, seeds: Verdict(PENDING, what)


def report_sign(arm: str, base: str) -> Check:
    """"Report the sign honestly": passes once the sign is measured on enough seeds; the detail gives it."""
    def check(ev: Evidence, seeds: int) -> Verdict:
        wait = _arms_ready(ev, [arm, base], seeds)
        if wait:
            return wait
        diff, _, n = _paired(ev, arm, base)
        return Verdict(WORKS, f"heterogeneous sign {fmt(diff)} over {n} seeds, reported")
    return with_arms(check, *(arm, base))


# -- criteria ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Criterion:
    """A row's criterion: the spec's words, where they are, the seeds they need and the checks that decide them.
    ``role`` marks a baseline or control row (no verdict of its own); ``na`` a row that cannot be judged here,
    with the reason (including "no criterion in the spec")."""

    quote: str
    spec: str = ""
    seeds: int = 3
    checks: tuple[Check, ...] = ()
    role: str = ""
    na: str = ""
    seeds_note: str = ""  # why an arm has fewer seeds than it ran (e.g. a seed that chose its settings)

    def arms(self) -> list[str]:
        return list(dict.fromkeys(a for c in self.checks for a in getattr(c, "arms", ())))

    def needed(self, ev: Evidence, arm: str) -> int:
        """Seeds ``arm`` needs: the criterion's, and a third where 2 suffice unless the first two differ by more
        than a point (Protocol rule 4)."""
        vals = [v for _, v in sorted(ev.values.get(arm, {}).items())][:2]
        if self.seeds == 2 and len(vals) == 2 and abs(vals[0] - vals[1]) > 1.0:
            return 3
        return self.seeds

    def judge(self, ev: Evidence) -> Verdict:
        """Pending while an arm the checks compare has fewer seeds than the criterion asks (whatever the other
        checks say); then missed if a check failed (a part still unmeasured cannot rescue a conjunction whose
        measured part failed), pending if a control arm, probe or measurement is missing, works otherwise."""
        if self.role:
            return Verdict(ROLE, self.role)
        if self.na:
            return Verdict(NA, self.na)
        few = [f"{a} {ev.seeds(a)} of {self.needed(ev, a)}" for a in self.arms()
               if a in ev.values and ev.seeds(a) < self.needed(ev, a)]
        if few:
            absent = [a for a in self.arms() if a not in ev.values]
            return Verdict(PENDING, "seeds: " + ", ".join(few) + (f" ({self.seeds_note})" if self.seeds_note else "")
                           + ("; not run yet: " + ", ".join(absent) if absent else ""))
        results = [c(ev, self.seeds) for c in self.checks]
        missed = [r.detail for r in results if r.status == MISSED]
        if missed:
            held = [r.detail for r in results if r.status == WORKS]
            return Verdict(MISSED, "; ".join(missed) + (f" (held: {'; '.join(held)})" if held else ""))
        pending = [r.detail for r in results if r.status == PENDING]
        if pending:
            return Verdict(PENDING, "; ".join(dict.fromkeys(pending)))
        return Verdict(WORKS, "; ".join(r.detail for r in results))


def baseline(what: str) -> Criterion:
    return Criterion("", role=what)


def no_criterion(why: str, spec: str = "") -> Criterion:
    return Criterion("", spec=spec, na=f"no criterion in the spec: {why}")



def judge_all(criteria: Mapping[str, Criterion], ev: Evidence, rows: Sequence[str]) -> dict[str, Verdict]:
    """The verdict of every row (a row without a criterion entry is reported as such, never silently dropped)."""
    out = {}
    for row in rows:
        c = criteria.get(row)
        out[row] = c.judge(ev) if c else Verdict(NA, "no criterion entry in benchmarks/verdicts.py")
    return out



def monotone(xs: Sequence[float]) -> bool:
    return all(b >= a for a, b in zip(xs, xs[1:]))

