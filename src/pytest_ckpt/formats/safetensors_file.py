"""safetensors files: saved like ``safetensors.torch.save_model`` (tied copies dropped)."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any, final

from pytest_ckpt.errors import CheckpointReadError
from pytest_ckpt.manifest import Manifest, ManifestRow

if TYPE_CHECKING:
    import torch

# safetensors dtype codes -> torch dtype names
_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
           "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8",
           "BOOL": "bool", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2",
           "U16": "uint16", "U32": "uint32", "U64": "uint64", "C64": "complex64"}


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
    memory_mapped = False

    def save(self, module: torch.nn.Module, path: Path) -> None:
        """As ``safetensors.torch.save_model``: of each group of tied tensors one key is kept."""
        _safetensors_torch().save_model(module, str(path))

    def load(self, path: Path) -> dict[str, Any]:
        self.read_manifest(path)  # validates the header with a clear error first
        loaded: dict[str, Any] = _safetensors_torch().load_file(str(path))
        return loaded

    def read_manifest(self, path: Path) -> Manifest:
        """Read keys, dtypes and shapes from the JSON header only."""
        header = read_header(path)
        rows = [ManifestRow(key, _DTYPES.get(entry["dtype"], entry["dtype"].lower()),
                            tuple(entry["shape"]))
                for key, entry in header.items() if key != "__metadata__"]
        return Manifest(tuple(rows))


def read_header(path: Path) -> dict[str, Any]:
    """The safetensors JSON header, checked against the file size."""
    try:
        with open(path, "rb") as handle:
            size_bytes = handle.read(8)
            if len(size_bytes) < 8:
                raise CheckpointReadError(path, "is truncated: shorter than a safetensors header")
            (length,) = struct.unpack("<Q", size_bytes)
            total = path.stat().st_size
            if length > total - 8:
                raise CheckpointReadError(
                    path, f"is truncated: its header claims {length} bytes, the file has {total}")
            header: dict[str, Any] = json.loads(handle.read(length))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointReadError(path, "has a corrupt safetensors header") from None
    data_end = max((entry["data_offsets"][1] for key, entry in header.items()
                    if key != "__metadata__"), default=0)
    if 8 + length + data_end > total:
        raise CheckpointReadError(
            path, f"is truncated: tensor data ends at byte {8 + length + data_end}, "
                  f"the file has {total}")
    return header
