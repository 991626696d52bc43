"""Read a torch checkpoint's pickle inert: every global becomes a stand-in class, nothing is
imported or called, and nothing a file does outlives its own scan (the stand-ins are made
afresh for each scan). The scan is bounded: the pickle's opcodes are checked before the
unpickler allocates (``pickle_bounds``) and the container it builds is checked for depth,
cycles and size before anything walks it. A file that fails any bound is refused by name.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import pickle
import pickletools
import struct
import zipfile
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from pytest_ckpt.errors import CheckpointReadError
from pytest_ckpt.formats.files import open_regular
from pytest_ckpt.pickle_bounds import check_opcodes, check_structure

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
MAX_RATIO = 200  # a compressed zip entry may inflate to at most this many times its size
MAX_STAND_INS = 10_000  # distinct globals one pickle may name (real checkpoints: < 50)
MAX_BUILT = 1_000_000  # objects built from globals (a tensor takes one or two)
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
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


class _StandIns:
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


class _Scanner(pickle.Unpickler):
    def __init__(self, stream: BinaryIO, stand_ins: _StandIns) -> None:
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


def storage_locations(path: Path) -> dict[str, int]:
    """How many tensor storages the file tags with each device (``{'cpu': 10, 'cuda:0': 2}``)."""
    return dict(scan(path).locations)


_CACHE: OrderedDict[tuple[Any, ...], Scanned] = OrderedDict()
_CACHE_SIZE = 2  # show reads one file's scan several times; keep little else


def scan(path: Path) -> Scanned:
    """The container of a torch zip or legacy file, every global a stand-in; a
    :class:`CheckpointReadError` naming the file when it is not one, is damaged, or breaks a
    bound. Scans of a zip are kept by content (the pickle's sha256 and the archive's
    directory), so ``show`` reads a file's manifest, container and notes from one scan and
    a file swapped in place is never mistaken for the one it replaced."""
    with open_regular(path) as handle:
        return scan_stream(handle, path)


def scan_stream(handle: BinaryIO, source: Path) -> Scanned:
    """:func:`scan` of an open file or an in-memory one (``source`` names it in errors)."""
    head = handle.read(4)
    handle.seek(0)
    if head != b"PK\x03\x04" and not zipfile.is_zipfile(handle):
        return _scan_legacy(handle, source)
    prefix, data, sizes = read_zip_pickle(handle, source)
    key = (hashlib.sha256(data).digest(), prefix, tuple(sorted(sizes.items())))
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    scanned = scan_pickle_bytes(data, source, prefix=prefix, sizes=sizes)
    _CACHE[key] = scanned
    if len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return scanned


def scan_pickle_bytes(data: bytes, source: Path, *, prefix: str | None = None,
                      sizes: Mapping[str, int] | None = None) -> Scanned:
    """Scan one pickle held in memory (a zip's ``data.pkl``), bounds first."""
    check_opcodes(data, source, None if prefix is None else f"{prefix}data.pkl")
    scanner = _Scanner(io.BytesIO(data), _StandIns(source))
    root = _load(scanner, source)
    check_structure(root, source, _children)
    return Scanned(root, scanner.locations, prefix, dict(sizes or {}),
                   tuple(scanner.storages))


def _load(scanner: _Scanner, source: Path) -> Any:
    try:
        return scanner.load()
    except CheckpointReadError:
        raise
    except Exception as error:  # anything a crafted pickle provokes in the stand-ins
        raise CheckpointReadError(source, f"holds a malformed pickle ({type(error).__name__}: "
                                  f"{str(error)[:120]}); nothing from it was executed") from None


def _children(value: Any) -> Iterable[Any] | None:
    """What a walker of a scanned container visits under ``value``; ``None`` for a leaf."""
    if isinstance(value, dict):
        extra = vars(value).values() if isinstance(value, StandInDict) else ()
        return itertools.chain(value.keys(), value.values(), extra)
    if isinstance(value, (list, tuple, set, frozenset)):
        return value
    if isinstance(value, Stub):
        return [part for part in (value.args, value.state, value._items) if part]
    return None


# -- zip archives ------------------------------------------------------------------------

def read_zip_pickle(handle: BinaryIO, path: Path) -> tuple[str, bytes, dict[str, int]]:
    """The archive's directory prefix, the bytes of its ``data.pkl`` (size-checked against
    the zip directory and ``MAX_PICKLE_BYTES``, CRC-checked) and every entry's size."""
    total = handle.seek(0, io.SEEK_END)
    handle.seek(0)
    try:
        archive = zipfile.ZipFile(handle)
        infos = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError,
            NotImplementedError, struct.error) as error:
        raise CheckpointReadError(path, f"is corrupt or truncated (its zip directory is "
                                        f"missing or damaged: {str(error)[:120]})") from None
    pickles = [info for info in infos if info.filename.rpartition("/")[2] == "data.pkl"]
    if len(pickles) != 1:
        what = "no data.pkl entry" if not pickles else f"{len(pickles)} data.pkl entries"
        raise CheckpointReadError(path, f"is a zip archive with {what}: not a torch.save "
                                        "checkpoint")
    for info in infos:
        _check_entry(handle, info, total, path)
    entry = pickles[0]
    data = _read_entry(archive, entry, path)
    return (entry.filename.removesuffix("data.pkl"), data,
            {info.filename: info.file_size for info in infos})


