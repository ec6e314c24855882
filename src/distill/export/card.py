"""The model card (``README.md``) written beside every export."""

from __future__ import annotations

import json
from typing import Any

from distill.export.run import RunFolder, command_line


def _yaml_line(value: Any) -> str:
    return json.dumps(value, default=str)


def _section_lines(section: Any) -> list[str]:
    if not section:
        return ["- (none)"]
    return [f"- `{k}`: `{_yaml_line(v)}`" for k, v in section.items() if v not in (None, {}, [])]


def model_card(run: RunFolder, fmt: str, usage: str, note: str = "", files: list[str] | None = None) -> str:
    """Markdown: student, teacher, methods and weights, data, the run's final metrics, how to load the export and
    the commands that produced it."""
    raw = run.raw_config
    student = raw.get("student") or {}
    teacher = raw.get("teacher")
    lines = [f"# {student.get('arch') or student.get('path') or 'student'} ({run.task}), distilled with distill", "",
             f"Exported as `{fmt}` from the run folder `{run.path}`.", "", "## Student", ""]
    lines += _section_lines(student)
    lines += ["", "## Teacher", ""]
    if teacher is None:
        lines.append("- none (the student was trained on labels alone)" if run.task != "embedding"
                     else "- the shipped all-MiniLM-L6-v2 (the family's default)")
    else:
        lines += _section_lines(teacher)
    lines += ["", "## Methods and weights", "", "| method | weight | options |", "|---|---|---|"]
    for m in raw.get("methods") or []:
        opts = {k: v for k, v in m.items() if k not in ("name", "weight", "label") and v is not None}
        label = m.get("label") or m["name"]
        lines.append(f"| `{label}` | {m.get('weight', 1.0)} | `{_yaml_line(opts)}` |")
    lines += ["", "## Data", ""] + _section_lines(raw.get("data"))
    if run.classes:
        lines += ["", "## Classes", "", "Output index -> class name:", "", "| output | class |", "|---|---|"]
        lines += [f"| {i} | {name} |" for i, name in enumerate(run.classes)]
    lines += ["", "## Final metrics", ""]
    if run.summary is None:
        lines.append("- no `summary.json` in the run folder (the run did not finish)")
    else:
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.6g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in run.final.items()]
        s = run.summary
        lines += ["", f"Steps: {s.get('steps')}, epochs: {s.get('epochs_done')}, best selection value: "
                      f"{s.get('best')}, training wall time: {float(s.get('wall_time_s', 0.0)):.1f} s."]
    lines += ["", "## Files", ""] + [f"- `{f}`" for f in (files or [])]
    lines += ["", "## Use", "", "```python", usage.strip(), "```"]
    if note:
        lines += ["", note]
    lines += ["", "## Produced by", "", "```bash"]
    if run.train_command:
        lines.append(run.train_command)
    lines += [command_line(), "```", ""]
    return "\n".join(lines)
