"""One checkpoint file, told by its first bytes (a torch zip or legacy file, a safetensors
file, or a sharded checkpoint's JSON index, which ``sharded`` reads): its adapter, its
weights-only load, the container layout ``show`` prints and the notes about it. The readers
of directories and shards use these for each file they read."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_ckpt.errors import CheckpointReadError

if TYPE_CHECKING:
    from pytest_ckpt.checkpoint.container import ContainerLayout
    from pytest_ckpt.formats.safetensors_file import SafetensorsFormat
    from pytest_ckpt.formats.torch_zip import TorchZipFormat


def sniff(path: Path) -> str:
    """``torch``, ``safetensors`` or ``index`` (a JSON object) from the file's first bytes;
    anything else is the :class:`CheckpointReadError` that names the file."""
    from pytest_ckpt.formats.files import open_regular
    from pytest_ckpt.formats.torch_file import not_a_checkpoint

    with open_regular(path) as handle:
        head = handle.read(16)
        size = os.fstat(handle.fileno()).st_size
    if not head:
        raise not_a_checkpoint(path, "the file is empty")
    if head.startswith(b"PK\x03\x04"):
        return "torch"
    if _json_object(head, size):
        return "index"
    if len(head) >= 9 and head[8:9] == b"{":
        return "safetensors"
    if head.startswith(b"\x80"):
        return "torch"  # legacy (non-zip) torch.save; the scan checks the rest
    raise not_a_checkpoint(path)


def _json_object(head: bytes, size: int) -> bool:
    """A JSON object's first bytes, and not a safetensors header length that fits the file
    (a length whose low byte is ``{`` is possible)."""
    if not head.lstrip(b" \t\r\n").startswith(b"{"):
        return False
    return len(head) < 8 or int.from_bytes(head[:8], "little") > size - 8


def file_format(path: Path) -> TorchZipFormat | SafetensorsFormat:
    """The adapter of a torch or safetensors file (a JSON file is not one here: a shard or
    a directory's weights file must hold tensors)."""
    from pytest_ckpt.formats.torch_file import not_a_checkpoint

    kind = sniff(path)
    if kind == "index":
        raise not_a_checkpoint(path, "it is a JSON file")
    if kind == "safetensors":
        from pytest_ckpt.formats.safetensors_file import SafetensorsFormat

        return SafetensorsFormat()
    from pytest_ckpt.formats.torch_zip import TorchZipFormat

    return TorchZipFormat()


def load_file(path: Path, safe_globals: Sequence[Any] = (),
              fmt: Any = None) -> Any:
    """What one file holds: the tensors of a safetensors file, or the container of a torch
    file (``torch.load(weights_only=True)`` after the admission checks and a CRC check of
    its data, ``safe_globals`` allowed)."""
    fmt = fmt or file_format(path)
    if fmt.name == "safetensors":
        return fmt.load(path)
    from pytest_ckpt.formats.torch_zip import load_weights_only

    return load_weights_only(path, safe_globals, verify_data=True)


def file_layout(path: Path) -> dict[str, Any]:
    """The container layout of one file, as ``show`` prints it (a torch file's container
    read header-only when it can be)."""
    if file_format(path).name == "safetensors":
        from pytest_ckpt.formats.safetensors_file import read_header

        metadata = read_header(path).get("__metadata__", {})
        return {"layout": "safetensors (flat tensor map)", "weights_entry": None,
                "others": {f"metadata.{key}": "str" for key in metadata}}
    layout = torch_layout(path)
    if layout is None:
        raise CheckpointReadError(path, "holds no state_dict")
    return layout.to_json()


def torch_layout(path: Path) -> ContainerLayout | None:
    """The container layout of a torch file: from its pickle when the header reader models
    it, else from a weights_only load."""
    from pytest_ckpt.checkpoint.container import container_layout
    from pytest_ckpt.formats.torch_header import is_record, read_container

    container = read_container(path)
    if container is not None:
        return container_layout(container, is_record)
    from pytest_ckpt.formats.torch_zip import load_weights_only

    return container_layout(load_weights_only(path))


def choice_notes(path: Path) -> list[str]:
    """Which of several top-level state_dicts of a torch file holds the weights, and the
    others (empty for a safetensors file or a single state_dict)."""
    if file_format(path).name != "torch":
        return []
    layout = torch_layout(path)
    choice = layout.choice() if layout is not None else None
    return [choice] if choice else []


def torch_file_notes(path: Path) -> list[str]:
    """What a release manager should know about a torch file: a legacy (non-zip) layout,
    storages tagged for an accelerator, ShardedTensor entries (FSDP local state). Read from
    the pickle, nothing executed."""
    import zipfile

    from pytest_ckpt.checkpoint.keys import fold_keys
    from pytest_ckpt.formats.torch_file import storage_locations
    from pytest_ckpt.formats.torch_header import read_state

    if file_format(path).name != "torch":
        return []
    notes = []
    if not zipfile.is_zipfile(path):
        notes.append("legacy (non-zip) torch file: it cannot be memory-mapped "
                     "(torch.load(mmap=True) needs the zip format), so every load reads it "
                     "whole; re-save it with torch.save for release")
    devices = {location: count for location, count in storage_locations(path).items()
               if location != "cpu"}
    sharded = [key for key, record in (read_state(path) or {}).items() if record.sharded]
    if sharded:
        notes.append(f"{len(sharded)} ShardedTensor entries ({', '.join(fold_keys(sharded))}): "
                     "FSDP local (or sharded) state, one rank's shards; the shapes shown are the "
                     "whole tensors, and torch.load(weights_only=True) refuses them")
    if devices:
        tags = ", ".join(f"{location} ({count})" for location, count in sorted(devices.items()))
        notes.append(f"storages tagged for {tags}: it loads on a CPU-only machine only through "
                     "map_location='cpu'; save release artifacts from CPU tensors "
                     "(model.cpu().state_dict())")
    return notes