def _check_entry(handle: BinaryIO, info: zipfile.ZipInfo, total: int, path: Path) -> None:
    """The entry's data lies inside the file, and a compressed entry is not a bomb."""
    if not 0 <= info.header_offset < total or info.compress_size < 0:
        raise CheckpointReadError(path, f"is corrupt: zip entry {info.filename} is said to "
                                        f"start at byte {info.header_offset:,} of {total:,}")
    handle.seek(info.header_offset)
    header = handle.read(30)
    if len(header) < 30 or header[:4] != b"PK\x03\x04":
        raise CheckpointReadError(path, f"is corrupt or truncated: zip entry {info.filename} "
                                        "has no local header where the directory says")
    name_length, extra_length = struct.unpack("<HH", header[26:30])
    end = info.header_offset + 30 + name_length + extra_length + info.compress_size
    if end > total:
        raise CheckpointReadError(path, f"is truncated: zip entry {info.filename} ends at byte "
                                        f"{end:,}, the file has {total:,}")
    if info.compress_type != zipfile.ZIP_STORED and \
            info.file_size > MAX_RATIO * max(info.compress_size, 1) + (1 << 20):
        raise CheckpointReadError(path, f"is a zip bomb: entry {info.filename} inflates from "
                                        f"{info.compress_size:,} to {info.file_size:,} bytes; "
                                        "refused without inflating it")


def _read_entry(archive: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path) -> bytes:
    if info.file_size > MAX_PICKLE_BYTES:
        raise CheckpointReadError(path, f"has a {info.filename} of {info.file_size:,} bytes, "
                                        f"over the {MAX_PICKLE_BYTES:,} a checkpoint's pickle "
                                        "may have: refused without reading it")
    try:
        with archive.open(info) as stream:
            data = stream.read(info.file_size + 1)  # the size is checked above
    except zipfile.BadZipFile as error:
        what = "fails its CRC-32 check" if "CRC" in str(error) else f"is corrupt ({error})"
        raise CheckpointReadError(path, f"is corrupt: its {info.filename} entry {what} (the "
                                        "file changed after it was written)") from None
    except (OSError, EOFError, ValueError, RuntimeError, NotImplementedError,
            zipfile.LargeZipFile) as error:  # RuntimeError: an entry flagged as encrypted
        raise CheckpointReadError(path, f"is corrupt: its {info.filename} entry cannot be read "
                                        f"({str(error)[:120]})") from None
    if len(data) != info.file_size:
        raise CheckpointReadError(path, f"is corrupt: its {info.filename} entry holds "
                                        f"{len(data):,} bytes, the zip directory says "
                                        f"{info.file_size:,}")
    return data


# -- legacy (non-zip) files --------------------------------------------------------------

def _scan_legacy(handle: BinaryIO, path: Path) -> Scanned:
    """Legacy ``torch.save`` (``_use_new_zipfile_serialization=False``): magic number,
    protocol, system info, then the container pickle and the storage keys. The pickles are
    read into memory (growing up to ``MAX_PICKLE_BYTES``) and bounds-checked one by one
    before each is unpickled; the storages' raw bytes after them are not read."""
    size = handle.seek(0, io.SEEK_END)
    handle.seek(0)
    head = handle.read(2)
    if not head.startswith(b"\x80") or head[1:2] not in (b"\x02", b"\x03", b"\x04", b"\x05"):
        raise not_a_checkpoint(path)
    parts = _legacy_pickles(handle, size, path)
    stand_ins = _StandIns(path)
    if _legacy_part(parts[0], path, stand_ins) != _LEGACY_MAGIC:
        raise not_a_checkpoint(path, "its first pickle is not torch's legacy magic number")
    for part in parts[1:3]:  # protocol version, system info
        _legacy_part(part, path, stand_ins)
    check_opcodes(parts[3], path)
    scanner = _Scanner(io.BytesIO(parts[3]), stand_ins)
    root = _load(scanner, path)
    check_structure(root, path, _children)
    declared = sum(record.nbytes or 0 for record in scanner.storages)
    if declared > size:
        raise CheckpointReadError(path, f"is truncated or corrupt: its storages claim "
                                        f"{declared:,} bytes, the file has {size:,}")
    return Scanned(root, scanner.locations, storages=tuple(scanner.storages))


def _legacy_pickles(handle: BinaryIO, size: int, path: Path) -> list[bytes]:
    """The first four pickles of a legacy file, found by their opcodes (nothing built)."""
    limit = min(size, MAX_PICKLE_BYTES)
    length = min(limit, 1 << 20)
    while True:
        handle.seek(0)
        data = handle.read(length)
        stream = io.BytesIO(data)
        ends: list[int] = []
        try:
            while len(ends) < 4:
                ends.append(_pickle_end(stream))
        except ValueError as error:
            if length < limit:
                length = min(limit, length * 4)
                continue
            why = "its header pickles cannot be read" if len(ends) < 3 else (
                f"its container pickle is malformed or truncated ({str(error)[:100]})")
            raise not_a_checkpoint(path, why) from None
        starts = [0, *ends[:-1]]
        return [data[start:end] for start, end in zip(starts, ends, strict=True)]


def _pickle_end(stream: io.BytesIO) -> int:
    for _ in pickletools.genops(stream):
        pass
    return stream.tell()


def _legacy_part(data: bytes, path: Path, stand_ins: _StandIns) -> Any:
    check_opcodes(data, path)
    scanner = _Scanner(io.BytesIO(data), stand_ins)
    try:
        return scanner.load()
    except Exception:
        raise not_a_checkpoint(path, "its header pickles cannot be read") from None


def not_a_checkpoint(path: Path, why: str = "") -> CheckpointReadError:
    detail = f" ({why})" if why else ""
    return CheckpointReadError(
        path, "is not a checkpoint: it is neither a torch zip file, a legacy torch file nor a "
              f"safetensors file{detail}", advice=(
            "fix: pass a file written by torch.save or safetensors' save_file, or a "
            "torch.distributed.checkpoint directory"))


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
