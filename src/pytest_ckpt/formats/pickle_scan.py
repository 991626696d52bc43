"""Read one checkpoint pickle inert: every global becomes a stand-in class, nothing is
imported or called, and nothing a file does outlives its own scan (the stand-ins are made
afresh for each scan). The scan is bounded: the pickle's opcodes are checked before the
unpickler allocates (``pickle_bounds``) and the container it builds is checked for depth,
cycles and size before anything walks it. Where the pickle sits in a torch file (a zip's
``data.pkl``, a legacy file's third pickle) is ``torch_file``'s business.
"""

from __future__ import annotations

import io
import itertools
import pickle
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from pytest_ckpt.errors import CheckpointReadError
from pytest_ckpt.formats.pickle_bounds import check_opcodes, check_structure

# Globals torch's weights_only unpickler accepts (the prefixes of their qualified names).
_SAFE = ("torch.", "collections.OrderedDict", "builtins.set", "builtins.frozenset",
         "builtins.bytearray", "builtins.complex", "builtins.slice", "builtins.range",
         "_codecs.encode")
# torch globals that weights_only nevertheless refuses (FSDP's ShardedTensor, DTensor, ...)
_REFUSED = ("torch.distributed.",)

_NUMPY_DTYPES = {"f2": "Float16", "f4": "Float32", "f8": "Float64", "i1": "Int8", "i2": "Int16",
                 "i4": "Int32", "i8": "Int64", "u1": "UInt8", "u2": "UInt16", "u4": "UInt32",
                 "u8": "UInt64", "b1": "Bool", "c8": "Complex64", "c16": "Complex128"}
MAX_PICKLE_BYTES = 256 << 20  # a data.pkl (or DCP .metadata) larger than this is refused
MAX_STAND_INS = 10_000  # distinct globals one pickle may name (real checkpoints: < 50)
MAX_BUILT = 1_000_000  # objects built from globals (a tensor takes one or two)
_STORAGE_ITEMSIZE = {"DoubleStorage": 8, "FloatStorage": 4, "HalfStorage": 2,
                     "BFloat16Storage": 2, "LongStorage": 8, "IntStorage": 4, "ShortStorage": 2,
                     "CharStorage": 1, "ByteStorage": 1, "BoolStorage": 1,
                     "ComplexFloatStorage": 8, "ComplexDoubleStorage": 16,
                     "UntypedStorage": 1}


class Stub:
    """An instance of a global the checkpoint names; records its arguments, runs nothing."""

    __slots__ = ("_items", "args", "state")
    qualname = "?"
    made: Callable[[], None] = staticmethod(lambda: None)  # a scan counts what it builds
    _items: dict[Any, Any] | None
    args: tuple[Any, ...]
    state: Any

    def __new__(cls, *args: Any, **kwargs: Any) -> Stub:
        cls.made()
        return super().__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args

    def __getattr__(self, name: str) -> Any:  # slots a pickle never set: as if empty
        if name == "args":
            return ()
        if name in ("state", "_items"):
            return None
        raise AttributeError(name)

    @property
    def items(self) -> dict[Any, Any]:
        if self._items is None:
            self._items = {}
        return self._items

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __call__(self, *args: Any, **kwargs: Any) -> Stub:
        """A call of something the pickle built (``partial(os.system, ...)()``): a stand-in
        of the same global, holding the call's arguments."""
        return type(self)(*args)

    def describe(self) -> str:
        return type(self).qualname

    def __setitem__(self, key: Any, value: Any) -> None:  # dict subclasses (SETITEMS)
        self.items[key] = value

    def append(self, value: Any) -> None:  # list subclasses (APPENDS)
        self.items[len(self.items)] = value


class StandInDict(dict[Any, Any]):
    """An OrderedDict stand-in that takes attributes (a state_dict's ``_metadata``); each scan
    uses its own subclass."""


@dataclass(frozen=True)
class StorageRecord:
    """A tensor storage the pickle refers to: ``('storage', type, key, location, numel)``."""

    storage_type: str  # the global naming its element type: ``torch.FloatStorage``
    key: str  # its entry in the archive's ``data/`` directory
    location: str
    numel: int

    @property
    def nbytes(self) -> int | None:
        """The bytes the record says the storage holds, when its element type is known."""
        itemsize = _STORAGE_ITEMSIZE.get(self.storage_type.rpartition(".")[2])
        return None if itemsize is None or self.numel < 0 else self.numel * itemsize


class StandIns:
    """The stand-in classes of one scan, made on first use and at most ``MAX_STAND_INS``."""

    def __init__(self, source: Path) -> None:
        self.source = source
        self.classes: dict[str, type[Stub]] = {}
        self.dict_type = type("OrderedDict", (StandInDict,), {})
        self.built = 0

    def named(self, qualname: str) -> type[Stub]:
        if qualname not in self.classes:
            if len(self.classes) >= MAX_STAND_INS:
                raise CheckpointReadError(self.source, f"names more than {MAX_STAND_INS:,} "
                                          "distinct globals: refused as a memory bomb")
            self.classes[qualname] = type(qualname.rpartition(".")[2] or "?", (Stub,), {
                "__slots__": (), "qualname": qualname, "made": staticmethod(self.made)})
        return self.classes[qualname]

    def made(self) -> None:
        """Count one object built from a global (a tensor takes one or two)."""
        self.built += 1
        if self.built > MAX_BUILT:
            raise CheckpointReadError(self.source, f"builds more than {MAX_BUILT:,} objects "
                                      "from its globals: refused as a memory bomb")

    def getattr_function(self) -> Callable[..., type[Stub]]:
        """``getattr(Global, 'name')`` in a pickle (a nested class, a classmethod): a stand-in
        class named ``Global.name``, so building, calling or ``NEWOBJ`` of it runs nothing."""
        def stand_in_getattr(owner: Any, attribute: Any, *_: Any) -> type[Stub]:
            owner_name = getattr(owner, "qualname", type(owner).__name__)
            return self.named(f"{owner_name}.{attribute}")

        return stand_in_getattr


