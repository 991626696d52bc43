"""A torch zip checkpoint's tensors (key, dtype, shape, shared storage) read from its pickle and
its zip directory alone: torch is not imported, no tensor byte is read, nothing is executed.

The pickle is scanned inert (``pickle_scan``); tensors are recognised by the rebuild functions
``torch.save`` writes for plain tensors and parameters. A file holding anything else (another
global, a quantized or sparse tensor, a storage type without a dtype name here) gives ``None``
and the caller reads it with ``torch.load(weights_only=True)``, which decides what it accepts.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_ckpt.checkpoint.container import container_layout
from pytest_ckpt.checkpoint.manifest import TENSOR, Manifest, ManifestRow
from pytest_ckpt.errors import CheckpointReadError
from pytest_ckpt.formats.pickle_scan import StandInDict, StorageRecord, Stub
from pytest_ckpt.formats.torch_file import scan

# torch.save names a storage's element type by its legacy class: torch.FloatStorage
_STORAGE_DTYPES = {
    "DoubleStorage": ("float64", 8), "FloatStorage": ("float32", 4),
    "HalfStorage": ("float16", 2), "BFloat16Storage": ("bfloat16", 2),
    "LongStorage": ("int64", 8), "IntStorage": ("int32", 4), "ShortStorage": ("int16", 2),
    "CharStorage": ("int8", 1), "ByteStorage": ("uint8", 1), "BoolStorage": ("bool", 1),
    "ComplexFloatStorage": ("complex64", 8), "ComplexDoubleStorage": ("complex128", 16),
}
# dtypes without a legacy storage class: an UntypedStorage (numel in bytes) and the dtype
_V3_ITEMSIZES = {"float8_e4m3fn": 1, "float8_e5m2": 1, "float8_e4m3fnuz": 1,
                 "float8_e5m2fnuz": 1, "float8_e8m0fnu": 1, "uint16": 2, "uint32": 4,
                 "uint64": 8, "complex32": 4}
_REBUILD_TENSOR = "torch._utils._rebuild_tensor_v2"
_REBUILD_TENSOR_V3 = "torch._utils._rebuild_tensor_v3"
_REBUILD_PARAMETER = ("torch._utils._rebuild_parameter",
                      "torch._utils._rebuild_parameter_with_state")
_REBUILD_FROM_TYPE = "torch._tensor._rebuild_from_type_v2"
_PLAIN_TYPES = ("torch.Tensor", "torch.nn.parameter.Parameter")
# FSDP's local state: a ShardedTensor rebuilt as a wrapper subclass around this rank's shards
_REBUILD_WRAPPER = "torch._utils._rebuild_wrapper_subclass"
_SHARDED_TENSOR = "torch.distributed._shard.sharded_tensor.api.ShardedTensor"
_DTYPE_NAMES = {name for name, _ in _STORAGE_DTYPES.values()} | set(_V3_ITEMSIZES)


class _Unsupported(Exception):
    """The pickle holds something this reader does not model; torch.load decides."""


class _Corrupt(Exception):
    """The zip directory contradicts the pickle."""


@dataclass(frozen=True)
class TensorRecord:
    """A tensor as the file describes it; records with one ``storage`` share memory once
    loaded (tied weights)."""

    dtype: str
    shape: tuple[int, ...]
    storage: str
    storage_bytes: int
    sharded: bool = False  # a ShardedTensor: ``shape`` is the whole tensor, not this rank's part


def is_record(value: Any) -> bool:
    return isinstance(value, TensorRecord)


def read_container(path: Path) -> Any:
    """The checkpoint's container with a :class:`TensorRecord` for each tensor; ``None`` when
    the file is not a zip of plain tensors and containers. A file the scan refuses, or a
    storage whose bytes in the zip are not what the pickle says, is a
    :class:`CheckpointReadError`. Tensor bytes are not read (nor CRC-checked) here."""
    scanned = scan(path)  # refuses files that are damaged, hostile or not torch files
    if scanned.prefix is None:  # a legacy (non-zip) file
        return None
    try:
        return _rebuild(scanned.root, scanned.sizes, scanned.prefix)
    except _Corrupt as error:
        raise CheckpointReadError(path, f"is corrupt: {error}") from None
    except (_Unsupported, TypeError, ValueError, AttributeError):
        return None  # stand-ins built in ways torch.save never writes: torch.load decides


def read_state(path: Path, model_keys: Collection[str] | None = None,
               ) -> dict[str, TensorRecord] | None:
    """The state_dict in a torch zip file as records (among several, the one matching
    ``model_keys`` best), or ``None`` (see :func:`read_container`; also ``None`` when the
    container holds no state_dict: torch.load then says why)."""
    container = read_container(path)
    layout = None if container is None else container_layout(container, is_record,
                                                             model_keys=model_keys)
    if layout is None:
        return None
    return dict(container if layout.weights_entry is None else container[layout.weights_entry])


def read_manifest(path: Path, model_keys: Collection[str] | None = None) -> Manifest | None:
    """The manifest of :func:`read_state`, or ``None``."""
    state = read_state(path, model_keys)
    if state is None:
        return None
    by_storage: dict[str, list[str]] = {}
    for key, record in state.items():
        by_storage.setdefault(record.storage, []).append(key)
    ties = {key: min(keys) for keys in by_storage.values() if len(keys) > 1 for key in keys}
    return Manifest(tuple(ManifestRow(key, record.dtype, record.shape, TENSOR, ties.get(key))
                          for key, record in state.items()))


def _rebuild(value: Any, sizes: Mapping[str, int], prefix: str) -> Any:
    if isinstance(value, Stub):
        return _tensor(value, sizes, prefix)
    if isinstance(value, StandInDict):
        return collections.OrderedDict(
            (key, _rebuild(item, sizes, prefix)) for key, item in value.items())
    if isinstance(value, dict):
        return {key: _rebuild(item, sizes, prefix) for key, item in value.items()}
    if isinstance(value, list):
        return [_rebuild(item, sizes, prefix) for item in value]
    if isinstance(value, tuple):
        return tuple(_rebuild(item, sizes, prefix) for item in value)
    if value is None or isinstance(value, (bool, int, float, str, bytes)):
        return value
    raise _Unsupported(type(value).__name__)


def _tensor(stub: Stub, sizes: Mapping[str, int], prefix: str) -> TensorRecord:
    record = _tensor_of(stub, sizes, prefix)
    if not record.storage_bytes:  # no memory to share: tied only as one object, as in torch
        return dataclasses.replace(record, storage=f"empty tensor {id(stub)}")
    return record


def _tensor_of(stub: Stub, sizes: Mapping[str, int], prefix: str) -> TensorRecord:
    name, args = stub.qualname, stub.args
    if name in _REBUILD_PARAMETER and args and isinstance(args[0], Stub):
        return _tensor(args[0], sizes, prefix)
    if name == _REBUILD_FROM_TYPE and len(args) == 4:  # (function, type, arguments, state)
        function, new_type = (getattr(arg, "qualname", None) for arg in args[:2])
        if function == _REBUILD_TENSOR and new_type in _PLAIN_TYPES and not args[3]:
            return _from_storage(args[2], sizes, prefix)
        if function == _REBUILD_WRAPPER and new_type == _SHARDED_TENSOR:
            return _sharded(args[2])
    if name == _REBUILD_TENSOR:
        return _from_storage(args, sizes, prefix)
    if name == _REBUILD_TENSOR_V3 and len(args) > 6:
        return _from_storage(args, sizes, prefix, getattr(args[6], "qualname", ""))
    raise _Unsupported(name)


def _sharded(args: Any) -> TensorRecord:
    """A ShardedTensor's global dtype and shape, from ``_rebuild_wrapper_subclass(cls, dtype,
    size, ...)``; the rank's local shards are not read."""
    if not isinstance(args, tuple) or len(args) < 3:
        raise _Unsupported("sharded tensor arguments")
    dtype = str(getattr(args[1], "qualname", "")).removeprefix("torch.")
    if dtype not in _DTYPE_NAMES:
        raise _Unsupported(dtype)
    return TensorRecord(dtype, tuple(int(size) for size in args[2]), "sharded", 0, sharded=True)


