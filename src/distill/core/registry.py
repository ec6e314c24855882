"""Registries: configs pick components by name from these, never by importing code.

Each entry carries its provenance (paper title, year, arXiv id, official repository) so that
``distill methods`` can print the catalogue with citations.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Provenance:
    paper: str
    year: int | None = None
    arxiv: str | None = None
    repo: str | None = None
    venue: str | None = None

    def citation(self) -> str:
        parts = [self.paper]
        if self.venue or self.year:
            parts.append(" ".join(str(p) for p in (self.venue, self.year) if p))
        if self.arxiv:
            parts.append(f"arXiv:{self.arxiv}")
        return ", ".join(parts)


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    obj: T
    provenance: Provenance | None = None
    family: str = ""
    summary: str = ""
    aliases: tuple[str, ...] = field(default_factory=tuple)
    #: the source file that defines ``obj``, relative to its top-level package (``methods/features/ft.py``)
    file: str = ""

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "family": self.family, "summary": self.summary}
        out["aliases"] = list(self.aliases)
        out["file"] = self.file
        out["provenance"] = asdict(self.provenance) if self.provenance else None
        return out


def module_file(module: str) -> str:
    """The file of module ``module`` relative to its top-level package: ``distill.methods.features.ft`` ->
    ``methods/features/ft.py`` (``.../__init__.py`` for a package)."""
    parts = module.split(".")[1:] if "." in module else [module]  # a plugin's top-level module: its own file
    if hasattr(sys.modules.get(module), "__path__"):
        parts.append("__init__")
    return "/".join(parts) + ".py"


class Registry(Generic[T]):
    """A name -> component table with helpful errors for unknown names."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}
        self._alias: dict[str, str] = {}

    def register(
        self,
        name: str,
        *,
        paper: str | None = None,
        year: int | None = None,
        arxiv: str | None = None,
        repo: str | None = None,
        venue: str | None = None,
        family: str = "",
        aliases: tuple[str, ...] = (),
    ) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._entries or name in self._alias:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            prov = Provenance(paper, year, arxiv, repo, venue) if paper else None
            doc = (getattr(obj, "__doc__", None) or "").strip().splitlines()
            summary = doc[0].strip() if doc else ""
            file = module_file(getattr(obj, "__module__", "") or "")
            self._entries[name] = Entry(name, obj, prov, family, summary, tuple(aliases), file)
            for alias in aliases:
                self._alias[alias] = name
            return obj

        return deco

    def canonical(self, name: str) -> str:
        key = self._alias.get(name, name)
        if key not in self._entries:
            raise KeyError(f"unknown {self.kind} {name!r}; allowed: {', '.join(self.names())}")
        return key

    def get(self, name: str) -> T:
        return self._entries[self.canonical(name)].obj

    def entry(self, name: str) -> Entry[T]:
        return self._entries[self.canonical(name)]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (name in self._entries or name in self._alias)

    def __iter__(self) -> Iterator[Entry[T]]:
        return iter(self._entries[n] for n in self.names())

    def __len__(self) -> int:
        return len(self._entries)
