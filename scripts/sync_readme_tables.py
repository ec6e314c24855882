"""Copy benchmark tables into benchmarks/README.md (and any other Markdown file that has markers) between
markers, so quoted numbers stay the numbers of the committed result files:

    <!-- table: benchmarks/results/cifar10_catalogue.md -->
    ... replaced by the table rows (and "Not applicable" / "MEAL V2" / "Verdicts" lines) of that file ...
    <!-- /table -->

    python scripts/sync_readme_tables.py                 # rewrites benchmarks/README.md and README.md in place
    python scripts/sync_readme_tables.py FILE.md         # only that file
    python scripts/sync_readme_tables.py --check         # exit 1 if a table block is out of date

Marker paths are relative to the repository root, whichever file holds the marker.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: the files synced when none is named: the benchmark page holds the tables; the front page may quote one too
DEFAULT_FILES = (REPO / "benchmarks" / "README.md", REPO / "README.md")
BLOCK = re.compile(r"(<!-- table: (?P<path>[^ ]+) -->\n)(?P<body>.*?)(<!-- /table -->)", re.S)
KEEP = ("|", "Not applicable", "MEAL V2's teacher", "Still to run", "Verdicts", "Teacher stores", "The sparse stores",
        "TAID's interpolation")


def table_lines(md: Path) -> str:
    """The table rows and the notes around them, with a blank line wherever a table starts or ends (Markdown
    would otherwise read a note right after a table as one more row)."""
    out: list[str] = []
    previous = ""  # the source line before this one, kept or not
    for line in md.read_text().splitlines():
        kept, row = line.startswith(KEEP), line.startswith("|")
        new_table = row and not previous.startswith("|")  # two tables apart in the file stay apart
        previous = line
        if not kept:
            continue
        if out and out[-1] and (out[-1].startswith("|") != row or new_table):
            out.append("")
        out.append(line)
    return "\n".join(out) + "\n"


def sync(text: str, root: Path) -> str:
    def replace(m: re.Match[str]) -> str:
        md = root / m.group("path")
        if not md.exists():
            raise FileNotFoundError(f"{m.group('path')}: named by a table marker but missing")
        return m.group(1) + table_lines(md) + m.group(4)

    return BLOCK.sub(replace, text)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="*", type=Path, default=list(DEFAULT_FILES))
    p.add_argument("--check", action="store_true")
    args = p.parse_args()
    stale = 0
    for file in args.files:
        text = file.read_text()
        new = sync(text, REPO)
        if args.check:
            if new != text:
                print(f"{file}: a table block differs from its result file; run scripts/sync_readme_tables.py")
                stale += 1
        elif new != text:
            file.write_text(new)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
