"""Broken, corrupt, truncated, inconsistent and wrong-type checkpoint inputs, made at test time.

``BROKEN[kind](directory)`` creates one input inside ``directory`` and returns its path: a file,
a directory (DCP kinds, and golden kinds, which return the ``__goldens__/test_m/test_x``
folder), a FIFO, a symlink or a path that does not exist. ``KIND_FORMAT[kind]`` is its family
("torch", "legacy", "safetensors", "dcp", "golden", "other") and ``expected_words(kind)`` a
lowercase word a good error message for it would contain ("" when there is no obvious one).

Give each kind its own directory (every golden kind writes the same ``__goldens__`` path).
The golden kinds hold ``golden_model()``'s state_dict and fingerprint ``golden_inputs()``: a
test must pass those as model and ``inputs=`` for the sidecar's outputs to be compared.
``other_fifo`` blocks whoever opens it for reading; ``torch_zip_bomb`` takes a few seconds
to write (it streams, ~1 MB of memory) and inflates to ``ZIP_BOMB_BYTES``.

Everything is generated from real ``torch.save`` / ``safetensors`` / ``dcp.save`` output and
then broken; no binary blob is stored. Random bytes come from ``random.Random(seed)``. The
pickles that are not what ``torch.save`` writes are built by ``_Pickler`` (``pickle``'s
pure-Python pickler that writes torch's storage ids and verbatim opcodes, ``_Raw``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import pickle
import pickletools
import random
import struct
import warnings
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from functools import cache
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

Maker = Callable[[Path], Path]
Builder = Callable[[Path], Path]

BROKEN: dict[str, Maker] = {}
KIND_FORMAT: dict[str, str] = {}
_WORDS: dict[str, str] = {}
_SUFFIX = {"torch": ".pt", "legacy": ".pt", "safetensors": ".safetensors", "dcp": "",
           "golden": "", "other": ".pt"}

GOLDEN_TEST = "tests/test_m.py::test_x"  # the node id the golden kinds' sidecars record
ZIP_BOMB_BYTES = 1_500_000_000  # what the zip bomb's data.pkl inflates to
_RAW_MEMO = 10_000  # memo indices used by verbatim opcodes, clear of the pickler's own
_ENTRY_ALIGNMENT = 64  # torch aligns stored zip entries to this many bytes


def _kind(name: str, family: str, words: str = "") -> Callable[[Builder], Builder]:
    """Register ``build(path)`` as kind ``name``; its maker passes ``directory / name+suffix``."""

    def register(build: Builder) -> Builder:
        if name in BROKEN:
            raise ValueError(f"kind {name!r} registered twice")

        def make(directory: Path) -> Path:
            if family == "golden":
                return build(Path(directory) / "__goldens__" / "test_m" / "test_x")
            return build(Path(directory) / f"{name}{_SUFFIX[family]}")

        make.__name__ = make.__qualname__ = name
        make.__doc__ = build.__doc__
        BROKEN[name] = make
        KIND_FORMAT[name] = family
        _WORDS[name] = words
        return build

    return register


def expected_words(kind: str) -> str:
    """A short lowercase word a good error message for ``kind`` contains, or ``""``."""
    return _WORDS[kind]


# -- shared helpers ------------------------------------------------------------------------

def _write(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` (parents created) and return ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _random(size: int, seed: int = 0) -> bytes:
    """``size`` reproducible random bytes."""
    return random.Random(seed).randbytes(size)


def _saved(obj: Any, **options: Any) -> bytes:
    """The bytes ``torch.save(obj, ..., **options)`` writes."""
    buffer = io.BytesIO()
    torch.save(obj, buffer, **options)
    return buffer.getvalue()


@cache
def _linear_state() -> dict[str, torch.Tensor]:
    """``nn.Linear(4, 3).state_dict()`` with seeded weights (the global RNG is left alone)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return nn.Linear(4, 3).state_dict()


def _checkpoint() -> dict[str, Any]:
    """The object every torch and legacy kind starts from."""
    return {"state_dict": _linear_state(), "epoch": 3}


# -- pickles torch.save would not write ----------------------------------------------------

class _Storage:
    """A float32 storage of the archive, pickled as torch's persistent id."""

    def __init__(self, key: str, numel: int, location: str = "cpu") -> None:
        self.key, self.numel, self.location = key, numel, location


class _Tensor:
    """A tensor pickled the way torch pickles one, with whatever size/stride/offset."""

    def __init__(self, storage: _Storage, offset: int, size: tuple[int, ...],
                 stride: tuple[int, ...]) -> None:
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def __reduce__(self) -> tuple[Any, ...]:
        return (torch._utils._rebuild_tensor_v2,
                (self.storage, self.offset, self.size, self.stride, False, OrderedDict()))


class _Raw:
    """Opcodes written verbatim where an object goes (they must push exactly one object)."""

    def __init__(self, ops: bytes) -> None:
        self.ops = ops


class _Pickler(pickle._Pickler):
    """Protocol-2 pickler that writes torch's storage ids and ``_Raw`` opcodes."""

    dispatch: ClassVar[dict[type, Callable[..., None]]] = dict(pickle._Pickler.dispatch)

    def persistent_id(self, obj: Any) -> Any:
        if isinstance(obj, _Storage):
            return ("storage", torch.FloatStorage, obj.key, obj.location, obj.numel)
        return None

    def save_raw(self, obj: _Raw) -> None:
        self.write(obj.ops)


_Pickler.dispatch[_Raw] = _Pickler.save_raw


def _pickled(obj: Any) -> bytes:
    """``obj`` pickled by ``_Pickler`` (protocol 2, as torch.save)."""
    buffer = io.BytesIO()
    _Pickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue()


def _weight(**changes: Any) -> _Tensor:
    """The Linear(4, 3) weight record (storage "0", 12 floats), with ``changes`` applied."""
    fields = {"storage": _Storage("0", 12), "offset": 0, "size": (3, 4), "stride": (4, 1)}
    return _Tensor(**{**fields, **changes})


def _bias(**changes: Any) -> _Tensor:
    """The Linear(4, 3) bias record (storage "1", 3 floats), with ``changes`` applied."""
    fields = {"storage": _Storage("1", 3), "offset": 0, "size": (3,), "stride": (1,)}
    return _Tensor(**{**fields, **changes})


def _state_pickle(*, weight: _Tensor | None = None, bias: _Tensor | None = None,
                  **extra: Any) -> bytes:
    """data.pkl of ``{"state_dict": {weight, bias}, "epoch": 3, **extra}`` over the base's
    storages; ``weight``/``bias`` replace the true records."""
    state = OrderedDict(weight=weight or _weight(), bias=bias or _bias())
    return _pickled({"state_dict": state, "epoch": 3, **extra})


def _cut_after(data: bytes, ops: bytes) -> bytes:
    """``data`` up to and including the one occurrence of ``ops``."""
    if data.count(ops) != 1:
        raise ValueError("the verbatim opcodes must occur exactly once")
    return data[: data.index(ops) + len(ops)]


