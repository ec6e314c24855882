"""Streams: a labelled dataset cut into a sequence of tasks (class-incremental splits, domains made by fixed
transforms, or known classes followed by a new label space).

A :class:`Stream` holds the whole dataset once (train and test tensors) and a list of :class:`Task`; a task is a
set of training rows (indices), the test rows it is judged on, the domain transform applied to both, and which of its
training rows keep their labels. The three kinds:

* ``class_incremental``: task t trains on the rows of its classes (e.g. 5 tasks of 2 classes); after each task the
  model is tested on the test rows of *all classes seen so far* (single-head, no task id at test).
* ``domains``: every task trains on the same label space, each under its own domain transform (a disjoint shard of
  the training rows per task, so each row is seen under one domain); after each task the model is tested on every
  domain of the stream, including ``heldout`` domains it never trains on.
* ``novel_classes``: task 0 trains on the labelled rows of the known classes; task 1 adds the rows of the novel
  classes *without labels* (labels -100) next to the labelled known rows (novel class discovery). Novel classes are
  judged by clustering accuracy (Hungarian matching), known classes by accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from distill.streams.transforms import ImageTransform, image_transform

KINDS = ("class_incremental", "domains", "novel_classes")
#: a training label hidden from the learner (the project's ignore index)
HIDDEN = -100


@dataclass
class Dataset:
    """One labelled dataset held in memory: float inputs (N, C, H, W) and integer labels, train and test."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    @property
    def num_classes(self) -> int:
        return int(max(self.y_train.max(), self.y_test.max())) + 1

    @property
    def channels(self) -> int:
        return int(self.x_train.shape[1])


@dataclass
class Task:
    """One step of a stream: training rows, test rows, the domain of both, and which training rows keep labels."""

    name: str
    classes: tuple[int, ...]
    train_index: torch.Tensor
    test_index: torch.Tensor
    domain: str = "identity"
    labelled: torch.Tensor | None = None  # bool over train_index; None: every row labelled


@dataclass
class Stream:
    kind: str
    dataset: Dataset
    tasks: list[Task]
    #: domains tested after every task without being trained on (``domains`` streams)
    heldout: list[str] = field(default_factory=list)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"stream.kind: {self.kind!r} is not one of {', '.join(KINDS)}")
        names = {t.domain for t in self.tasks} | set(self.heldout)
        self._transforms = {d: image_transform(d, self.dataset.channels, self.seed) for d in sorted(names)}

    @property
    def num_classes(self) -> int:
        return self.dataset.num_classes

    def transform(self, domain: str) -> ImageTransform:
        return self._transforms[domain]

    def seen_classes(self, t: int) -> list[int]:
        """The classes of tasks 0..t (sorted)."""
        return sorted({c for task in self.tasks[: t + 1] for c in task.classes})

    def train_batch(self, t: int, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs (domain-transformed) and visible labels of the training rows ``rows`` (positions in task t)."""
        task = self.tasks[t]
        idx = task.train_index[rows]
        x = self.transform(task.domain)(self.dataset.x_train[idx])
        y = self.dataset.y_train[idx].clone()
        if task.labelled is not None:
            y[~task.labelled[rows]] = HIDDEN
        return x, y

    def eval_sets(self, t: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """The named test sets to report after task t: one per seen task (class-incremental, novel classes) or one
        per domain, held-out domains included (domains)."""
        ds = self.dataset
        out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        if self.kind == "domains":
            for d in [*dict.fromkeys(task.domain for task in self.tasks), *self.heldout]:
                out[d] = (self.transform(d)(ds.x_test), ds.y_test)
            return out
        for task in self.tasks[: t + 1]:
            out[task.name] = (self.transform(task.domain)(ds.x_test[task.test_index]), ds.y_test[task.test_index])
        return out


def _rows_of(y: torch.Tensor, classes: Sequence[int]) -> torch.Tensor:
    return torch.nonzero(torch.isin(y, torch.tensor(list(classes))), as_tuple=True)[0]


def _check_classes(dataset: Dataset, classes: Sequence[int], key: str) -> None:
    """A task's class list: not empty, each class one of the dataset's (else a ValueError naming ``key``)."""
    if not len(classes):
        raise ValueError(f"{key}: no classes; give each task at least one")
    bad = sorted({int(c) for c in classes if not 0 <= int(c) < dataset.num_classes})
    if bad:
        raise ValueError(f"{key}: {bad} {'is not a class' if len(bad) == 1 else 'are not classes'} of dataset "
                         f"{dataset.name!r} (its classes: 0..{dataset.num_classes - 1})")


def class_incremental(dataset: Dataset, tasks: Sequence[Sequence[int]], seed: int = 0) -> Stream:
    """Tasks made of the given class lists (disjoint); each trains on its classes' rows, tests on their test rows."""
    seen: set[int] = set()
    out = []
    for i, classes in enumerate(tasks):
        _check_classes(dataset, classes, f"stream.tasks[{i}]")
        if seen & set(classes):
            raise ValueError(f"stream.tasks[{i}]: classes {sorted(seen & set(classes))} already in an earlier task")
        seen |= set(classes)
        out.append(Task(f"task{i}", tuple(int(c) for c in classes), _rows_of(dataset.y_train, classes),
                        _rows_of(dataset.y_test, classes)))
    return Stream("class_incremental", dataset, out, seed=seed)


def domain_stream(dataset: Dataset, domains: Sequence[str], heldout: Sequence[str] = (), seed: int = 0) -> Stream:
    """One task per domain over the whole label space; the training rows are cut into ``len(domains)`` disjoint
    seeded shards, shard t seen under domain t."""
    n = len(dataset.y_train)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 7919))
    shards = order.chunk(len(domains))
    classes = tuple(range(dataset.num_classes))
    test = torch.arange(len(dataset.y_test))
    tasks = [Task(d, classes, shards[i].sort().values, test, domain=d) for i, d in enumerate(domains)]
    return Stream("domains", dataset, tasks, heldout=list(heldout), seed=seed)


def novel_class_stream(dataset: Dataset, known: Sequence[int], novel: Sequence[int], seed: int = 0) -> Stream:
    """Task 0: the known classes, labelled. Task 1: the known rows (labelled) and the novel rows (labels hidden)."""
    _check_classes(dataset, known, "stream.known")
    _check_classes(dataset, novel, "stream.novel")
    if set(known) & set(novel):
        raise ValueError(f"stream.novel: classes {sorted(set(known) & set(novel))} are also known")
    pretrain = Task("known", tuple(known), _rows_of(dataset.y_train, known), _rows_of(dataset.y_test, known))
    rows = _rows_of(dataset.y_train, [*known, *novel])
    labelled = torch.isin(dataset.y_train[rows], torch.tensor(list(known)))
    discover = Task("novel", tuple(novel), rows, _rows_of(dataset.y_test, novel), labelled=labelled)
    return Stream("novel_classes", dataset, [pretrain, discover], seed=seed)
