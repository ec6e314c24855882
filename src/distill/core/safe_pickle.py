"""Reading files that other people made, without running code hidden in them.

A pickle is a small program: the ``GLOBAL``/``STACK_GLOBAL`` opcodes import any module attribute and ``REDUCE``
calls it, so ``pickle.load`` of a tampered file can run ``os.system(...)``. ``distill`` therefore never calls
plain ``pickle.load`` (nor PyTorch's loader with its weights-only guard switched off, nor numpy's with pickles
allowed). What it reads instead:

* safetensors files (:func:`load_safetensors`): a JSON header and raw tensor bytes, no code at all;
* PyTorch ``.pt``/``.pth``/``.th``/``.bin`` files with ``torch.load(weights_only=True)``
  (:func:`load_torch_weights_only`): PyTorch's own restricted unpickler, which only rebuilds tensors and plain
  containers;
* the pickles of the official dataset releases (CIFAR python batches, Planetoid raw files) with
  :class:`RestrictedUnpickler`, whose ``find_class`` answers only the few globals that format needs (listed in
  :data:`NUMPY_ARRAY_GLOBALS` and :data:`PLANETOID_GLOBALS`), and refuses everything else *before* it is called;
* Hugging Face / sentence-transformers folders through their own loaders, which read safetensors or
  ``torch.load(weights_only=True)``; :func:`hf_folder_guard` turns their refusal into one line.

A refusal is an :class:`UnsafeFileError` (a ``ValueError``) carrying the ``path`` and the ``reason``; its text is one
line, ``<path>: <reason>``. Inside :func:`config_key` it becomes a :class:`distill.config.ConfigError`
``<key>: <path>: <reason>``, which the command line prints as one line.
"""

from __future__ import annotations

import io
import pickle
import pickletools
import warnings
import zipfile
from collections import defaultdict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

__all__ = [
    "NUMPY_ARRAY_GLOBALS",
    "PICKLE_SUFFIXES",
    "PLANETOID_GLOBALS",
    "RestrictedUnpickler",
    "UnsafeFileError",
    "UnsafePickleError",
    "config_key",
    "hf_folder_guard",
    "is_pickle_file",
    "load_npy",
    "load_safetensors",
    "load_torch_weights_only",
    "looks_like_pickle",
    "pickle_globals",
    "restricted_load",
]

NOT_WEIGHTS = "not a safetensors or weights-only checkpoint"