# -- torch zip files -----------------------------------------------------------------------

@cache
def _torch_bytes() -> bytes:
    """A real ``torch.save`` zip of the base checkpoint (prefix ``archive/``)."""
    return _saved(_checkpoint())


def _entries(src: bytes) -> list[tuple[str, bytes]]:
    """The (name, data) entries of a zip, in order."""
    with zipfile.ZipFile(io.BytesIO(src)) as archive:
        return [(info.filename, archive.read(info)) for info in archive.infolist()]


def _entry_span(src: bytes, local: str) -> tuple[int, int]:
    """(start, size) in ``src`` of the stored data of entry ``<prefix>/<local>``."""
    with zipfile.ZipFile(io.BytesIO(src)) as archive:
        info = next(i for i in archive.infolist() if i.filename.split("/", 1)[1] == local)
    name_length, extra_length = struct.unpack_from("<HH", src, info.header_offset + 26)
    return info.header_offset + 30 + name_length + extra_length, info.compress_size


def _data_pkl() -> bytes:
    """The base's data.pkl."""
    return dict(_entries(_torch_bytes()))["archive/data.pkl"]


def _zip_info(name: str, deflate: bool, offset: int) -> zipfile.ZipInfo:
    """A ZipInfo for ``name``; a stored entry at ``offset`` gets torch's 64-byte alignment."""
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    if deflate:
        info.compress_type = zipfile.ZIP_DEFLATED
    else:
        padding = -(offset + 30 + len(name.encode()) + 4) % _ENTRY_ALIGNMENT
        info.extra = b"FB" + struct.pack("<H", padding) + bytes(padding)
    return info


def _rezip(src: bytes, dst: Path, *, replace: Mapping[str, bytes] | None = None,
           drop: Iterable[str] = (), rename: Callable[[str], str] | None = None,
           append: Iterable[tuple[str, bytes]] = (), deflate: Iterable[str] = ()) -> Path:
    """Copy the torch zip ``src`` to ``dst`` entry by entry. Entries are named below the
    archive's folder ("data.pkl", "data/0"): ``replace`` their data, ``drop`` them,
    ``rename`` full names, ``append`` more (duplicates allowed) or ``deflate`` them
    ("*": all)."""
    replacing, dropped, deflated = dict(replace or {}), set(drop), set(deflate)
    entries = _entries(src)
    prefix = entries[0][0].split("/", 1)[0]
    kept = []
    for name, data in entries:
        local = name.split("/", 1)[1]
        if local not in dropped:
            kept.append((rename(name) if rename else name, replacing.pop(local, data),
                         local in deflated or "*" in deflated))
    if replacing:
        raise ValueError(f"no entries {sorted(replacing)} to replace")
    kept += [(f"{prefix}/{local}", data, False) for local, data in append]
    dst.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(dst, "w") as out, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Duplicate name": two data.pkl is one of the kinds
        for name, data, compress in kept:
            out.writestr(_zip_info(name, compress, out.start_dir), data)
    return dst


def _with_pickle(path: Path, data_pkl: bytes) -> Path:
    """The base archive with its data.pkl replaced by ``data_pkl``."""
    return _rezip(_torch_bytes(), path, replace={"data.pkl": data_pkl})


def _truncated_torch(fraction: float) -> Builder:
    """A builder of the base torch zip cut to ``fraction`` of its bytes."""

    def build(path: Path) -> Path:
        data = _torch_bytes()
        return _write(path, data[: int(len(data) * fraction)])

    build.__doc__ = f"The torch zip truncated to {fraction:.0%} of its bytes."
    return build


for _fraction in (0.1, 0.5, 0.9):
    _kind(f"torch_truncated_{round(_fraction * 100)}", "torch", "truncated")(
        _truncated_torch(_fraction))


@_kind("torch_minus_1_byte", "torch", "truncated")
def _torch_minus_1_byte(path: Path) -> Path:
    """The torch zip without its last byte (the end-of-central-directory record is cut)."""
    return _write(path, _torch_bytes()[:-1])


@_kind("torch_no_central_directory", "torch", "truncated")
def _torch_no_central_directory(path: Path) -> Path:
    """Every entry intact, the central directory and its end record removed."""
    data = _torch_bytes()
    end = data.rfind(b"PK\x05\x06")
    (directory_start,) = struct.unpack_from("<I", data, end + 16)
    return _write(path, data[:directory_start])


@_kind("torch_no_data_pkl", "torch", "data.pkl")
def _torch_no_data_pkl(path: Path) -> Path:
    """The archive without its data.pkl entry."""
    return _rezip(_torch_bytes(), path, drop=["data.pkl"])


@_kind("torch_data_pkl_empty", "torch", "data.pkl")
def _torch_data_pkl_empty(path: Path) -> Path:
    """data.pkl is an empty entry."""
    return _with_pickle(path, b"")


@_kind("torch_data_pkl_random", "torch", "data.pkl")
def _torch_data_pkl_random(path: Path) -> Path:
    """data.pkl replaced by as many random bytes."""
    return _with_pickle(path, _random(len(_data_pkl())))


