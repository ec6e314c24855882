"""The method catalogue as a Markdown table (docs/methods.md), from the registry.

    python scripts/catalogue_md.py            # print the table
    python scripts/catalogue_md.py --write    # replace the table in docs/methods.md (tests/test_registry.py checks it)
"""

import sys
from pathlib import Path

from distill.methods import METHODS

DOC = Path(__file__).resolve().parents[1] / "docs" / "methods.md"
HEADER = "| name | family | paper | year | arXiv | official code |"


def table() -> list[str]:
    rows = [HEADER, "|---|---|---|---|---|---|"]
    for entry in METHODS:
        p = entry.provenance
        repo = (p.repo or "").removeprefix("https://github.com/") if p else ""
        aliases = f" ({', '.join(entry.aliases)})" if entry.aliases else ""
        pipeline = getattr(entry.obj, "pipeline", None)
        note = f" (pipeline: `{pipeline}`; not for a methods list)" if pipeline else ""
        rows.append(f"| `{entry.name}`{aliases}{note} | {entry.family} | {p.paper if p else entry.summary} | "
                    f"{(p.year or '') if p else ''} | {(p.arxiv or '') if p else ''} | {repo} |")
    return rows


def documented() -> list[str]:
    """The catalogue table as docs/methods.md holds it (from its header to the first line that is not a row)."""
    lines = DOC.read_text().splitlines()
    start = lines.index(HEADER)
    end = start
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    return lines[start:end]


def main() -> None:
    if "--write" in sys.argv[1:]:
        lines = DOC.read_text().splitlines()
        start = lines.index(HEADER)
        end = start + len(documented())
        DOC.write_text("\n".join(lines[:start] + table() + lines[end:]) + "\n")
        return
    print("\n".join(table()))


if __name__ == "__main__":
    main()
