"""Checkpoint directories other tools write: a Hugging Face ``save_pretrained`` folder
(``config.json`` beside ``model.safetensors`` or ``pytorch_model.bin``, or a sharded index),
an ``accelerate`` ``save_state`` folder (``model.safetensors``, ``model_1.safetensors``,
``optimizer.bin``, ``scheduler.bin``, ``random_states_0.pkl``, ``custom_checkpoint_0.pkl``)
and a transformers ``Trainer`` checkpoint (``optimizer.pt``, ``scheduler.pt``,
``rng_state.pth``, ``training_args.bin`` beside the weights).

The manifest is read from the one weights file the folder names (header-only, as for a file
given directly). The container of a folder with state files, which a schema describes and a
load searches for the model's weights, holds each state file under its name without suffix
(``model``, ``model_1``, ``optimizer``, ...). A file that pickles objects by design (an RNG
state holding numpy's generator, the Trainer's arguments) and that
``torch.load(weights_only=True)`` refuses is present but not read.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, final

from pytest_ckpt.checkpoint.container import FolderContainer, UnreadFile
from pytest_ckpt.checkpoint.keys import natural_key
from pytest_ckpt.checkpoint.manifest import Manifest
from pytest_ckpt.errors import CheckpointReadError, CkptUsageError

if TYPE_CHECKING:
    import torch

    from pytest_ckpt.formats.safetensors_file import SafetensorsFormat
    from pytest_ckpt.formats.sharded import ShardedFormat
    from pytest_ckpt.formats.torch_zip import TorchZipFormat

# in the order transformers' from_pretrained and accelerate's load_state look for them
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
PRETRAINED = "save_pretrained directory"
ACCELERATE = "accelerate save_state directory"
TRAINER = "Trainer checkpoint directory"
DIRECTORY = "checkpoint directory"  # weights files by their usual names, no config.json
_STATE_FILE = re.compile(r"model_\d+\.safetensors|pytorch_model_\d+\.bin|"
                         r"(optimizer|scheduler|sampler|dl_state_dict)(_\d+)?\.bin|scaler\.pt|"
                         r"random_states_\d+\.pkl|custom_checkpoint_\d+\.pkl|"
                         r"(optimizer|scheduler)\.pt|rng_state(_\d+)?\.pth|training_args\.bin")
_TRAINER_FILE = re.compile(r"(optimizer|scheduler)\.pt|rng_state(_\d+)?\.pth|"
                           r"training_args\.bin|trainer_state\.json")
# files that pickle objects by design: refused by weights_only, they are present-but-not-read
_PICKLED_OBJECTS = re.compile(r"random_states_\d+\.pkl|sampler(_\d+)?\.bin|"
                              r"rng_state(_\d+)?\.pth|training_args\.bin")
_OTHER_RANKS = re.compile(r"random_states_([1-9]\d*)\.pkl|rng_state_([1-9]\d*)\.pth")
MAX_ENTRIES = 4096  # directory entries looked at


@dataclass(frozen=True)
class CheckpointDirectory:
    """What a checkpoint directory holds, by file name."""

    path: Path
    kind: str  # PRETRAINED, ACCELERATE, TRAINER or DIRECTORY
    weights: str  # the weights file (or index) read
    state_files: tuple[str, ...]  # accelerate or Trainer state files: the container
    unused: tuple[str, ...]  # files not read: weights beside the one read, other ranks' RNG

    @property
    def weights_path(self) -> Path:
        return self.path / self.weights


def find_directory(path: Path) -> CheckpointDirectory | None:
    """The directory's weights file and state files; ``None`` when it names no weights."""
    names = _listing(path)
    weights = next((name for name in WEIGHT_FILES if name in names), None)
    if weights is None:
        return None
    state = sorted((name for name in names if _STATE_FILE.fullmatch(name)), key=natural_key)
    kind = TRAINER if any(_TRAINER_FILE.fullmatch(name) for name in names) else \
        ACCELERATE if state else PRETRAINED if "config.json" in names else DIRECTORY
    unused = [name for name in WEIGHT_FILES if name in names and name != weights]
    keep: list[str] = []
    for name in state:
        entry = entry_name(name)
        if _OTHER_RANKS.fullmatch(name) or entry in (entry_name(kept) for kept in keep):
            unused.append(name)  # a second file for one entry: the first is read
        else:
            keep.append(name)
    return CheckpointDirectory(path, kind, weights, tuple(keep), tuple(unused))


def _listing(path: Path) -> set[str]:
    try:
        with os.scandir(path) as entries:
            names = [entry.name for entry in itertools.islice(entries, MAX_ENTRIES + 1)]
    except OSError as error:
        raise CheckpointReadError(path, f"cannot be listed: {error.strerror or error}",
                                  advice="fix: make the directory readable (chmod a+rx)"
                                  ) from None
    if len(names) > MAX_ENTRIES:
        raise CheckpointReadError(path, f"is a directory of more than {MAX_ENTRIES:,} "
                                        "entries: not read as a checkpoint directory",
                                  advice="fix: pass the checkpoint's own directory or file")
    return set(names)


def entry_name(file: str) -> str:
    """The container entry of a state file: its name without suffix, ``pytorch_`` dropped
    (``model_1.safetensors`` and ``pytorch_model_1.bin`` are both ``model_1``)."""
    return file.split(".")[0].removeprefix("pytorch_")