class UnsafeFileError(ValueError):
    """A file ``distill`` refuses to read: it would need code to run (a pickle global that is not allowed) or it
    is not in the format its name or place promises. ``str(e)`` is one line: ``<path>: <reason>``."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = " ".join(str(reason).split())  # one line, whatever the underlying library said
        super().__init__(f"{self.path}: {self.reason}")


class UnsafePickleError(UnsafeFileError, pickle.UnpicklingError):
    """A pickle asked for a global (a function or class) that the restricted unpickler does not allow."""


# --------------------------------------------------------------------------------------------------------------
# Allowed globals
# --------------------------------------------------------------------------------------------------------------

AllowedGlobals = Mapping[tuple[str, str], Any]


def _numpy_array_globals() -> dict[tuple[str, str], Any]:
    """What a pickled numpy array needs: ``_reconstruct(ndarray, shape, typecode)`` rebuilds an empty array, the
    ``dtype`` class rebuilds its dtype, and ``BUILD`` fills it from raw bytes (``ndarray.__setstate__``); protocol-5
    pickles use ``_frombuffer(bytes, dtype, shape, order)`` instead. Both module spellings are listed, numpy 1
    (``numpy.core``, also what Python 2 era files say) and numpy 2 (``numpy._core``); they name the same objects."""
    import numpy as np

    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # pragma: no cover - numpy < 1.26 has no numpy._core
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    allowed: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for pkg in ("numpy.core", "numpy._core"):
        allowed[(f"{pkg}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{pkg}.numeric", "_frombuffer")] = numeric._frombuffer
    return allowed


def _planetoid_globals() -> dict[tuple[str, str], Any]:
    """The globals of the official Planetoid raw files (``ind.{cora,citeseer,pubmed}.*``, pickled by Python 2),
    read off their opcodes (``pickletools``): the numpy array ones (``y``, ``ty``, ``ally`` and the arrays inside
    the sparse matrices), ``scipy.sparse.csr.csr_matrix`` (``x``, ``tx``, ``allx``: an instance made with
    ``NEWOBJ`` and filled by ``BUILD`` from a dict of arrays, so the class is instantiated without arguments
    and nothing of it is called with the file's data except attribute assignment), and ``collections.defaultdict``
    with ``__builtin__.list`` (``graph``: ``defaultdict(list)`` of adjacency lists). ``scipy.sparse._csr`` and
    ``builtins`` are the same objects under the names newer scipy / Python 3 write."""
    from scipy.sparse import csr_matrix

    allowed = _numpy_array_globals()
    allowed[("scipy.sparse.csr", "csr_matrix")] = csr_matrix
    allowed[("scipy.sparse._csr", "csr_matrix")] = csr_matrix
    allowed[("collections", "defaultdict")] = defaultdict
    allowed[("__builtin__", "list")] = list
    allowed[("builtins", "list")] = list
    return allowed


class _LazyGlobals(Mapping[tuple[str, str], Any]):
    """A mapping built on first use (numpy / scipy are imported only when a pickle is read)."""

    def __init__(self, build: Any) -> None:
        self._build = build
        self._table: dict[tuple[str, str], Any] | None = None

    def _get(self) -> dict[tuple[str, str], Any]:
        if self._table is None:
            self._table = self._build()
        return self._table

    def __getitem__(self, key: tuple[str, str]) -> Any:
        return self._get()[key]

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._get())

    def __len__(self) -> int:
        return len(self._get())


NUMPY_ARRAY_GLOBALS: AllowedGlobals = _LazyGlobals(_numpy_array_globals)
"""Globals of pickles holding only builtin containers, strings, numbers and numpy arrays (CIFAR batches)."""

PLANETOID_GLOBALS: AllowedGlobals = _LazyGlobals(_planetoid_globals)
"""Globals of the Planetoid raw files: numpy arrays, scipy CSR matrices, ``defaultdict(list)``."""


# --------------------------------------------------------------------------------------------------------------
# Restricted unpickling
# --------------------------------------------------------------------------------------------------------------


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler whose ``find_class`` returns only the globals in ``allowed`` and refuses any other one (with
    an :class:`UnsafePickleError` naming it) before anything is called; persistent ids are refused too.

    Builtin containers, strings, bytes and numbers need no global, so a pickle of data only ever asks for the
    classes (and reconstruction helpers) of the data types it holds. ``what`` names the file in errors and
    ``kind`` says which format's list applied.
    """

    def __init__(self, file: BinaryIO, allowed: AllowedGlobals, what: str | Path, kind: str,
                 encoding: str = "bytes") -> None:
        super().__init__(file, encoding=encoding)
        self._allowed = allowed
        self._what = str(what)
        self._kind = kind

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                self._what, f"contains a callable or class that is not allowed: {module}.{name} "
                f"({self._kind} files hold only {_describe(self._allowed, self._kind)}; refused before running "
                "anything)"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(self._what, f"uses pickle persistent ids, which {self._kind} files never need")


_NEEDS = {"Planetoid": "numpy arrays, scipy CSR matrices and defaultdict(list)",
          "CIFAR": "dicts, lists, byte strings and numpy arrays"}


def _describe(allowed: AllowedGlobals, kind: str) -> str:
    if kind in _NEEDS:
        return _NEEDS[kind]
    return "the data types of " + ", ".join(sorted({m.split(".")[0] for m, _ in allowed}))


def restricted_load(file: BinaryIO, allowed: AllowedGlobals, what: str | Path, kind: str,
                    encoding: str = "bytes") -> Any:
    """Unpickle one object from ``file`` with :class:`RestrictedUnpickler`; a refused global, or bytes that are not
    a pickle, raise :class:`UnsafeFileError` naming ``what``."""
    try:
        return RestrictedUnpickler(file, allowed, what, kind, encoding=encoding).load()
    except UnsafeFileError:
        raise
    except Exception as e:  # noqa: BLE001 - truncated or corrupt bytes, or allowed types given nonsense arguments
        raise UnsafeFileError(what, f"not a valid {kind} pickle ({type(e).__name__}: {e})") from None


def pickle_globals(data: bytes, limit: int = 64) -> list[str]:
    """The ``module.name`` globals a pickle byte string asks for, read statically (``pickletools.genops``: nothing
    is imported or called). Several pickles in a row (PyTorch's legacy format) are scanned until bytes that are not
    a pickle; ``STACK_GLOBAL`` is resolved from the two strings pushed before it (memo look-ups are not followed).
    Used to name the offending global when a loader refuses a file."""
    found: list[str] = []
    pos = 0
    while pos < len(data) and len(found) < limit:
        strings: list[str] = []
        try:
            for op, arg, at in pickletools.genops(io.BytesIO(data[pos:])):
                if op.name == "GLOBAL":
                    found.append(str(arg).replace(" ", "."))
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    found.append(f"{strings[-2]}.{strings[-1]}")
                elif isinstance(arg, str | bytes) and ("UNICODE" in op.name or "STRING" in op.name):
                    strings.append(arg.decode("latin-1") if isinstance(arg, bytes) else str(arg))
                if op.name == "STOP":
                    pos += at + 1
                    break
            else:
                break
        except Exception:  # noqa: BLE001 - the rest is not a pickle (tensor bytes), or is corrupt
            break
    return found


_TORCH_DATA_GLOBALS = ("torch.", "collections.OrderedDict", "builtins.", "__builtin__.", "_codecs.encode",
                       "numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct",
                       "numpy.ndarray", "numpy.dtype")


def _suspicious_global(path: Path) -> str | None:
    """The first global in the pickle(s) of ``path`` (a plain or zipped PyTorch file) that is not a tensor or
    container type, or None."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                pkls = [n for n in z.namelist() if n.endswith(".pkl")]
                data = b"".join(z.read(n) for n in pkls[:4])
        else:
            data = path.read_bytes()[: 64 << 20]
    except (OSError, zipfile.BadZipFile):
        return None
    safe_builtins = {"set", "frozenset", "list", "dict", "tuple", "int", "float", "complex", "bool", "str",
                     "bytes", "bytearray", "slice"}
    for g in pickle_globals(data):
        if g.startswith(("builtins.", "__builtin__.")) and g.split(".", 1)[1] not in safe_builtins:
            return g
        if not g.startswith(_TORCH_DATA_GLOBALS):
            return g
    return None


#: file names that say "pickle" (also gzipped)
PICKLE_SUFFIXES = (".pkl", ".pickle", ".pkl.gz", ".pickle.gz")


def looks_like_pickle(head: bytes, *, zip_archive: bool = False) -> bool:
    """Whether the first bytes of a file are a pickle's: protocols 2-5 open with the ``PROTO`` opcode (0x80, then
    the protocol number). With ``zip_archive``, a zip archive counts too (PyTorch's format since 1.6 is a zip whose
    ``data.pkl`` is a pickle)."""
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return True
    return zip_archive and head[:4] == b"PK\x03\x04"


def is_pickle_file(path: str | Path) -> bool:
    """Whether ``path`` is a pickle, by its name (``.pkl``, ``.pickle``, also ``.gz``) or by its first bytes
    (:func:`looks_like_pickle`; read through gzip when the name ends in ``.gz``). Nothing is unpickled."""
    import gzip

    path = Path(path)
    if path.name.lower().endswith(PICKLE_SUFFIXES):
        return True
    try:
        opener = gzip.open if path.name.lower().endswith(".gz") else open
        with opener(path, "rb") as fh:
            head = fh.read(2)
    except (OSError, EOFError):
        return False
    return looks_like_pickle(head)


# --------------------------------------------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------------------------------------------


def load_torch_weights_only(path: str | Path) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)``: tensors, numbers, strings and plain
    containers only. A file that needs anything else (a pickle payload, a pickled ``nn.Module``) or is not a
    PyTorch file raises :class:`UnsafeFileError` naming the global it asked for; no traceback, no warning."""
    import torch

    path = Path(path)
    with warnings.catch_warnings():  # protocol-4 pickles make torch warn before it refuses them
        warnings.filterwarnings("ignore", message=".*pickle protocol.*", category=UserWarning)
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            bad = _suspicious_global(path)
            detail = f": contains a callable or class that is not allowed: {bad}" if bad else \
                " (torch.load(weights_only=True) refused it)"
            raise UnsafeFileError(path, NOT_WEIGHTS + detail) from None
        except FileNotFoundError:
            raise
        except Exception as e:  # noqa: BLE001 - corrupt or foreign bytes fail in many ways inside torch.load
            raise UnsafeFileError(path, f"{NOT_WEIGHTS} (unreadable as a PyTorch file: "
                                        f"{type(e).__name__}: {e})") from None


