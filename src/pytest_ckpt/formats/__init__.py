"""How checkpoints are read and written: one adapter per format behind the small
:class:`CheckpointFormat` protocol (torch zip and legacy files with their inert header reader
and pickle scan, safetensors, ``torch.distributed.checkpoint`` directories), the forms read
through other files (:class:`CheckpointForm`: save_pretrained and accelerate directories,
sharded indexes), bounded file access, and page release for memory-mapped loads.

It uses ``diagnosis`` and ``checkpoint`` below it. Every torch load uses ``weights_only=True``
after the scan's bounds; nothing from a pickle is ever executed.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
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


class CheckpointForm(CheckpointFormat, Protocol):
    """A checkpoint read through other files: a save_pretrained or accelerate directory, a
    sharded index and its shards."""

    def read_container(self, safe_globals: Sequence[Any]) -> Any: ...

    def weight_files(self) -> list[Path]: ...

    def layout(self) -> dict[str, Any]: ...

    def notes(self) -> list[str]: ...


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
    """Pick the adapter from the file's first bytes, or from what a directory holds (a DCP
    ``.metadata``, a save_pretrained or accelerate folder's weights file or sharded index),
    not its name; anything else is a :class:`CheckpointReadError` naming the path."""
    if path.is_dir():
        return _directory_format(path)
    return detect_file_format(path)


def detect_file_format(path: Path) -> CheckpointFormat:
    """The adapter of one file, by its first bytes: a torch zip or legacy file, a
    safetensors file, or a sharded checkpoint's JSON index."""
    from pytest_ckpt.formats.single_file import file_format, sniff

    if sniff(path) == "index":
        from pytest_ckpt.formats.sharded import ShardedFormat, read_index

        return ShardedFormat(read_index(path))
    return file_format(path)


def _directory_format(path: Path) -> CheckpointFormat:
    from pytest_ckpt.formats.dcp import METADATA
    from pytest_ckpt.formats.pretrained_dir import directory_format

    if (path / METADATA).exists() or (path / METADATA).is_symlink():
        return get_format("dcp")
    found = directory_format(path)
    if found is None:
        raise CheckpointReadError(path, f"is a directory without a {METADATA} file "
                                        "(torch.distributed.checkpoint), a model.safetensors "
                                        "or a pytorch_model.bin (or their .index.json): not a "
                                        "checkpoint directory", advice=(
            "fix: pass a checkpoint file, a save_pretrained or accelerate save_state "
            "directory, or the directory torch.distributed.checkpoint.save wrote"))
    return found


def detect_form(path: Path) -> CheckpointForm | None:
    """The reader of a checkpoint made of several files or read through another one (a
    save_pretrained or accelerate directory, a sharded index), or ``None``."""
    from pytest_ckpt.formats.pretrained_dir import DirectoryFormat
    from pytest_ckpt.formats.sharded import ShardedFormat

    fmt = detect_format(path)
    return fmt if isinstance(fmt, (DirectoryFormat, ShardedFormat)) else None


def read_checkpoint_manifest(path: Path, model_keys: Collection[str] | None = None,
                             ) -> Manifest:
    """The manifest of a checkpoint file, read without materialising tensor data; of a torch
    file holding several state_dicts, the one matching ``model_keys`` best."""
    fmt = detect_format(path)
    if model_keys is None or fmt.name != "torch":
        return fmt.read_manifest(path)
    from pytest_ckpt.checkpoint.manifest import Manifest as Rows
    from pytest_ckpt.formats.torch_header import read_manifest
    from pytest_ckpt.formats.torch_zip import load_weights_only, weights_of

    header = read_manifest(path, model_keys)
    if header is not None:
        return header
    return Rows.from_state_dict(weights_of(load_weights_only(path), path, model_keys)[0])


def file_notes(path: Path) -> list[str]:
    """What a release manager should know about a torch file: a legacy (non-zip) layout,
    storages tagged for an accelerator, ShardedTensor entries (FSDP local state). Read from
    the pickle, nothing executed. For a directory or a sharded index: the notes of each
    weights file it reads, under the file's name."""
    from pytest_ckpt.formats.single_file import torch_file_notes

    form = detect_form(path)
    if form is not None:
        return [f"{file.name}: {note}" for file in form.weight_files()
                for note in torch_file_notes(file)]
    if detect_format(path).name != "torch":
        return []
    return torch_file_notes(path)


def recorded_ties(path: Path) -> dict[str, str]:
    """The tied keys a safetensors file left out and the key each is tied to, as the file's
    own metadata records them (``safetensors.torch.save_model``); empty for other files."""
    if path.is_dir() or detect_file_format(path).name != "safetensors":
        return {}
    from pytest_ckpt.formats import safetensors_file

    return safetensors_file.recorded_ties(safetensors_file.read_header(path))


def reading_notes(path: Path) -> list[str]:
    """How a checkpoint was read (for ``show``): which file of a directory, which shards,
    which entry of a container among several state_dicts, and the alternatives."""
    from pytest_ckpt.formats.single_file import choice_notes

    form = detect_form(path)
    if form is not None:
        return form.notes()
    return choice_notes(path) if detect_format(path).name == "torch" else []


def checkpoint_layout(path: Path) -> dict[str, Any]:
    """The container layout ``show`` prints: where the weights sit and what sits beside
    them (a torch file's container read header-only when it can be)."""
    from pytest_ckpt.formats.single_file import file_layout

    form = detect_form(path)
    if form is not None:
        return form.layout()
    if detect_format(path).name == "dcp":
        return {"layout": "torch.distributed.checkpoint directory (read from .metadata)",
                "weights_entry": None, "others": {}}
    return file_layout(path)


def load_checkpoint(path: Path, safe_globals: Sequence[Any] = (), *,
                    tensors_only: bool = False) -> Any:
    """What a checkpoint from elsewhere holds: ``torch.load(weights_only=True)`` of a torch
    file (the container as saved, after the admission checks and a CRC check of its data),
    the tensors of a safetensors file, the merged tensors of a sharded checkpoint, the
    weights file of a save_pretrained directory, the state files of an accelerate directory
    by name, or the entries of a DCP directory read without DCP's own unpickling (only its
    tensors with ``tensors_only``; ``safe_globals`` apply to torch files)."""
    from pytest_ckpt.formats.single_file import load_file

    fmt = detect_format(path)
    if fmt.name == "dcp":
        from pytest_ckpt.formats.dcp import read_dcp_state

        return read_dcp_state(path, values=not tensors_only)
    form = detect_form(path)
    if form is not None:
        return form.read_container(safe_globals)
    return load_file(path, safe_globals, fmt)