def directory_format(path: Path) -> DirectoryFormat | ShardedFormat | None:
    """The reader of a save_pretrained, accelerate or Trainer directory, or ``None``."""
    from pytest_ckpt.formats.sharded import ShardedFormat, read_index
    from pytest_ckpt.formats.single_file import file_format

    directory = find_directory(path)
    if directory is None:
        return None
    if directory.weights.endswith(".index.json"):
        return ShardedFormat(read_index(directory.weights_path), directory.kind)
    return DirectoryFormat(directory, file_format(directory.weights_path))


@final
class DirectoryFormat:
    """A save_pretrained, accelerate save_state or Trainer checkpoint directory, read through
    its weights file."""

    suffix = ""
    memory_mapped = False

    def __init__(self, directory: CheckpointDirectory,
                 weights: TorchZipFormat | SafetensorsFormat) -> None:
        self.directory = directory
        self.weights = weights
        self.name = f"{directory.kind} ({weights.name})"

    def save(self, module: torch.nn.Module, path: Path) -> None:
        raise CkptUsageError(f"a {self.directory.kind} is read, not written, by pytest-ckpt: "
                             "pass your own saver as save_to=")

    def read_manifest(self, path: Path) -> Manifest:
        return self.weights.read_manifest(self.directory.weights_path)

    def load(self, path: Path) -> dict[str, Any]:
        from pytest_ckpt.formats.torch_zip import state_dict_of

        return state_dict_of(self.read_container(()), self.directory.path)

    def read_container(self, safe_globals: Sequence[Any]) -> Any:
        """The weights file's container; for a folder with state files (accelerate, Trainer),
        every state file under its entry name (the weights under ``model``)."""
        from pytest_ckpt.formats.single_file import load_file

        weights = load_file(self.directory.weights_path, safe_globals)
        if not self.directory.state_files:
            return weights
        entries = {entry_name(self.directory.weights): weights}
        for name in self.directory.state_files:
            entries[entry_name(name)] = _state_file(self.directory.path / name, safe_globals)
        return FolderContainer(self.directory.kind, entries)

    def weight_files(self) -> list[Path]:
        return [self.directory.weights_path]

    def layout(self) -> dict[str, Any]:
        from pytest_ckpt.formats.single_file import file_layout

        weights = self.directory.weights
        if self.directory.state_files:
            return {"layout": f"{self.directory.kind}, weights in {weights}",
                    "weights_entry": entry_name(weights),
                    "others": {entry_name(name): name for name in self.directory.state_files}}
        inner = file_layout(self.directory.weights_path)
        return {**inner, "layout": f"{inner['layout']} in {weights}"}

    def notes(self) -> list[str]:
        from pytest_ckpt.formats.single_file import choice_notes

        directory = self.directory
        notes = [f"{directory.kind}: weights read from {directory.weights}"]
        notes += [f"{directory.weights}: {note}" for note in choice_notes(
            directory.weights_path)]
        if directory.state_files:
            notes.append(f"beside the weights, not in the manifest (ckpt.assert_schema "
                         f"describes them): {', '.join(directory.state_files)}")
        notes += [_pickled_note(directory.path / name) for name in directory.state_files
                  if _PICKLED_OBJECTS.fullmatch(name)]
        if directory.unused:
            notes.append(f"not read: {', '.join(directory.unused)}")
        return notes


def _state_file(path: Path, safe_globals: Sequence[Any]) -> Any:
    """A state file loaded weights-only; an RNG or sampler file that weights_only refuses
    for globals that are plain data is an :class:`UnreadFile`."""
    from pytest_ckpt.formats.single_file import load_file

    try:
        return load_file(path, safe_globals)
    except CheckpointReadError as error:
        if not _inert_refusal(path, error):
            raise
        refused = error
    return UnreadFile(path.name, _refusal_reason(refused.unsafe))


def _inert_refusal(path: Path, error: CheckpointReadError) -> bool:
    from pytest_ckpt.formats.torch_zip import NEVER_ALLOW

    return bool(error.unsafe) and bool(_PICKLED_OBJECTS.fullmatch(path.name)) and not any(
        name.startswith(NEVER_ALLOW) for _, name in error.unsafe)


def _refusal_reason(unsafe: Sequence[tuple[str, str]]) -> str:
    modules = sorted({name.split(".")[0] for _, name in unsafe})
    return f"weights_only=True refuses its {', '.join(modules)} globals"


def _pickled_note(path: Path) -> str:
    """Whether show's reader would read an RNG or sampler file, from an inert scan."""
    from pytest_ckpt.formats.pickle_scan import unsafe_globals
    from pytest_ckpt.formats.torch_file import scan

    try:
        unsafe = unsafe_globals(scan(path))
    except CheckpointReadError as error:
        return f"{path.name} is present but cannot be read: it {error.reason}"
    if not unsafe:
        return f"{path.name} is read weights-only by ckpt.assert_schema"
    names = sorted({name for _, name in unsafe})
    shown = ", ".join(names[:3]) + (f" (and {len(names) - 3} more)" if len(names) > 3 else "")
    return (f"{path.name} is present but not read: {_refusal_reason(unsafe)} ({shown}); "
            "nothing from it was executed")