def load_safetensors(path: str | Path) -> dict[str, Any]:
    """Read a safetensors file to CPU tensors; a file that is not one (e.g. a pickle renamed ``.safetensors``)
    raises :class:`UnsafeFileError` (it is never handed to a pickle reader instead)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        if isinstance(e, FileNotFoundError) or not path.exists():
            raise
        try:
            with open(path, "rb") as f:
                head = f.read(4)
        except OSError:
            head = b""
        what = ("a pickle named .safetensors (refused: pickles can run code)"
                if looks_like_pickle(head, zip_archive=True) else f"not a safetensors file ({e})")
        raise UnsafeFileError(path, f"{NOT_WEIGHTS}: {what}") from None


def load_npy(path: str | Path, mmap_mode: str | None = None) -> Any:
    """``np.load(path, mmap_mode=..., allow_pickle=False)`` of a ``.npy`` file: numeric/str arrays only. An object
    array (which would need pickle) or a file that is not ``.npy`` raises :class:`UnsafeFileError` naming it."""
    import numpy as np

    path = Path(path)
    try:
        return np.load(path, mmap_mode=mmap_mode, allow_pickle=False)  # type: ignore[arg-type]
    except FileNotFoundError:
        raise
    except (ValueError, OSError, EOFError) as e:
        raise UnsafeFileError(path, f"not a plain numpy array file (object arrays need pickle, never allowed): "
                                    f"{e}") from None


# --------------------------------------------------------------------------------------------------------------
# Hugging Face folders
# --------------------------------------------------------------------------------------------------------------

_PICKLED_WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".th", ".ckpt")


@contextmanager
def hf_folder_guard(folder: str | Path) -> Iterator[None]:
    """Around ``from_pretrained`` / ``SentenceTransformer(folder)``: those read safetensors, or pickled
    ``pytorch_model.bin`` files with ``torch.load(weights_only=True)``. When that refuses a file, re-raise as one
    :class:`UnsafeFileError` naming the pickled weight file in ``folder`` (or a module subfolder) that holds a
    disallowed global, instead of PyTorch's long message; the "pickle protocol" warning is silenced."""
    folder = Path(folder)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*pickle protocol.*", category=UserWarning)
        try:
            yield
        except pickle.UnpicklingError:
            candidates = sorted(p for pattern in ("*", "*/*") for p in folder.glob(pattern)
                                if p.is_file() and p.suffix in _PICKLED_WEIGHT_SUFFIXES) if folder.is_dir() else []
            for p in candidates:
                bad = _suspicious_global(p)
                if bad:
                    raise UnsafeFileError(p, f"{NOT_WEIGHTS}: contains a callable or class that is not allowed: "
                                             f"{bad}") from None
            culprit = candidates[0] if candidates else folder
            raise UnsafeFileError(culprit, f"{NOT_WEIGHTS} (torch.load(weights_only=True) refused it)") from None


# --------------------------------------------------------------------------------------------------------------
# Config keys
# --------------------------------------------------------------------------------------------------------------


@contextmanager
def config_key(key: str) -> Iterator[None]:
    """Attach the config key a file came from: an :class:`UnsafeFileError` raised inside becomes
    ``distill.config.ConfigError("<key>: <path>: <reason>")`` (one line on the command line)."""
    try:
        yield
    except UnsafeFileError as e:
        from distill.core.errors import ConfigError

        raise ConfigError(f"{key}: {e.path}: {e.reason}") from None
