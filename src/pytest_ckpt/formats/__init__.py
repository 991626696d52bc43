"""How checkpoints are read and written: one adapter per format behind the small
:class:`CheckpointFormat` protocol (torch zip and legacy files with their inert header reader
and pickle scan, safetensors, ``torch.distributed.checkpoint`` directories), bounded file
access, and page release for memory-mapped loads.

It uses ``diagnosis`` and ``checkpoint`` below it. Every torch load uses ``weights_only=True``
after the scan's bounds; nothing from a pickle is ever executed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pytest_ckpt.errors import CheckpointReadError

if TYPE_CHECKING:
    import torch

    from pytest_ckpt.checkpoint.manifest import Manifest


class CheckpointFormat(Protocol):
    """Save a model's state and read it back, weights only."""

    name: str
    suffix: str
    memory_mapped: bool  # load() maps the file: its pages can be given back (pages.py)

    def save(self, module: torch.nn.Module, path: Path) -> None: ...

    def load(self, path: Path) -> dict[str, Any]: ...

    def read_manifest(self, path: Path) -> Manifest: ...


FORMAT_NAMES = ("torch", "safetensors", "dcp")


def get_format(name: str) -> CheckpointFormat:
    """The adapter for ``name``; ``ValueError`` naming the known formats otherwise."""
    if name == "torch":
        from pytest_ckpt.formats.torch_zip import TorchZipFormat

        return TorchZipFormat()
    if name == "safetensors":
        from pytest_ckpt.formats.safetensors_file import SafetensorsFormat

        return SafetensorsFormat()
    if name == "dcp":
        from pytest_ckpt.formats.dcp import DcpFormat

        return DcpFormat()
    if name.startswith("dcp-"):
        from pytest_ckpt.formats.dcp_sharded import PATTERN, ShardedDcpFormat

        match = PATTERN.match(name)
        if match:
            return ShardedDcpFormat(int(match.group(1)), int(match.group(2)))
    known = ", ".join(FORMAT_NAMES)
    raise ValueError(f"unknown checkpoint format {name!r}; known formats: {known}, and "
                     "dcp-N-M (saved by N processes, loaded by M; 1 to 8)")


def detect_format(path: Path) -> CheckpointFormat:
    """Pick the adapter from the file's first bytes (or a DCP directory's ``.metadata``),
    not its name; anything else is a :class:`CheckpointReadError` naming the path."""
    from pytest_ckpt.formats.files import open_regular
    from pytest_ckpt.formats.torch_file import not_a_checkpoint

    if path.is_dir():
        from pytest_ckpt.formats.dcp import METADATA

        if (path / METADATA).exists() or (path / METADATA).is_symlink():
            return get_format("dcp")
        raise CheckpointReadError(path, f"is a directory without a {METADATA} file, not a "
                                        "torch.distributed.checkpoint checkpoint", advice=(
            "fix: pass a checkpoint file, or the directory torch.distributed.checkpoint.save "
            "wrote"))
    with open_regular(path) as handle:
        head = handle.read(16)
    if not head:
        raise not_a_checkpoint(path, "the file is empty")
    if head.startswith(b"PK\x03\x04"):
        return get_format("torch")
    if len(head) >= 9 and head[8:9] == b"{":
        return get_format("safetensors")
    if head.startswith(b"\x80"):
        return get_format("torch")  # legacy (non-zip) torch.save; the scan checks the rest
    raise not_a_checkpoint(path)


def read_checkpoint_manifest(path: Path) -> Manifest:
    """The manifest of a checkpoint file, read without materialising tensor data."""
    return detect_format(path).read_manifest(path)


def file_notes(path: Path) -> list[str]:
    """What a release manager should know about a torch file: a legacy (non-zip) layout,
    storages tagged for an accelerator, ShardedTensor entries (FSDP local state). Read from
    the pickle, nothing executed."""
    import zipfile

    from pytest_ckpt.checkpoint.keys import fold_keys
    from pytest_ckpt.formats.torch_file import storage_locations
    from pytest_ckpt.formats.torch_header import read_state

    if detect_format(path).name != "torch":
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


def load_checkpoint(path: Path, safe_globals: Sequence[Any] = (), *,
                    tensors_only: bool = False) -> Any:
    """What a checkpoint from elsewhere holds: ``torch.load(weights_only=True)`` of a torch
    file (the container as saved, after the admission checks and a CRC check of its data),
    the tensors of a safetensors file, or the entries of a DCP directory read without DCP's
    own unpickling (only its tensors with ``tensors_only``; ``safe_globals`` apply to torch
    files)."""
    fmt = detect_format(path)
    if fmt.name == "dcp":
        from pytest_ckpt.formats.dcp import read_dcp_state

        return read_dcp_state(path, values=not tensors_only)
    if fmt.name == "safetensors":
        return fmt.load(path)
    from pytest_ckpt.formats.torch_zip import load_weights_only

    return load_weights_only(path, safe_globals, verify_data=True)
