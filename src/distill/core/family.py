"""Task families: one plugin per ``task:`` value.

A family is one folder under ``distill/tasks/`` with the same parts in each (``section.py``: its ``data:`` section;
``data.py``: loading; ``task.py``: the adapter that says how a model is called on a batch, the supervised loss and
the metrics; ``models.py``: its model builders; ``build.py``: the :class:`Family` subclass, registered by name). The
one builder, :func:`distill.experiment.build_experiment`, does the shared steps (seed, paths, student, teacher:
frozen, ensemble or cached; methods; module; trainer) and asks the family only for what differs.

Built-in families are imported by module name on first use (by :mod:`distill.plugins`, the one place that
imports by name; no import statement ties this registry to them); installed packages add theirs through the
``distill.families`` entry-point group, each entry naming a module that registers a family when imported.
A config picks a family by name and never imports code.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

from distill.plugins import load_entry_point_plugins, load_families


@dataclass
class Loaded:
    """What a family's :meth:`Family.load` returns: the datasets, the task adapter and what the models need to
    know about the data (``eval``: what the trainer evaluates and selects on; ``num_outputs``: the student's
    output width, e.g. the number of classes; ``info``: family-specific facts such as the vocabulary size or the
    graph's feature width)."""

    task: Any
    train: Any
    eval: Any | None = None
    val: Any | None = None
    num_outputs: int | None = None
    info: dict[str, Any] = field(default_factory=dict)
    #: what ``distill eval`` reports on when it is not ``eval`` (the graph family selects on the
    #: validation nodes during training and reports the test nodes)
    report: Any | None = None


class Family:
    """The parts of a task family. Subclasses set the class attributes and override what differs."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    #: the pydantic class of the ``data:`` section
    data_section: ClassVar[type] = object
    #: the pydantic classes of ``student:`` and ``teacher:`` (None: ``distill.config.ModelConfig`` /
    #: ``TeacherConfig``)
    student_section: ClassVar[type | None] = None
    teacher_section: ClassVar[type | None] = None
    #: ``arch`` values that start with one of these are names for another library (``timm:resnet18``), checked
    #: when the model is built
    arch_prefixes: ClassVar[tuple[str, ...]] = ()
    data_required: ClassVar[bool] = True
    student_required: ClassVar[bool] = True
    #: a task whose methods apply to this family too (``Method.tasks`` names the built-in families; a plugin
    #: family whose models give class logits sets e.g. ``"vector_classification"``); None: only its own name
    methods_as: ClassVar[str | None] = None
    #: whether ``student.lora`` (LoRA adapters through PEFT) fits the family's students, and the modules trained
    #: in full beside the adapters unless ``student.lora.modules_to_save`` says otherwise (a new head)
    lora_students: ClassVar[bool] = False
    lora_modules_to_save: ClassVar[tuple[str, ...]] = ()
    #: whether ``teacher.mixture`` works here (batches select per example; for ``route: column`` the family's
    #: loader puts the column in ``batch.meta["route"]``)
    teacher_mixture: ClassVar[bool] = False
    #: whether ``teacher.cache.hidden`` works here: the teacher's outputs are an output head (a linear map over a
    #: vocabulary) applied to its final hidden states, which the task returns as ``HiddenStates``
    hidden_cache: ClassVar[bool] = False

    # -- config -------------------------------------------------------------------------------------------------
    def check(self, cfg: Any) -> None:
        """Rules between sections that validation cannot see (raise ``ValueError`` naming the key)."""

    def model_archs(self) -> list[str]:
        """The names ``student.arch`` / ``teacher.arch`` may take in this family (checked when the file is read)."""
        return []

    def model_table(self) -> dict[str, Any] | None:
        """The table of this family's named model builders (``arch`` name -> builder) that
        :func:`distill.models.register_model` adds to; None when the family's models are not chosen from one."""
        return None

    def model_builder(self, model_cfg: Any, key: str) -> tuple[Any, tuple[str, ...]] | None:
        """The builder of ``model_cfg`` (a function or class whose keyword arguments its ``options`` are) and
        the arguments the family passes itself (e.g. ``num_classes``); the options are validated against its
        signature when the file is read. None: the model takes no options (e.g. loaded from ``path``) or its
        ``arch`` is refused elsewhere."""
        return None

    def has_teacher(self, cfg: Any) -> bool:
        """Whether the config gives the methods a teacher."""
        return cfg.teacher is not None

    def augments(self, cfg: Any) -> bool:
        """Whether training inputs are randomly augmented (stored teachers then keep several views)."""
        return False

    # -- build --------------------------------------------------------------------------------------------------
    def load(self, cfg: Any) -> Loaded:
        raise NotImplementedError

    def build_model(self, model_cfg: Any, loaded: Loaded, cfg: Any, key: str) -> Any:
        """Build the model of ``model_cfg`` (the section at config key ``key``: ``student``, ``teacher`` or
        ``teacher.ensemble[i]``), with its weights loaded."""
        raise NotImplementedError

    def build_student(self, cfg: Any, loaded: Loaded) -> Any:
        return self.build_model(cfg.student, loaded, cfg, "student")

    def prepare_student(self, student: Any, teacher: Any, cfg: Any, loaded: Loaded) -> None:
        """After the teacher exists: what the student takes from it (e.g. copied layers). The student is built
        before the teacher, so a seed gives it the same initial weights whatever the teacher is."""

    def build_teacher(self, cfg: Any, loaded: Loaded) -> Any:
        """The teacher source (before any cache): a frozen model or an ensemble of them."""
        from distill.core.teachers import EnsembleTeacher, FrozenTeacher

        if cfg.teacher is None:
            return None
        if getattr(cfg.teacher, "mixture", None) is not None:
            return self.build_mixture(cfg, loaded)
        members = cfg.teacher.members()
        keys = ([f"teacher.ensemble[{i}]" for i in range(len(members))] if cfg.teacher.ensemble
                else ["teacher"])
        models = [self.build_model(m, loaded, cfg, k) for m, k in zip(members, keys, strict=True)]
        if len(models) == 1 and not cfg.teacher.ensemble:
            return FrozenTeacher(models[0])
        return EnsembleTeacher(models, reduce=cfg.teacher.reduce)

    def build_mixture(self, cfg: Any, loaded: Loaded) -> Any:
        """``teacher.mixture``: its members built like teachers (keys ``teacher.mixture.members[i]``), combined by
        :class:`distill.core.mixture.MixtureTeacher` (a learned router reads outputs of the task's width)."""
        from distill.core.mixture import MixtureTeacher

        mix = cfg.teacher.mixture
        models = [self.build_model(m, loaded, cfg, f"teacher.mixture.members[{i}]")
                  for i, m in enumerate(mix.members)]
        router = mix.router_settings()
        width = loaded.num_outputs or getattr(loaded.task, "vocab_size", None)
        return MixtureTeacher(models, mix.names(), mix.route, router_input=router.input, num_outputs=width,
                              hidden=router.hidden, balance=router.balance, reduce=mix.reduce)

    def train_config(self, cfg: Any, loaded: Loaded) -> Any:
        """The trainer's settings: the ``train:`` section with the top-level seed and determinism."""
        from dataclasses import replace

        return replace(cfg.train, seed=cfg.seed, deterministic=cfg.deterministic)

    def after_fit(self, experiment: Any) -> None:
        """What the family exports after training, beside ``student.safetensors`` (e.g. a model folder)."""

    # -- export (``distill export``: the student rebuilt from the run folder, without its data) ------------------
    def export_formats(self, cfg: Any) -> list[str]:
        """The ``distill export --format`` values that fit this family's student (``safetensors`` fits all)."""
        return ["safetensors"]

    def export_facts(self, loaded: Loaded) -> dict[str, Any]:
        """What the student's builder read from the data (JSON values), saved at train time in
        ``<run>/student_spec.json`` so that :meth:`export_loaded` can rebuild the student without the data."""
        return {"num_outputs": loaded.num_outputs}

    def export_loaded(self, cfg: Any, facts: dict[str, Any]) -> Loaded:
        """A :class:`Loaded` with no data that :meth:`export_student` can build the student from."""
        return Loaded(task=None, train=None, num_outputs=facts.get("num_outputs"), info=dict(facts))

    def export_student(self, cfg: Any, loaded: Loaded) -> Any:
        """The student's architecture (its own weights are loaded afterwards; no teacher is built)."""
        return self.build_model(cfg.student, loaded, cfg, "student")

    def onnx_inputs(self, cfg: Any, loaded: Loaded, student: Any) -> Any:
        """For ``--format onnx``: an :class:`distill.export.onnx.OnnxSpec` (the module to trace, named example
        inputs, dynamic axes), or None when the family's students are not exported to ONNX."""
        return None


class FamilyRegistry:
    """``task:`` name -> :class:`Family` instance."""

    def __init__(self) -> None:
        self._families: dict[str, Family] = {}
        self._loaded = False

    def register(self, cls: type[Family]) -> type[Family]:
        if not cls.name:
            raise ValueError(f"{cls.__name__}: a family needs a name")
        if cls.name in self._families and type(self._families[cls.name]) is not cls:
            raise ValueError(f"task family {cls.name!r} is registered twice")
        self._families[cls.name] = cls()
        return cls

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        load_families()
        load_entry_point_plugins()

    def get(self, name: str) -> Family:
        self._load()
        if name not in self._families:
            raise KeyError(f"unknown task {name!r}; allowed: {', '.join(self.names())}")
        return self._families[name]

    def names(self) -> list[str]:
        self._load()
        return sorted(self._families)

    def __contains__(self, name: object) -> bool:
        self._load()
        return isinstance(name, str) and name in self._families

    def __iter__(self) -> Iterator[Family]:
        self._load()
        return iter(self._families[n] for n in self.names())


FAMILIES = FamilyRegistry()
register_family = FAMILIES.register