@_kind("torch_data_pkl_truncated", "torch", "truncated")
def _torch_data_pkl_truncated(path: Path) -> Path:
    """data.pkl cut in half (a valid zip holding a truncated pickle)."""
    data_pkl = _data_pkl()
    return _with_pickle(path, data_pkl[: len(data_pkl) // 2])


@_kind("torch_crc_mismatch", "torch", "crc")
def _torch_crc_mismatch(path: Path) -> Path:
    """One byte of data.pkl changed in place, CRC left: the weight's size (3, 4) reads (3, 5)."""
    data = bytearray(_torch_bytes())
    start, size = _entry_span(bytes(data), "data.pkl")
    size_tuple = b"K\x03K\x04\x86"  # BININT1 3, BININT1 4, TUPLE2
    if data[start:start + size].count(size_tuple) != 1:
        raise ValueError("the weight's size tuple is not unique in data.pkl")
    at = start + data[start:start + size].index(size_tuple) + 3
    data[at] = 5
    return _write(path, bytes(data))


@_kind("torch_storage_missing", "torch", "data/0")
def _torch_storage_missing(path: Path) -> Path:
    """The weight's storage entry data/0 removed."""
    return _rezip(_torch_bytes(), path, drop=["data/0"])


@_kind("torch_storage_short", "torch", "data/0")
def _torch_storage_short(path: Path) -> Path:
    """data/0 holds 20 of the 48 bytes its 12 floats need."""
    data = dict(_entries(_torch_bytes()))["archive/data/0"]
    return _rezip(_torch_bytes(), path, replace={"data/0": data[:20]})


@_kind("torch_storage_long", "torch", "data/0")
def _torch_storage_long(path: Path) -> Path:
    """data/0 holds 64 bytes more than its 12 floats."""
    data = dict(_entries(_torch_bytes()))["archive/data/0"]
    return _rezip(_torch_bytes(), path, replace={"data/0": data + _random(64)})


@_kind("torch_deflated_data_pkl", "torch")
def _torch_deflated_data_pkl(path: Path) -> Path:
    """data.pkl compressed with DEFLATE: legal zip, unusual for torch."""
    return _rezip(_torch_bytes(), path, deflate=["data.pkl"])


@_kind("torch_deflated_all", "torch")
def _torch_deflated_all(path: Path) -> Path:
    """Every entry, storages too, compressed with DEFLATE (not memory-mappable)."""
    return _rezip(_torch_bytes(), path, deflate=["*"])


@_kind("torch_zip_bomb", "torch")
def _torch_zip_bomb(path: Path) -> Path:
    """A valid data.pkl padded with a 1.5 GB string of NULs: ~1.5 MB DEFLATE-compressed."""
    header = b"X" + struct.pack("<I", ZIP_BOMB_BYTES)  # BINUNICODE, ZIP_BOMB_BYTES long
    data_pkl = _state_pickle(padding=_Raw(header))
    head = _cut_after(data_pkl, header)
    tail = data_pkl[len(head):]
    chunk = bytes(1 << 20)
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as out:
        for name, data in _entries(_torch_bytes()):
            if not name.endswith("/data.pkl"):
                out.writestr(_zip_info(name, False, out.start_dir), data)
                continue
            with out.open(_zip_info(name, True, out.start_dir), "w", force_zip64=True) as stream:
                # run-length DEFLATE: same output as zlib's default here, three times faster
                stream._compressor = zlib.compressobj(9, zlib.DEFLATED, -15, 8, zlib.Z_RLE)
                stream.write(head)
                for _ in range(ZIP_BOMB_BYTES // len(chunk)):
                    stream.write(chunk)
                stream.write(bytes(ZIP_BOMB_BYTES % len(chunk)))
                stream.write(tail)
    return path


@_kind("torch_memo_bomb", "torch")
def _torch_memo_bomb(path: Path) -> Path:
    """A small data.pkl with LONG_BINPUT 2**27: C's unpickler grows its memo to 2 GiB."""
    return _with_pickle(path, _state_pickle(pad=_Raw(b"K\x07r" + struct.pack("<I", 2**27))))


@_kind("torch_binbytes8_huge", "torch", "truncated")
def _torch_binbytes8_huge(path: Path) -> Path:
    """data.pkl ends in a BINBYTES8 declaring 2**40 bytes, 10 of them present."""
    ops = b"\x8e" + struct.pack("<Q", 2**40) + b"0123456789"
    return _with_pickle(path, _cut_after(_state_pickle(blob=_Raw(ops)), ops))


@_kind("torch_binunicode_huge", "torch", "truncated")
def _torch_binunicode_huge(path: Path) -> Path:
    """data.pkl ends in a BINUNICODE (which weights_only reads) declaring 4 GiB, 10 present."""
    ops = b"X" + struct.pack("<I", 2**32 - 1) + b"0123456789"
    return _with_pickle(path, _cut_after(_state_pickle(text=_Raw(ops)), ops))


@_kind("torch_self_reference", "torch")
def _torch_self_reference(path: Path) -> Path:
    """A list that contains itself, inside the state_dict (a real torch.save)."""
    loop: list[Any] = []
    loop.append(loop)
    return _write(path, _saved({"state_dict": {**_linear_state(), "loop": loop}, "epoch": 3}))


@_kind("torch_deep_nesting", "torch")
def _torch_deep_nesting(path: Path) -> Path:
    """Lists nested 100,000 deep (EMPTY_LIST x N, APPEND x N-1) beside the state_dict."""
    depth = 100_000
    return _with_pickle(path, _state_pickle(deep=_Raw(b"]" * depth + b"a" * (depth - 1))))


@_kind("torch_billion_laughs", "torch")
def _torch_billion_laughs(path: Path) -> Path:
    """A list holding the same list twice, 60 levels deep through memo GETs: 2**60 leaves."""
    levels = 60
    ops = bytearray(b"(]r" + struct.pack("<I", _RAW_MEMO))  # MARK, L0 = [], memo it
    for level in range(levels):
        below, here = (struct.pack("<I", _RAW_MEMO + i) for i in (level, level + 1))
        ops += b"](j" + below + b"j" + below + b"e" + b"r" + here  # L(k+1) = [Lk, Lk]
    ops += b"t"  # the levels as one tuple: the verbatim opcodes push one object
    top = b"j" + struct.pack("<I", _RAW_MEMO + levels)
    return _with_pickle(path, _state_pickle(levels=_Raw(bytes(ops)), laughs=_Raw(top)))


@_kind("torch_negative_size", "torch", "negative")
def _torch_negative_size(path: Path) -> Path:
    """The weight's size is (3, -4)."""
    return _with_pickle(path, _state_pickle(weight=_weight(size=(3, -4))))


@_kind("torch_huge_size", "torch", "storage")
def _torch_huge_size(path: Path) -> Path:
    """The bias claims 2**40 elements over its 12-byte storage."""
    return _with_pickle(path, _state_pickle(bias=_bias(size=(2**40,))))


@_kind("torch_offset_past_storage", "torch", "offset")
def _torch_offset_past_storage(path: Path) -> Path:
    """The bias starts at element 100 of its 3-element storage."""
    return _with_pickle(path, _state_pickle(bias=_bias(offset=100)))


@_kind("torch_stride_mismatch", "torch", "stride")
def _torch_stride_mismatch(path: Path) -> Path:
    """The weight has a 2-d size and a 1-d stride."""
    return _with_pickle(path, _state_pickle(weight=_weight(stride=(1,))))


@_kind("torch_cuda_storage", "torch", "cuda")
def _torch_cuda_storage(path: Path) -> Path:
    """The weight's storage is tagged for cuda:0 (this host has no CUDA)."""
    storage = _Storage("0", 12, location="cuda:0")
    return _with_pickle(path, _state_pickle(weight=_weight(storage=storage)))


@_kind("torch_unsafe_global", "torch", "builtins.print")
def _torch_unsafe_global(path: Path) -> Path:
    """data.pkl calls builtins.print (harmless, but weights_only must refuse it)."""
    message = b"hostile pickle: this ran"
    ops = b"cbuiltins\nprint\nX" + struct.pack("<I", len(message)) + message + b"\x85R"
    return _with_pickle(path, _state_pickle(hook=_Raw(ops)))


def _torch_top(obj: Any, doc: str) -> Builder:
    """A builder of a real torch.save of ``obj``."""

    def build(path: Path) -> Path:
        return _write(path, _saved(obj))

    build.__doc__ = doc
    return build


_kind("torch_top_int", "torch", "state_dict")(
    _torch_top(3, "A torch.save of the int 3."))
_kind("torch_top_list", "torch", "state_dict")(
    _torch_top(list(_linear_state().values()), "A torch.save of a list of tensors."))
_kind("torch_top_none", "torch", "state_dict")(
    _torch_top(None, "A torch.save of None."))
_kind("torch_top_string", "torch", "state_dict")(
    _torch_top("state_dict", "A torch.save of a string."))
_kind("torch_non_tensors", "torch", "tensor")(
    _torch_top({"a": 1}, 'A torch.save of {"a": 1}: a dict holding no tensor.'))
_kind("torch_int_keys", "torch", "key")(
    _torch_top(dict(enumerate(_linear_state().values())), "A state_dict keyed 0, 1."))
_kind("torch_tuple_keys", "torch", "key")(
    _torch_top({("layer", i): t for i, t in enumerate(_linear_state().values())},
               'A state_dict keyed ("layer", 0), ("layer", 1).'))


@_kind("torch_big_endian", "torch")
def _torch_big_endian(path: Path) -> Path:
    """The byteorder entry says "big" over little-endian data (torch byte-swaps: wrong values)."""
    return _rezip(_torch_bytes(), path, replace={"byteorder": b"big"})


@_kind("torch_future_version", "torch", "version")
def _torch_future_version(path: Path) -> Path:
    """The archive's version entry says 99."""
    return _rezip(_torch_bytes(), path, replace={"version": b"99\n"})


@_kind("torch_no_prefix", "torch")
def _torch_no_prefix(path: Path) -> Path:
    """Entry names without the common folder ("data.pkl", not "archive/data.pkl")."""
    return _rezip(_torch_bytes(), path, rename=lambda name: name.split("/", 1)[1])


@_kind("torch_mixed_prefix", "torch")
def _torch_mixed_prefix(path: Path) -> Path:
    """data/0 lives under another folder than the rest of the archive."""
    return _rezip(_torch_bytes(), path,
                  rename=lambda name: "other/data/0" if name.endswith("/data/0") else name)


@_kind("torch_two_data_pkl", "torch", "duplicate")
def _torch_two_data_pkl(path: Path) -> Path:
    """Two data.pkl entries: the first says epoch 3, the second epoch 4."""
    second = _pickled({"state_dict": OrderedDict(weight=_weight(), bias=_bias()), "epoch": 4})
    return _rezip(_torch_bytes(), path, append=[("data.pkl", second)])


@_kind("torch_trailing_garbage", "torch")
def _torch_trailing_garbage(path: Path) -> Path:
    """A valid torch zip followed by 1 KiB of random bytes."""
    return _write(path, _torch_bytes() + _random(1024))


@_kind("torch_leading_garbage", "torch")
def _torch_leading_garbage(path: Path) -> Path:
    """1 KiB of random bytes, then a valid torch zip (every offset now off by 1024)."""
    return _write(path, _random(1024) + _torch_bytes())


# -- legacy (non-zip) torch files ----------------------------------------------------------

@cache
def _legacy_bytes() -> bytes:
    """A real legacy ``torch.save(..., _use_new_zipfile_serialization=False)``."""
    return _saved(_checkpoint(), _use_new_zipfile_serialization=False)


def _legacy_pickle_ends(data: bytes) -> list[int]:
    """Where each of the five pickles (magic, protocol, sys_info, object, storage keys) ends."""
    stream, ends = io.BytesIO(data), []
    for _ in range(5):
        for _opcode in pickletools.genops(stream):
            pass
        ends.append(stream.tell())
    return ends


@_kind("legacy_truncated_50", "legacy", "truncated")
def _legacy_truncated_50(path: Path) -> Path:
    """The legacy file cut to half its bytes."""
    data = _legacy_bytes()
    return _write(path, data[: len(data) // 2])


@_kind("legacy_minus_1_byte", "legacy", "truncated")
def _legacy_minus_1_byte(path: Path) -> Path:
    """The legacy file without its last byte (inside the last storage)."""
    return _write(path, _legacy_bytes()[:-1])


@_kind("legacy_bad_magic", "legacy", "magic")
def _legacy_bad_magic(path: Path) -> Path:
    """The legacy magic number with one byte changed."""
    data = bytearray(_legacy_bytes())
    if data[2:4] != b"\x8a\x0a":  # LONG1 of 10 bytes: the magic number
        raise ValueError("unexpected legacy header")
    data[4] ^= 0xFF
    return _write(path, bytes(data))


@_kind("legacy_bad_protocol", "legacy", "protocol")
def _legacy_bad_protocol(path: Path) -> Path:
    """The legacy protocol version says 9999 (torch writes 1001)."""
    data = _legacy_bytes()
    magic_end, protocol_end = _legacy_pickle_ends(data)[:2]
    protocol = pickle.dumps(9999, protocol=2)
    return _write(path, data[:magic_end] + protocol + data[protocol_end:])


@_kind("legacy_storage_short", "legacy", "truncated")
def _legacy_storage_short(path: Path) -> Path:
    """The last storage declares 1000 more elements than the file holds."""
    data = bytearray(_legacy_bytes())
    position, last = _legacy_pickle_ends(bytes(data))[-1], -1
    while position < len(data):  # each storage: int64 element count, then float32 data
        last = position
        (count,) = struct.unpack_from("<q", data, position)
        position += 8 + 4 * count
    (count,) = struct.unpack_from("<q", data, last)
    struct.pack_into("<q", data, last, count + 1000)
    return _write(path, bytes(data))


# -- safetensors ---------------------------------------------------------------------------

@cache
def _safetensors_bytes() -> bytes:
    """A real safetensors file of ``{"a": zeros(2, 3), "b": ones(4)}``."""
    from safetensors.torch import save

    return bytes(save({"a": torch.zeros(2, 3), "b": torch.ones(4)}))


def _st_header() -> dict[str, Any]:
    """A fresh copy of the base file's header (a: [0, 24], b: [24, 40])."""
    data = _safetensors_bytes()
    (length,) = struct.unpack_from("<Q", data)
    header: dict[str, Any] = json.loads(data[8:8 + length])
    return header


def _st_data() -> bytes:
    """The base file's tensor bytes (40)."""
    data = _safetensors_bytes()
    (length,) = struct.unpack_from("<Q", data)
    return data[8 + length:]


def _rewrite_safetensors_header(path: Path, header: Any, *, data: bytes | None = None,
                                length: int | None = None) -> Path:
    """Write a safetensors file: ``header`` (dumped as JSON, or str/bytes verbatim) padded to
    8 bytes, then ``data`` (the base's tensor bytes); ``length`` overrides the length field."""
    if isinstance(header, str):
        text = header.encode()
    elif isinstance(header, bytes):
        text = header
    else:
        text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    size = len(text) if length is None else length
    body = _st_data() if data is None else data
    return _write(path, struct.pack("<Q", size) + text + body)


def _st_edit(edit: Callable[[dict[str, Any]], Any], doc: str) -> Builder:
    """A builder of the base file whose header ``edit`` changed in place."""

    def build(path: Path) -> Path:
        header = _st_header()
        edit(header)
        return _rewrite_safetensors_header(path, header)

    build.__doc__ = doc
    return build


def _set(entry: str, field: str, value: Any) -> Callable[[dict[str, Any]], Any]:
    """An edit that sets ``header[entry][field] = value``."""
    return lambda header: header[entry].__setitem__(field, value)


def _delete(entry: str, field: str) -> Callable[[dict[str, Any]], Any]:
    """An edit that deletes ``header[entry][field]``."""
    return lambda header: header[entry].__delitem__(field)


@_kind("st_header_length_past_eof", "safetensors", "header")
def _st_header_length_past_eof(path: Path) -> Path:
    """The 8-byte header length is 100 more than the whole file."""
    return _rewrite_safetensors_header(path, _st_header(),
                                       length=len(_safetensors_bytes()) + 100)


@_kind("st_header_length_2_63", "safetensors", "header")
def _st_header_length_2_63(path: Path) -> Path:
    """The 8-byte header length is 2**63."""
    return _rewrite_safetensors_header(path, _st_header(), length=2**63)


@_kind("st_header_length_zero", "safetensors", "header")
def _st_header_length_zero(path: Path) -> Path:
    """The header length is 0: the JSON text is read as tensor data."""
    data = _safetensors_bytes()
    return _write(path, struct.pack("<Q", 0) + data[8:])


@_kind("st_header_truncated", "safetensors", "truncated")
def _st_header_truncated(path: Path) -> Path:
    """The file ends in the middle of its JSON header."""
    data = _safetensors_bytes()
    (length,) = struct.unpack_from("<Q", data)
    return _write(path, data[: 8 + length // 2])


@_kind("st_only_length", "safetensors", "truncated")
def _st_only_length(path: Path) -> Path:
    """Only the 8 length bytes of the base file, nothing after them."""
    return _write(path, _safetensors_bytes()[:8])


@_kind("st_header_not_json", "safetensors", "header")
def _st_header_not_json(path: Path) -> Path:
    """The header is not JSON."""
    return _rewrite_safetensors_header(path, "this is not json, it is a header")


@_kind("st_header_not_utf8", "safetensors", "header")
def _st_header_not_utf8(path: Path) -> Path:
    """The header is bytes that are not UTF-8."""
    return _rewrite_safetensors_header(path, b'{"\xff\xfe": 1}')


@_kind("st_header_list", "safetensors", "header")
def _st_header_list(path: Path) -> Path:
    """The header is a JSON list, not an object."""
    return _rewrite_safetensors_header(path, list(_st_header().values()))


_ST_EDITS: list[tuple[str, str, Callable[[dict[str, Any]], Any], str]] = [
    ("st_entry_number", "header", lambda h: h.__setitem__("a", 5), 'The entry "a" is 5.'),
    ("st_entry_string", "header", lambda h: h.__setitem__("a", "F32"), 'The entry "a" is "F32".'),
    ("st_missing_dtype", "dtype", _delete("a", "dtype"), '"a" has no dtype.'),
    ("st_unknown_dtype", "f12", _set("a", "dtype", "F12"), '"a" has dtype "F12".'),
    ("st_missing_shape", "shape", _delete("a", "shape"), '"a" has no shape.'),
    ("st_negative_dim", "shape", _set("a", "shape", [2, -3]), '"a" has shape [2, -3].'),
    ("st_float_dim", "shape", _set("a", "shape", [2.0, 3]), '"a" has shape [2.0, 3].'),
    ("st_absurd_shape", "shape", _set("a", "shape", [2**62]), '"a" has shape [2**62].'),
    ("st_missing_offsets", "data_offsets", _delete("a", "data_offsets"),
     '"a" has no data_offsets.'),
    ("st_offsets_reversed", "offset", _set("a", "data_offsets", [24, 0]),
     '"a" has data_offsets [24, 0].'),
    ("st_offsets_strings", "offset", _set("a", "data_offsets", ["0", "24"]),
     '"a" has data_offsets ["0", "24"].'),
    ("st_offsets_three", "offset", _set("a", "data_offsets", [0, 24, 40]),
     '"a" has data_offsets [0, 24, 40].'),
    ("st_offsets_overlap", "overlap", _set("b", "data_offsets", [16, 32]),
     '"b" has data_offsets [16, 32], overlapping "a" at [0, 24].'),
    ("st_byte_size_mismatch", "size", _set("a", "shape", [2, 2]),
     '"a" has shape [2, 2] (16 bytes) over data_offsets [0, 24].'),
    ("st_metadata_not_str", "__metadata__",
     lambda h: h.__setitem__("__metadata__", {"epoch": 3, "nested": {"x": [1]}}),
     "__metadata__ maps to an int and a dict, not strings."),
    ("st_metadata_list", "__metadata__", lambda h: h.__setitem__("__metadata__", ["a"]),
     "__metadata__ is a list."),
]
for _name, _words, _edit, _doc in _ST_EDITS:
    _kind(_name, "safetensors", _words)(_st_edit(_edit, _doc))


@_kind("st_data_truncated", "safetensors", "truncated")
def _st_data_truncated(path: Path) -> Path:
    """The header is intact; the data ends at byte 30 of 40, inside "b"."""
    return _rewrite_safetensors_header(path, _st_header(), data=_st_data()[:30])


@_kind("st_gap", "safetensors")
def _st_gap(path: Path) -> Path:
    """8 unused bytes between "a" and "b" (non-contiguous offsets)."""
    header = _st_header()
    header["b"]["data_offsets"] = [32, 48]
    data = _st_data()
    return _rewrite_safetensors_header(path, header, data=data[:24] + bytes(8) + data[24:])


@_kind("st_duplicate_keys", "safetensors", "duplicate")
def _st_duplicate_keys(path: Path) -> Path:
    """The JSON object names "a" twice (written by hand)."""
    text = ('{"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},'
            '"a":{"dtype":"F32","shape":[4],"data_offsets":[24,40]}}')
    return _rewrite_safetensors_header(path, text)


@_kind("st_empty_header_trailing_data", "safetensors")
def _st_empty_header_trailing_data(path: Path) -> Path:
    """The header is ``{}``, followed by 40 bytes of data no entry describes."""
    return _rewrite_safetensors_header(path, {})


# -- torch.distributed.checkpoint directories -----------------------------------------------

def _dcp_save(path: Path) -> Path:
    """A real one-process DCP checkpoint of ``{"w": zeros(3, 2), "b": ones(4), "step": 7}``
    (``dcp.save``, or ``save_state_dict`` on torch < 2.2)."""
    import torch.distributed.checkpoint as dcp

    path.mkdir(parents=True, exist_ok=True)
    state = {"w": torch.zeros(3, 2), "b": torch.ones(4), "step": 7}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if hasattr(dcp, "save"):
            dcp.save(state, checkpoint_id=str(path))
        else:
            dcp.save_state_dict(state, dcp.FileSystemWriter(str(path)), no_dist=True)
    return path


def _data_file(path: Path) -> Path:
    """The one ``.distcp`` file of a DCP directory."""
    (found,) = path.glob("*.distcp")
    return found


def _rewrite_dcp_metadata(path: Path, mutate: Callable[[Any], Any]) -> Path:
    """Load ``path/.metadata`` with pickle, let ``mutate`` change it in place (or return a
    replacement) and ``pickle.dump`` it back, as DCP writes it."""
    metadata_file = path / ".metadata"
    with open(metadata_file, "rb") as stream:
        metadata = pickle.load(stream)
    replacement = mutate(metadata)
    with open(metadata_file, "wb") as stream:
        pickle.dump(metadata if replacement is None else replacement, stream)
    return path


def _storage_info(metadata: Any, fqn: str) -> Any:
    """The ``_StorageInfo`` (file, offset, length) of entry ``fqn``."""
    return next(info for index, info in metadata.storage_data.items() if index.fqn == fqn)


def _dcp_edit(mutate: Callable[[Any], Any], doc: str) -> Builder:
    """A builder of a real DCP directory whose metadata ``mutate`` changed."""

    def build(path: Path) -> Path:
        return _rewrite_dcp_metadata(_dcp_save(path), mutate)

    build.__doc__ = doc
    return build


def _set_field(target: Callable[[Any], Any], field: str, value: Any) -> Callable[[Any], None]:
    """A mutation setting ``field`` of ``target(metadata)`` (frozen dataclasses too)."""
    return lambda metadata: object.__setattr__(target(metadata), field, value)


def _storage(fqn: str) -> Callable[[Any], Any]:
    """Picks the ``_StorageInfo`` of ``fqn`` out of the metadata."""
    return lambda metadata: _storage_info(metadata, fqn)


def _tensor_meta(fqn: str) -> Callable[[Any], Any]:
    """Picks the ``TensorStorageMetadata`` of ``fqn`` out of the metadata."""
    return lambda metadata: metadata.state_dict_metadata[fqn]


def _chunk(fqn: str) -> Callable[[Any], Any]:
    """Picks the one ``ChunkStorageMetadata`` of ``fqn`` out of the metadata."""
    return lambda metadata: metadata.state_dict_metadata[fqn].chunks[0]


def _set_entry(fqn: str, value: Any) -> Callable[[Any], None]:
    """A mutation replacing ``state_dict_metadata[fqn]`` by ``value``."""
    return lambda metadata: metadata.state_dict_metadata.__setitem__(fqn, value)


def _without_storage(fqn: str) -> Callable[[Any], None]:
    """A mutation dropping the storage record of ``fqn``."""

    def mutate(metadata: Any) -> None:
        for index in [index for index in metadata.storage_data if index.fqn == fqn]:
            del metadata.storage_data[index]

    return mutate


def _chunk_moved(fqn: str, offsets: tuple[int, ...]) -> Callable[[Any], None]:
    """A mutation moving the one chunk of ``fqn`` to ``offsets`` (its storage key too)."""

    def mutate(metadata: Any) -> None:
        object.__setattr__(_chunk(fqn)(metadata), "offsets", torch.Size(offsets))
        (index,) = [index for index in metadata.storage_data if index.fqn == fqn]
        moved = dataclasses.replace(index, offset=torch.Size(offsets))
        metadata.storage_data[moved] = metadata.storage_data.pop(index)

    return mutate


def _huge(fqn: str) -> Callable[[Any], None]:
    """A mutation declaring ``fqn`` and its one chunk [2**20, 2**20] (2**40 elements)."""

    def mutate(metadata: Any) -> None:
        object.__setattr__(_tensor_meta(fqn)(metadata), "size", torch.Size([2**20, 2**20]))
        object.__setattr__(_chunk(fqn)(metadata), "sizes", torch.Size([2**20, 2**20]))

    return mutate


_DCP_EDITS: list[tuple[str, str, Callable[[Any], Any], str]] = [
    ("dcp_path_traversal", "path", _set_field(_storage("w"), "relative_path", "../../etc/passwd"),
     'The storage of "w" is "../../etc/passwd".'),
    ("dcp_absolute_path", "path", _set_field(_storage("w"), "relative_path", "/etc/passwd"),
     'The storage of "w" is the absolute path "/etc/passwd".'),
    ("dcp_offset_past_end", "offset", _set_field(_storage("w"), "offset", 1 << 20),
     'The data of "w" starts 1 MiB into a ~4 KB file.'),
    ("dcp_negative_length", "length", _set_field(_storage("w"), "length", -1),
     'The data of "w" is -1 bytes long.'),
    ("dcp_negative_dim", "negative", _set_field(_tensor_meta("w"), "size", torch.Size([3, -2])),
     '"w" is declared with size [3, -2].'),
    ("dcp_chunk_out_of_bounds", "chunk", _set_field(_chunk("w"), "sizes", torch.Size([4, 2])),
     'The one chunk of "w" [3, 2] is declared [4, 2] at offset [0, 0]: past the tensor.'),
    ("dcp_chunk_offset_out_of_bounds", "chunk", _chunk_moved("w", (1, 0)),
     'The one chunk of "w" [3, 2] sits at offset [1, 0] (its storage key too): past the tensor.'),
    ("dcp_huge_tensor", "", _huge("w"),
     '"w" (and its chunk) declared [2**20, 2**20]: 2**40 elements, 4 TiB to allocate.'),
    ("dcp_state_dict_metadata_list", "metadata",
     lambda m: object.__setattr__(m, "state_dict_metadata", list(m.state_dict_metadata.values())),
     "state_dict_metadata is a list, not a dict."),
    ("dcp_entry_int", "metadata", _set_entry("w", 5), 'The metadata of "w" is the int 5.'),
    ("dcp_storage_record_missing", "", _without_storage("w"),
     '"w" is declared but has no storage record.'),
]
for _name, _words, _mutate, _doc in _DCP_EDITS:
    _kind(_name, "dcp", _words)(_dcp_edit(_mutate, _doc))


@_kind("dcp_metadata_missing", "dcp", "metadata")
def _dcp_metadata_missing(path: Path) -> Path:
    """A DCP directory without its .metadata."""
    (_dcp_save(path) / ".metadata").unlink()
    return path


@_kind("dcp_metadata_empty", "dcp", "metadata")
def _dcp_metadata_empty(path: Path) -> Path:
    """.metadata is an empty file."""
    _write(_dcp_save(path) / ".metadata", b"")
    return path


@_kind("dcp_metadata_truncated", "dcp", "truncated")
def _dcp_metadata_truncated(path: Path) -> Path:
    """.metadata cut in half."""
    metadata = _dcp_save(path) / ".metadata"
    _write(metadata, metadata.read_bytes()[: metadata.stat().st_size // 2])
    return path


@_kind("dcp_metadata_random", "dcp", "metadata")
def _dcp_metadata_random(path: Path) -> Path:
    """.metadata is 1 KiB of random bytes."""
    _write(_dcp_save(path) / ".metadata", _random(1024))
    return path


@_kind("dcp_metadata_plain_dict", "dcp", "metadata")
def _dcp_metadata_plain_dict(path: Path) -> Path:
    """.metadata is a pickle of a plain dict, not a DCP Metadata."""
    _write(_dcp_save(path) / ".metadata", pickle.dumps({"w": [3, 2], "b": [4]}))
    return path


@_kind("dcp_metadata_none", "dcp", "metadata")
def _dcp_metadata_none(path: Path) -> Path:
    """.metadata is a pickle of None."""
    _write(_dcp_save(path) / ".metadata", pickle.dumps(None))
    return path


@_kind("dcp_metadata_directory", "dcp", "directory")
def _dcp_metadata_directory(path: Path) -> Path:
    """.metadata is a directory."""
    metadata = _dcp_save(path) / ".metadata"
    metadata.unlink()
    metadata.mkdir()
    return path


@_kind("dcp_metadata_unsafe_global", "dcp", "builtins.print")
def _dcp_metadata_unsafe_global(path: Path) -> Path:
    """.metadata calls builtins.print when unpickled (DCP itself uses plain pickle.load)."""
    message = b"hostile .metadata: this ran"
    ops = (b"\x80\x02cbuiltins\nprint\nX" + struct.pack("<I", len(message)) + message
           + b"\x85R.")
    _write(_dcp_save(path) / ".metadata", ops)
    return path


@_kind("dcp_data_missing", "dcp", "distcp")
def _dcp_data_missing(path: Path) -> Path:
    """The .distcp data file removed."""
    _data_file(_dcp_save(path)).unlink()
    return path


@_kind("dcp_data_truncated", "dcp", "truncated")
def _dcp_data_truncated(path: Path) -> Path:
    """The .distcp data file cut in half (inside "w")."""
    data = _data_file(_dcp_save(path))
    _write(data, data.read_bytes()[: data.stat().st_size // 2])
    return path


# -- goldens -------------------------------------------------------------------------------

def golden_model(seed: int = 0) -> nn.Linear:
    """The model a golden kind holds the state_dict of: ``nn.Linear(2, 2)`` seeded."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Linear(2, 2)


def golden_inputs() -> torch.Tensor:
    """The ``inputs=`` the golden sidecars fingerprint (pass them to reach the output check)."""
    return torch.arange(4.0).reshape(2, 2)


def _golden_name() -> str:
    """``torch-2.13`` on torch 2.13: the file stem of this torch's golden."""
    from pytest_ckpt.record.goldens import torch_minor

    return f"torch-{torch_minor()}"


def _golden_pair(seed: int = 0) -> tuple[bytes, dict[str, Any]]:
    """A golden's bytes and sidecar exactly as pytest-ckpt writes them."""
    from pytest_ckpt.checkpoint.values import flatten_outputs
    from pytest_ckpt.record.goldens import serialise

    model = golden_model(seed).eval()
    with torch.no_grad():
        outputs = flatten_outputs(model(golden_inputs()))
    return serialise(model, golden_inputs(), test=GOLDEN_TEST, seed=seed, outputs=outputs)


def _sidecar_bytes(sidecar: Any) -> bytes:
    """A sidecar's file content, as ``write_golden`` writes it."""
    return (json.dumps(sidecar, indent=1) + "\n").encode()


def _write_golden(path: Path, data: bytes | None, sidecar: bytes | None) -> Path:
    """Write the golden ``torch-X.Y.pt`` and its ``.json`` into ``path`` (None: leave out)."""
    path.mkdir(parents=True, exist_ok=True)
    if data is not None:
        _write(path / f"{_golden_name()}.pt", data)
    if sidecar is not None:
        _write(path / f"{_golden_name()}.json", sidecar)
    return path


def _golden_edit(edit: Callable[[dict[str, Any]], Any], doc: str) -> Builder:
    """A builder of a true golden whose sidecar ``edit`` changed in place, or replaced by what
    ``edit`` returned when that is not None."""

    def build(path: Path) -> Path:
        data, sidecar = _golden_pair()
        replacement = edit(sidecar)
        return _write_golden(path, data, _sidecar_bytes(
            sidecar if replacement is None else replacement))

    build.__doc__ = doc
    return build


def _output_without(field: str) -> Callable[[dict[str, Any]], None]:
    """An edit deleting ``field`` from every recorded output fingerprint."""

    def edit(sidecar: dict[str, Any]) -> None:
        for fingerprint in sidecar["outputs"].values():
            del fingerprint[field]

    return edit


_GOLDEN_EDITS: list[tuple[str, str, Callable[[dict[str, Any]], Any], str]] = [
    ("golden_sidecar_list", "sidecar", lambda s: list(s.items()), "The sidecar is a JSON list."),
    ("golden_wrong_schema", "sidecar", lambda s: s.__setitem__("schema", "pytest-ckpt golden v0"),
     'The sidecar\'s schema is "pytest-ckpt golden v0".'),
    ("golden_missing_sha256", "sha256", lambda s: s.__delitem__("sha256"),
     "The sidecar has no sha256."),
    ("golden_sha256_int", "sha256", lambda s: s.__setitem__("sha256", 1234),
     "The sidecar's sha256 is the int 1234."),
    ("golden_outputs_string", "outputs", lambda s: s.__setitem__("outputs", "output"),
     "The sidecar's outputs is a string."),
    ("golden_output_entry_int", "outputs",
     lambda s: s.__setitem__("outputs", {name: 5 for name in s["outputs"]}),
     "Each recorded output fingerprint is the int 5."),
    ("golden_output_no_dtype", "dtype", _output_without("dtype"),
     "The recorded output fingerprints lack dtype (inputs are recorded: they are compared)."),
    ("golden_output_no_shape", "shape", _output_without("shape"),
     "The recorded output fingerprints lack shape."),
    ("golden_output_no_sha256", "sha256", _output_without("sha256"),
     "The recorded output fingerprints lack sha256."),
    ("golden_inputs_string", "inputs", lambda s: s.__setitem__("inputs", "x"),
     "The sidecar's inputs is a string."),
    ("golden_manifest_not_list", "manifest", lambda s: s.__setitem__("manifest", "weight"),
     "The sidecar's manifest is a string, not a list of lines."),
    ("golden_torch_number", "", lambda s: s.__setitem__("torch", 2.13),
     "The sidecar's torch field is the number 2.13."),
]
for _name, _words, _golden_change, _doc in _GOLDEN_EDITS:
    _kind(_name, "golden", _words)(_golden_edit(_golden_change, _doc))


@_kind("golden_sidecar_missing", "golden", "sidecar")
def _golden_sidecar_missing(path: Path) -> Path:
    """A golden .pt without its .json sidecar."""
    return _write_golden(path, _golden_pair()[0], None)


@_kind("golden_sidecar_empty", "golden", "sidecar")
def _golden_sidecar_empty(path: Path) -> Path:
    """The sidecar is an empty file."""
    return _write_golden(path, _golden_pair()[0], b"")


@_kind("golden_sidecar_not_json", "golden", "sidecar")
def _golden_sidecar_not_json(path: Path) -> Path:
    """The sidecar is not JSON."""
    return _write_golden(path, _golden_pair()[0], b"schema: pytest-ckpt golden v1\n")


@_kind("golden_sidecar_not_utf8", "golden", "sidecar")
def _golden_sidecar_not_utf8(path: Path) -> Path:
    """The sidecar is not UTF-8."""
    return _write_golden(path, _golden_pair()[0], b'{"schema": "\xff\xfe"}\n')


@_kind("golden_pt_directory", "golden", "directory")
def _golden_pt_directory(path: Path) -> Path:
    """The golden's .pt is a directory (its sidecar is true)."""
    _write_golden(path, None, _sidecar_bytes(_golden_pair()[1]))
    (path / f"{_golden_name()}.pt").mkdir()
    return path


@_kind("golden_json_directory", "golden", "directory")
def _golden_json_directory(path: Path) -> Path:
    """The golden's .json sidecar is a directory."""
    _write_golden(path, _golden_pair()[0], None)
    (path / f"{_golden_name()}.json").mkdir()
    return path


@_kind("golden_pt_truncated", "golden", "sha256")
def _golden_pt_truncated(path: Path) -> Path:
    """The golden's .pt cut in half; its sidecar's sha256 is of the whole file."""
    data, sidecar = _golden_pair()
    return _write_golden(path, data[: len(data) // 2], _sidecar_bytes(sidecar))


@_kind("golden_pt_truncated_sha_matches", "golden", "truncated")
def _golden_pt_truncated_sha_matches(path: Path) -> Path:
    """The golden's .pt cut in half, with a sidecar whose sha256 and bytes match the cut."""
    data, sidecar = _golden_pair()
    data = data[: len(data) // 2]
    sidecar.update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
    return _write_golden(path, data, _sidecar_bytes(sidecar))


@_kind("golden_pt_not_state_dict", "golden", "state_dict")
def _golden_pt_not_state_dict(path: Path) -> Path:
    """The golden's .pt is a torch.save of a list, with a matching sha256."""
    data, sidecar = _golden_pair()
    data = _saved([1, 2, 3])
    sidecar.update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
    return _write_golden(path, data, _sidecar_bytes(sidecar))


@_kind("golden_torn_pair", "golden", "sha256")
def _golden_torn_pair(path: Path) -> Path:
    """A torn update: the .pt of a new write (other weights), the .json of the old one."""
    return _write_golden(path, _golden_pair(seed=1)[0], _sidecar_bytes(_golden_pair()[1]))


# -- other: not a checkpoint, or not a regular file -----------------------------------------

def _file_of(data: bytes, doc: str) -> Builder:
    """A builder of a file holding ``data``."""

    def build(path: Path) -> Path:
        return _write(path, data)

    build.__doc__ = doc
    return build


_PNG = (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR"
        + struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0) + b"\x90wS\xde")
_LFS_POINTER = (b"version https://git-lfs.github.com/spec/v1\n"
                b"oid sha256:" + hashlib.sha256(b"model").hexdigest().encode() + b"\n"
                b"size 1781\n")
_HTML = (b"<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head>\n"
         b"<body><h1>Not Found</h1><p>The requested URL was not found.</p></body></html>\n")

_OTHER_FILES: list[tuple[str, str, bytes, str]] = [
    ("other_empty", "empty", b"", "An empty file."),
    ("other_one_byte", "", b"\x80", "One byte (a pickle PROTO opcode without its argument)."),
    ("other_seven_bytes", "", b"PK\x03\x04\x14\x00\x00", "Seven bytes: a zip's first seven."),
    ("other_random", "not a checkpoint", _random(4096), "4 KiB of random bytes."),
    ("other_random_pickle_header", "", b"\x80\x02" + _random(4094),
     "Random bytes after a pickle protocol-2 header."),
    ("other_random_zip_header", "zip", b"PK\x03\x04" + _random(4092),
     "Random bytes after a zip local-file signature."),
    ("other_text", "not a checkpoint", "weights: ünïcødé text, not a checkpoint\n".encode() * 20,
     "A UTF-8 text file."),
    ("other_json", "not a checkpoint",
     json.dumps({"weight": [[0.1, 0.2], [0.3, 0.4]], "bias": [0.0, 0.0]}).encode(),
     "A JSON file of weights as lists."),
    ("other_png", "not a checkpoint", _PNG + _random(256), "A PNG header and random bytes."),
    ("other_html", "html", _HTML, "An HTML error page saved instead of the checkpoint."),
    ("other_git_lfs_pointer", "lfs", _LFS_POINTER, "A git-lfs pointer file, never pulled."),
    ("other_plain_pickle", "pickle", pickle.dumps({"weight": [1.0, 2.0]}, protocol=2),
     "A plain pickle of a dict (no torch framing)."),
]
for _name, _words, _data, _doc in _OTHER_FILES:
    _kind(_name, "other", _words)(_file_of(_data, _doc))


@_kind("other_gzip", "other", "gzip")
def _other_gzip(path: Path) -> Path:
    """A gzip-compressed torch zip (a ``.pt.gz`` renamed)."""
    import gzip

    return _write(path, gzip.compress(_torch_bytes(), mtime=0))


@_kind("other_numpy", "other", "numpy")
def _other_numpy(path: Path) -> Path:
    """A NumPy .npy file."""
    import numpy

    buffer = io.BytesIO()
    numpy.save(buffer, numpy.zeros((3, 4), dtype=numpy.float32))
    return _write(path, buffer.getvalue())


@_kind("other_unicode_name", "other", "not a checkpoint")
def _other_unicode_name(path: Path) -> Path:
    """Random bytes under a file name with spaces and non-ASCII characters."""
    return _write(path.with_name("my ckpt ünïcødé 日本 ✓.pt"), _random(512))


@_kind("other_empty_directory", "other", "directory")
def _other_empty_directory(path: Path) -> Path:
    """An empty directory."""
    path.mkdir(parents=True)
    return path


@_kind("other_directory_random_files", "other", "directory")
def _other_directory_random_files(path: Path) -> Path:
    """A directory of random files (one named model.pt, none a .metadata)."""
    path.mkdir(parents=True)
    for seed, name in enumerate(("model.pt", "0.bin", "notes.txt")):
        _write(path / name, _random(300, seed))
    return path


@_kind("other_fifo", "other", "fifo")
def _other_fifo(path: Path) -> Path:
    """A FIFO: opening it for reading blocks until a writer comes, forever."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(path)
    return path


@_kind("other_symlink_dev_zero", "other", "regular file")
def _other_symlink_dev_zero(path: Path) -> Path:
    """A symlink to /dev/zero: endless zero bytes, and no size."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to("/dev/zero")
    return path


@_kind("other_symlink_dev_null", "other", "regular file")
def _other_symlink_dev_null(path: Path) -> Path:
    """A symlink to /dev/null: a character device that reads as empty."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to("/dev/null")
    return path


@_kind("other_dangling_symlink", "other", "link")
def _other_dangling_symlink(path: Path) -> Path:
    """A symlink to a file that does not exist."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(path.with_name("gone.pt"))
    return path


@_kind("other_symlink_loop", "other", "link")
def _other_symlink_loop(path: Path) -> Path:
    """A symlink to a symlink back to it (ELOOP)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partner = path.with_name(f"{path.stem}_partner.pt")
    path.symlink_to(partner.name)
    partner.symlink_to(path.name)
    return path


@_kind("other_missing", "other", "does not exist")
def _other_missing(path: Path) -> Path:
    """A path that does not exist (nothing is created)."""
    return path