class Scanner(pickle.Unpickler):
    def __init__(self, stream: BinaryIO, stand_ins: StandIns) -> None:
        super().__init__(stream)
        self.locations: Counter[str] = Counter()
        self.storages: list[StorageRecord] = []
        self.stand_ins = stand_ins

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return self.stand_ins.dict_type  # a plain container: nothing to run
        if (module, name) in (("builtins", "getattr"), ("__builtin__", "getattr")):
            return self.stand_ins.getattr_function()
        return self.stand_ins.named(f"{module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        """A tensor storage record, ``('storage', type, key, location, numel, ...)``: its
        device tag is counted, its data never read."""
        if isinstance(pid, tuple) and len(pid) > 3 and pid[0] == "storage":
            self.locations[str(pid[3])] += 1
            numel = pid[4] if len(pid) > 4 and type(pid[4]) is int else -1
            record = StorageRecord(getattr(pid[1], "qualname", "?"), str(pid[2]), str(pid[3]),
                                   numel)
            self.storages.append(record)
            return record
        return None


@dataclass(frozen=True)
class Scanned:
    """A scanned file: its container (globals as stand-ins, storages as
    :class:`StorageRecord`), the device tags of its storages, and for a zip file the
    archive's directory prefix (``archive/``) and the size of each entry."""

    root: Any
    locations: Counter[str]
    prefix: str | None = None
    sizes: Mapping[str, int] = field(default_factory=dict)
    storages: tuple[StorageRecord, ...] = ()


def unsafe_globals(scanned: Scanned) -> list[tuple[str, str]]:
    """(container path, global) for each global weights_only would refuse."""
    return sorted(set(_walk(scanned.root, "")))


def scan_pickle_bytes(data: bytes, source: Path, *, prefix: str | None = None,
                      sizes: Mapping[str, int] | None = None) -> Scanned:
    """Scan one pickle held in memory (a zip's ``data.pkl``), bounds first."""
    check_opcodes(data, source, None if prefix is None else f"{prefix}data.pkl")
    scanner = Scanner(io.BytesIO(data), StandIns(source))
    root = load_scanned(scanner, source)
    check_structure(root, source, scanned_children)
    return Scanned(root, scanner.locations, prefix, dict(sizes or {}),
                   tuple(scanner.storages))


def load_scanned(scanner: Scanner, source: Path) -> Any:
    try:
        return scanner.load()
    except CheckpointReadError:
        raise
    except Exception as error:  # anything a crafted pickle provokes in the stand-ins
        raise CheckpointReadError(source, f"holds a malformed pickle ({type(error).__name__}: "
                                  f"{str(error)[:120]}); nothing from it was executed") from None


def scanned_children(value: Any) -> Iterable[Any] | None:
    """What a walker of a scanned container visits under ``value``; ``None`` for a leaf."""
    if isinstance(value, dict):
        extra = vars(value).values() if isinstance(value, StandInDict) else ()
        return itertools.chain(value.keys(), value.values(), extra)
    if isinstance(value, (list, tuple, set, frozenset)):
        return value
    if isinstance(value, Stub):
        return [part for part in (value.args, value.state, value._items) if part]
    return None


# -- the globals a weights_only load refuses -----------------------------------------------

MAX_PLACES = 1000  # refused globals listed at most


def _walk(root: Any, path: str) -> Iterator[tuple[str, str]]:
    """(place, global) of every refused global under ``root``, at most ``MAX_PLACES``; one
    iterator per level, so memory follows the depth (bounded by the scan), not the breadth."""
    stack = [iter([(root, path, False)])]
    found = 0
    while stack and found < MAX_PLACES:
        item = next(stack[-1], None)
        if item is None:
            stack.pop()
            continue
        value, place, inside = item
        if isinstance(value, Stub):
            for refusal in _refused(value, place):
                found += 1
                yield refusal
            # what it was built from sits at the same place (a numpy scalar's dtype)
            parts = [(value.args, place, True), (value.state, place, True),
                     (value._items or {}, place, False)]
            stack.append(iter(parts))
        elif isinstance(value, (dict, list, tuple)):
            stack.append(_entries(value, place, inside))


def _entries(value: Any, place: str, inside: bool) -> Iterator[tuple[Any, str, bool]]:
    """A container's entries and their places (a stub's argument tuple shares its place)."""
    if isinstance(value, dict):
        for key, entry in value.items():
            yield entry, f"{place}[{key!r}]", False
        return
    for index, entry in enumerate(value):
        yield entry, place if inside else f"{place}[{index}]", False


def _refused(stub: Stub, path: str) -> Iterator[tuple[str, str]]:
    name = stub.describe()
    if not name.startswith(_SAFE) or name.startswith(_REFUSED):
        yield path or "<root>", name
    args = stub.args
    if name == "numpy.dtype" and args and isinstance(args[0], str) and args[0] in _NUMPY_DTYPES:
        # torch also checks the class of the dtype it builds: numpy.dtypes.Float64DType
        yield path or "<root>", f"numpy.dtypes.{_NUMPY_DTYPES[args[0]]}DType"
