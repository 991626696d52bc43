"""safetensors files: saved like ``safetensors.torch.save_model`` (tied copies dropped)."""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any, final

from pytest_ckpt.checkpoint.manifest import Manifest, ManifestRow
from pytest_ckpt.errors import CheckpointReadError, first_line
from pytest_ckpt.formats.files import open_regular

if TYPE_CHECKING:
    import torch

# safetensors dtype codes -> torch dtype names
_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
           "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8",
           "BOOL": "bool", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2",
           "U16": "uint16", "U32": "uint32", "U64": "uint64", "C64": "complex64",
           "F8_E4M3FNUZ": "float8_e4m3fnuz", "F8_E5M2FNUZ": "float8_e5m2fnuz",
           "F8_E8M0": "float8_e8m0fnu"}


def _safetensors_torch() -> Any:
    try:
        import safetensors.torch
    except ImportError:
        raise RuntimeError("the 'safetensors' format needs the safetensors package: "
                           "pip install 'pytest-ckpt[safetensors]'") from None
    return safetensors.torch


@final
class SafetensorsFormat:
    name = "safetensors"
    suffix = ".safetensors"
    memory_mapped = True  # load_file maps the file (MAP_PRIVATE): its pages can be released

    def save(self, module: torch.nn.Module, path: Path) -> None:
        """As ``safetensors.torch.save_model``: of each group of tied tensors one key is kept.
        A tensor safetensors has no dtype for is a :class:`CheckpointReadError` naming it."""
        from pytest_ckpt.checkpoint.manifest import dtype_name

        stored = set(_DTYPES.values())
        unsupported = sorted(f"{key} ({dtype_name(value.dtype)})"
                             for key, value in module.state_dict().items()
                             if dtype_name(value.dtype) not in stored)
        if unsupported:
            raise CheckpointReadError(path, f"cannot be written: safetensors has no dtype for "
                                            f"{', '.join(unsupported[:4])}", advice=(
                "fix: round-trip this model with formats=('torch',) only"))
        _safetensors_torch().save_model(module, str(path))

    def load(self, path: Path) -> dict[str, Any]:
        self.read_manifest(path)  # validates the header with a clear error first
        try:
            loaded: dict[str, Any] = _safetensors_torch().load_file(str(path))
        except Exception as error:  # SafetensorError and whatever its Rust core raises
            raise CheckpointReadError(path, f"cannot be read by safetensors "
                                            f"({type(error).__name__}: {first_line(error)})",
                                      advice=_FIX) from None
        return loaded

    def read_manifest(self, path: Path) -> Manifest:
        """Read keys, dtypes and shapes from the JSON header only."""
        header = read_header(path)
        rows = [ManifestRow(key, _DTYPES.get(entry["dtype"], str(entry["dtype"]).lower()),
                            tuple(entry["shape"]))
                for key, entry in header.items() if key != "__metadata__"]
        return Manifest(tuple(rows))


def recorded_ties(header: dict[str, Any]) -> dict[str, str]:
    """The tied keys ``safetensors.torch.save_model`` left out, as its ``__metadata__``
    records them: left-out key -> the key of its tied group the file keeps."""
    metadata = header.get("__metadata__", {})
    return {key: kept for key, kept in metadata.items()
            if key not in header and kept in header and kept != "__metadata__"}


MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit
_ITEMSIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
              "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8,
              "C64": 8, "F8_E8M0": 1, "F8_E4M3FNUZ": 1, "F8_E5M2FNUZ": 1}
_FIX = ("fix: re-create the file with safetensors' save_file or save_model (the header is "
        "damaged or was written by hand)")


def read_header(path: Path) -> dict[str, Any]:
    """The safetensors JSON header, checked entry by entry and against the file size (what
    safetensors itself requires: known dtypes, shapes of non-negative integers, byte sizes
    that match them, offsets that tile the data section without gaps or overlaps)."""
    with open_regular(path) as handle:
        total = os.fstat(handle.fileno()).st_size
        size_bytes = handle.read(8)
        if len(size_bytes) < 8:
            raise _corrupt(path, "is truncated: shorter than a safetensors header")
        (length,) = struct.unpack("<Q", size_bytes)
        if length > min(total - 8, MAX_HEADER_BYTES):
            raise _corrupt(path, f"is truncated or corrupt: its header claims {length:,} "
                                 f"bytes, the file has {total:,}")
        text = handle.read(length)
    try:
        header = json.loads(text, object_pairs_hook=_unique_keys)
    except (ValueError, UnicodeDecodeError) as error:
        raise _corrupt(path, f"has a corrupt safetensors header (not JSON: "
                             f"{str(error)[:100]})") from None
    if not isinstance(header, dict):
        raise _corrupt(path, f"has a corrupt safetensors header (a JSON "
                             f"{type(header).__name__}, not an object)")
    _check_entries(path, header, total - 8 - length)
    return header


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        twice = sorted({key for key in keys if keys.count(key) > 1})
        raise ValueError(f"key {twice[0]!r} appears twice")
    return dict(pairs)


def _check_entries(path: Path, header: dict[str, Any], data_bytes: int) -> None:
    metadata = header.get("__metadata__", {})
    if not isinstance(metadata, dict) or not all(
            isinstance(key, str) and isinstance(value, str) for key, value in metadata.items()):
        raise _corrupt(path, "has a corrupt safetensors header: __metadata__ is not a map of "
                             "strings to strings")
    spans = sorted((_span(path, key, entry), key) for key, entry in header.items()
                   if key != "__metadata__")
    end = 0
    for (start, stop), key in spans:
        if start != end:
            what = "overlaps the entry before it" if start < end else (
                f"leaves a gap of {start - end:,} bytes before it")
            raise _corrupt(path, f"has a corrupt safetensors header: entry {key!r} {what}")
        end = stop
    if end != data_bytes:
        raise _corrupt(path, f"is truncated or corrupt: its tensors need {end:,} bytes of "
                             f"data, the file holds {data_bytes:,}")


def _span(path: Path, key: str, entry: Any) -> tuple[int, int]:
    """An entry's ``data_offsets``, checked against its dtype and shape."""
    def bad(what: str) -> CheckpointReadError:
        return _corrupt(path, f"has a corrupt safetensors header: entry {key!r} {what}")

    if not isinstance(entry, dict):
        raise bad(f"is a JSON {type(entry).__name__}, not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in _ITEMSIZES:
        raise bad(f"has an unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(_count(size) for size in shape):
        raise bad(f"has a shape that is not a list of non-negative integers ({shape!r:.60})")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(map(_count, offsets)):
        raise bad(f"has data_offsets that are not two non-negative integers ({offsets!r:.60})")
    start, stop = offsets
    if stop < start:
        raise bad(f"has reversed data_offsets [{start}, {stop}]")
    if stop - start != math.prod(shape) * _ITEMSIZES[dtype]:
        raise bad(f"holds {stop - start:,} bytes where {dtype} of shape {shape} needs "
                  f"{math.prod(shape) * _ITEMSIZES[dtype]:,}")
    return start, stop


def _count(value: Any) -> bool:
    return type(value) is int and value >= 0


def _corrupt(path: Path, reason: str) -> CheckpointReadError:
    return CheckpointReadError(path, reason, advice=_FIX)
