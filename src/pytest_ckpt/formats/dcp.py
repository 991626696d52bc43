"""``torch.distributed.checkpoint`` directories: the manifest from ``.metadata`` alone (no
tensor data read), and a one-process save/load for round-trips.

DCP writes ``.metadata`` with plain ``pickle``. pytest-ckpt reads it with an unpickler that
admits only what DCP metadata holds (its dataclasses and enums, ``torch.Size``, dtypes, a path)
and refuses anything else by name, so a crafted directory runs nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import importlib
import pickle
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, final

from pytest_ckpt.errors import CheckpointReadError, first_line
from pytest_ckpt.manifest import Manifest, ManifestRow, dtype_name

if TYPE_CHECKING:
    import torch

    from pytest_ckpt.findings import Finding

METADATA = ".metadata"
_DCP_MODULES = ("torch.distributed.checkpoint.", "torch.distributed._shard.")
_FUNCTIONS = {("torch.serialization", "_get_layout")}  # "torch.strided" -> torch.strided
_PATHS = {("pathlib", "PosixPath"), ("pathlib", "WindowsPath"), ("pathlib", "Path")}


def is_dcp_directory(path: Path) -> bool:
    return path.is_dir() and (path / METADATA).is_file()


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        import torch

        if module == "torch" and (name == "Size" or isinstance(getattr(torch, name, None),
                                                               torch.dtype)):
            return getattr(torch, name)
        if (module, name) in _PATHS or (module, name) == ("collections", "OrderedDict"):
            return getattr(importlib.import_module(module), name)
        if module.startswith(_DCP_MODULES) or (module, name) in _FUNCTIONS:
            found = getattr(importlib.import_module(module), name, None)
            if found is None:
                raise pickle.UnpicklingError(
                    f"it needs {module}.{name}, which torch {torch.__version__} lacks (the "
                    "checkpoint was written by a newer torch)")
            if (module, name) in _FUNCTIONS or (isinstance(found, type) and (
                    dataclasses.is_dataclass(found) or issubclass(found, enum.Enum))):
                return found
        raise pickle.UnpicklingError(f"global {module}.{name} is not part of DCP metadata "
                                     "(refused)")


def read_metadata(path: Path) -> Any:
    """The ``Metadata`` of a DCP directory, read without running anything from the pickle."""
    if not is_dcp_directory(path):
        raise CheckpointReadError(path, f"is not a torch.distributed.checkpoint directory "
                                        f"(no {METADATA} file)")
    try:
        with open(path / METADATA, "rb") as stream:
            metadata = _MetadataUnpickler(stream).load()
    except pickle.UnpicklingError as error:
        raise CheckpointReadError(path / METADATA, f"cannot be read: {error}; nothing from "
                                  "it was executed") from None
    except (EOFError, ValueError, TypeError, AttributeError, ImportError) as error:
        raise CheckpointReadError(path / METADATA, f"is corrupt or truncated "
                                  f"({first_line(error)})") from None
    if not hasattr(metadata, "state_dict_metadata"):
        raise CheckpointReadError(path / METADATA, "holds no DCP state_dict metadata")
    return metadata


def manifest_from_metadata(path: Path) -> Manifest:
    """Keys, dtypes and shapes of every tensor a DCP checkpoint holds (other entries are
    ``extra`` rows), from ``.metadata`` only."""
    rows = []
    for key, item in read_metadata(path).state_dict_metadata.items():
        properties = getattr(item, "properties", None)
        if properties is None:  # BytesStorageMetadata: a pickled non-tensor value
            rows.append(ManifestRow(key, "object", (), "extra"))
        else:
            rows.append(ManifestRow(key, dtype_name(properties.dtype), tuple(item.size)))
    return Manifest(tuple(rows))


@final
class DcpFormat:
    """One-process DCP: ``dcp.save`` / ``dcp.load`` (``save_state_dict`` with ``no_dist`` on
    torch versions that predate them)."""

    name = "dcp"
    suffix = ".dcp"
    memory_mapped = False

    def save(self, module: torch.nn.Module, path: Path) -> None:
        save_state(module.state_dict(), path)

    def load(self, path: Path) -> dict[str, Any]:
        """Tensors allocated from the metadata, then filled by ``dcp.load``."""
        import torch

        metadata = read_metadata(path)
        state: dict[str, Any] = {
            key: torch.empty(tuple(item.size), dtype=item.properties.dtype)
            for key, item in metadata.state_dict_metadata.items()
            if getattr(item, "properties", None) is not None}
        load_state(state, path)
        return state

    def read_manifest(self, path: Path) -> Manifest:
        return manifest_from_metadata(path)


def save_state(state: dict[str, Any], path: Path) -> None:
    dcp: Any = importlib.import_module("torch.distributed.checkpoint")
    with single_process():
        if hasattr(dcp, "save"):
            dcp.save(state, checkpoint_id=str(path))
        else:  # torch < 2.2
            dcp.save_state_dict(state, dcp.FileSystemWriter(str(path)), no_dist=_no_dist())


def load_state(state: dict[str, Any], path: Path) -> None:
    """``dcp.load`` into ``state`` in place (DCP's own pickle read of ``.metadata``; call
    :func:`read_metadata` first on files you did not write)."""
    dcp: Any = importlib.import_module("torch.distributed.checkpoint")
    with single_process():
        if hasattr(dcp, "load"):
            dcp.load(state, checkpoint_id=str(path))
        else:  # torch < 2.2
            dcp.load_state_dict(state, dcp.FileSystemReader(str(path)), no_dist=_no_dist())


def _no_dist() -> bool:
    """Plan alone unless this process is a rank of a process group (``dcp-N-M``): ranks that
    each plan alone fail to validate the global plan of a sharded save."""
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized())


@contextlib.contextmanager
def single_process() -> Iterator[None]:
    """DCP without a process group warns that it runs single-process: that is the point."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
        warnings.filterwarnings("ignore", category=FutureWarning)  # save_state_dict on old torch
        yield


def dcp_load_findings(model: torch.nn.Module, checkpoint: Manifest) -> list[Finding]:
    """What ``dcp.load(model.state_dict(), ...)`` would do silently with this checkpoint:
    skip keys the model lacks, and never run the model's ``load_state_dict`` pre-hooks (so
    keys such a hook would convert, e.g. legacy weight_norm ``weight_g/weight_v``, stay
    unloaded)."""
    from pytest_ckpt.findings import Finding

    expected = set(model.state_dict())
    findings = []
    extra = sorted(set(checkpoint.keys()) - expected)
    if extra:
        findings.append(Finding(
            "unexpected", tuple(extra), "dcp.load(model.state_dict()) skips checkpoint keys "
            "the model lacks without a word: these are never loaded"))
    hooked = sorted(name or "<root>" for name, module in model.named_modules()
                    if getattr(module, "_load_state_dict_pre_hooks", None))
    absent = sorted(expected - set(checkpoint.keys()))
    if hooked and absent:
        findings.append(Finding(
            "not_loaded", tuple(absent), f"DCP never runs load_state_dict pre-hooks; "
            f"{len(hooked)} module(s) of the model have one ({', '.join(hooked[:4])}), which "
            "Module.load_state_dict would use to convert old keys (e.g. legacy weight_norm); "
            "through dcp.load these stay unloaded"))
    return findings