def _from_storage(args: Any, sizes: Mapping[str, int], prefix: str,
                  v3_dtype: str | None = None) -> TensorRecord:
    """``_rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, meta])`` (or
    v3, whose storage is untyped and whose dtype follows the hooks), checked against the
    storage it views and the bytes the archive holds for it."""
    if not isinstance(args, tuple) or len(args) < 4 or not isinstance(args[0], StorageRecord):
        raise _Unsupported("tensor arguments")
    storage, offset, shape, stride = args[:4]
    if v3_dtype is None:
        dtype, itemsize = _STORAGE_DTYPES.get(storage.storage_type.removeprefix("torch."),
                                              (None, 0))
        elements = storage.numel
    else:
        dtype = v3_dtype.removeprefix("torch.")
        itemsize = _V3_ITEMSIZES.get(dtype, 0)
        elements = storage.numel // itemsize if itemsize else -1
        if storage.storage_type != "torch.storage.UntypedStorage":
            dtype = None
    if dtype is None or not itemsize or storage.location.startswith("meta"):
        raise _Unsupported(storage.storage_type)
    shape, stride = tuple(int(size) for size in shape), tuple(int(step) for step in stride)
    if len(shape) != len(stride) or min(shape, default=1) < 0:
        raise _Unsupported("shape")
    extent = 0 if 0 in shape else 1 + sum(
        (size - 1) * step for size, step in zip(shape, stride, strict=True))
    if elements < 0 or (extent and int(offset) + extent > elements):
        raise _Unsupported("storage bounds")  # torch.load reports the corrupt file
    held = sizes.get(f"{prefix}data/{storage.key}", 0)
    if held != elements * itemsize:  # torch.load(mmap=True) would read past it unchecked
        raise _Corrupt(f"its storage data/{storage.key} holds {held} bytes where its tensors "
                       f"need {elements * itemsize}")
    return TensorRecord(dtype, shape, storage.key, elements * itemsize)
