"""Name the globals a checkpoint's pickle needs, and where they sit in the container, without
importing or calling anything: every global becomes an inert stand-in class."""

from __future__ import annotations

import functools
import io
import pickle
import zipfile
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Globals torch's weights_only unpickler accepts (the prefixes of their qualified names).
_SAFE = ("torch.", "collections.OrderedDict", "builtins.set", "builtins.frozenset",
         "builtins.bytearray", "builtins.complex", "builtins.slice", "builtins.range",
         "_codecs.encode")
# torch globals that weights_only nevertheless refuses (FSDP's ShardedTensor, DTensor, ...)
_REFUSED = ("torch.distributed.",)

_NUMPY_DTYPES = {"f2": "Float16", "f4": "Float32", "f8": "Float64", "i1": "Int8", "i2": "Int16",
                 "i4": "Int32", "i8": "Int64", "u1": "UInt8", "u2": "UInt16", "u4": "UInt32",
                 "u8": "UInt64", "b1": "Bool", "c8": "Complex64", "c16": "Complex128"}


class Stub:
    """An instance of a global the checkpoint names; records its arguments, runs nothing."""

    qualname = "?"
    args: tuple[Any, ...] = ()  # unset when the pickle builds it without calling it
    state: Any = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args

    @property
    def items(self) -> dict[Any, Any]:
        items: dict[Any, Any] = self.__dict__.setdefault("_items", {})
        return items

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __call__(self, *args: Any, **kwargs: Any) -> Stub:
        """A call of something the pickle built (``getattr(Path, 'touch')(...)``)."""
        stub: Stub = type("call", (Stub,), {"qualname": self.describe()})(*args)
        return stub

    def describe(self) -> str:
        if self.qualname in ("builtins.getattr", "__builtin__.getattr") and len(self.args) == 2:
            owner, attribute = self.args
            return f"{getattr(owner, 'qualname', type(owner).__name__)}.{attribute}"
        return self.qualname

    def __setitem__(self, key: Any, value: Any) -> None:  # dict subclasses (SETITEMS)
        self.items[key] = value

    def append(self, value: Any) -> None:  # list subclasses (APPENDS)
        self.items[len(self.items)] = value

    def extend(self, values: Any) -> None:
        for value in values:
            self.append(value)


def _stand_in_getattr(owner: Any, attribute: Any, *_: Any) -> type[Stub]:
    """``getattr(Global, 'name')`` in a pickle (a nested class, a classmethod): a stand-in class
    named ``Global.name``, so building, calling or ``NEWOBJ`` of it runs nothing either."""
    owner_name = getattr(owner, "qualname", type(owner).__name__)
    return type(str(attribute), (Stub,), {"qualname": f"{owner_name}.{attribute}"})


class StandInDict(dict[Any, Any]):
    """An OrderedDict stand-in that takes attributes (a state_dict's ``_metadata``)."""


@dataclass(frozen=True)
class StorageRecord:
    """A tensor storage the pickle refers to: ``('storage', type, key, location, numel)``."""

    storage_type: str  # the global naming its element type: ``torch.FloatStorage``
    key: str  # its entry in the archive's ``data/`` directory
    location: str
    numel: int


class _Scanner(pickle.Unpickler):
    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self.locations: Counter[str] = Counter()

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return StandInDict  # a plain container: nothing to run
        if (module, name) in (("builtins", "getattr"), ("__builtin__", "getattr")):
            return _stand_in_getattr
        return type(name, (Stub,), {"qualname": f"{module}.{name}"})

    def persistent_load(self, pid: Any) -> Any:
        """A tensor storage record, ``('storage', type, key, location, numel, ...)``: its
        device tag is counted, its data never read."""
        if isinstance(pid, tuple) and len(pid) > 3 and pid[0] == "storage":
            self.locations[str(pid[3])] += 1
            numel = pid[4] if len(pid) > 4 and isinstance(pid[4], int) else -1
            return StorageRecord(getattr(pid[1], "qualname", "?"), str(pid[2]), str(pid[3]),
                                 numel)
        return None


def unsafe_globals(path: Path) -> list[tuple[str, str]]:
    """(container path, global) for each global weights_only would refuse."""
    scanned = scan(path)
    return [] if scanned is None else sorted(set(_walk(scanned.root, "")))


def storage_locations(path: Path) -> dict[str, int]:
    """How many tensor storages the file tags with each device (``{'cpu': 10, 'cuda:0': 2}``)."""
    scanned = scan(path)
    return {} if scanned is None else dict(scanned.locations)


@dataclass(frozen=True)
class Scanned:
    """A scanned file: its container (globals as stand-ins, storages as
    :class:`StorageRecord`), the device tags of its storages, and for a zip file the
    archive's directory prefix (``archive/``) and the size of each entry."""

    root: Any
    locations: Counter[str]
    prefix: str | None = None
    sizes: Mapping[str, int] = field(default_factory=dict)


def scan(path: Path) -> Scanned | None:
    """The container of a torch zip or legacy file, every global a stand-in; ``None`` when
    it cannot be read that way. One scan per version of a file (path, size, mtime, inode):
    ``show`` reads a file's manifest, container and notes from the same scan."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return _scan_version(str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino)


@functools.lru_cache(maxsize=8)
def _scan_version(path: str, size: int, mtime_ns: int, inode: int) -> Scanned | None:
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                names = [name for name in archive.namelist() if name.endswith("/data.pkl")
                         or name == "data.pkl"]
                if not names:
                    return None
                scanner = _Scanner(io.BytesIO(archive.read(names[0])))
                return Scanned(scanner.load(), scanner.locations,
                               names[0].removesuffix("data.pkl"),
                               {info.filename: info.file_size for info in archive.infolist()})
        with open(path, "rb") as stream:  # legacy: magic, protocol, sys_info, then the data
            for _ in range(3):
                _Scanner(stream).load()
            scanner = _Scanner(stream)
            return Scanned(scanner.load(), scanner.locations)
    except Exception:
        return None


def _walk(value: Any, path: str, inside: bool = False) -> Iterator[tuple[str, str]]:
    if isinstance(value, Stub):
        if not value.describe().startswith(_SAFE) or value.describe().startswith(_REFUSED):
            yield path or "<root>", value.describe()
        if value.describe() == "numpy.dtype" and value.args and value.args[0] in _NUMPY_DTYPES:
            # torch also checks the class of the dtype it builds: numpy.dtypes.Float64DType
            yield path or "<root>", f"numpy.dtypes.{_NUMPY_DTYPES[value.args[0]]}DType"
        # what it was built from sits at the same place (a numpy scalar's dtype)
        yield from _walk(value.args, path, inside=True)
        yield from _walk(value.state, path, inside=True)
        yield from _walk(value.items, path)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _walk(item, f"{path}[{key!r}]")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _walk(item, path if inside else f"{path}[{index}]")
