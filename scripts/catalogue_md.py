"""Print the method catalogue as a Markdown table (docs/methods.md): python scripts/catalogue_md.py"""

from distill.methods import METHODS


def main() -> None:
    print("| name | family | paper | year | arXiv | official code |")
    print("|---|---|---|---|---|---|")
    for entry in METHODS:
        p = entry.provenance
        repo = (p.repo or "").removeprefix("https://github.com/") if p else ""
        aliases = f" ({', '.join(entry.aliases)})" if entry.aliases else ""
        pipeline = getattr(entry.obj, "pipeline", None)
        note = f" (pipeline: `{pipeline}`; not for a methods list)" if pipeline else ""
        print(f"| `{entry.name}`{aliases}{note} | {entry.family} | {p.paper if p else entry.summary} | "
              f"{(p.year or '') if p else ''} | {(p.arxiv or '') if p else ''} | {repo} |")


if __name__ == "__main__":
    main()
