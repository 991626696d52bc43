"""``torch.distributed.checkpoint`` directories: the manifest from ``.metadata`` alone (no
tensor data read), a reader for directories from elsewhere, and a one-process save/load for
round-trips.

A directory from elsewhere is never given to DCP's own load: DCP unpickles ``.metadata`` with
plain ``pickle`` and non-tensor entries with ``torch.load(weights_only=False)`` (tensor chunks
too, before torch 2.2). Its validated metadata (``dcp_metadata``) locates each slice, and every
slice is read with ``torch.load(weights_only=True)`` after the admission checks.
"""

from __future__ import annotations

import contextlib
import importlib
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, final

from pytest_ckpt.checkpoint.manifest import Manifest, ManifestRow, dtype_name
from pytest_ckpt.errors import CheckpointReadError
from pytest_ckpt.formats.dcp_metadata import METADATA as METADATA
from pytest_ckpt.formats.dcp_metadata import index_of, read_metadata, storage_slice

if TYPE_CHECKING:
    import torch

    from pytest_ckpt.diagnosis.findings import Finding

def is_dcp_directory(path: Path) -> bool:
    return path.is_dir() and (path / METADATA).is_file()


def manifest_from_metadata(path: Path) -> Manifest:
    """Keys, dtypes and shapes of every tensor a DCP checkpoint holds (other entries are
    ``extra`` rows), from ``.metadata`` only."""
    rows = []
    for key, item in read_metadata(path).state_dict_metadata.items():
        if _is_bytes(item):  # a pickled non-tensor value
            rows.append(ManifestRow(key, "object", (), "extra"))
        else:
            rows.append(ManifestRow(key, dtype_name(item.properties.dtype), tuple(item.size)))
    return Manifest(tuple(rows))


def _is_bytes(item: Any) -> bool:
    """A ``BytesStorageMetadata`` entry (the metadata is validated: exactly that type, or
    exactly ``TensorStorageMetadata``)."""
    return type(item).__name__ == "BytesStorageMetadata"


def read_dcp_state(path: Path, *, values: bool = True) -> dict[str, Any]:
    """Every entry of a DCP directory from elsewhere: tensors assembled from their chunks and
    (with ``values``) non-tensor entries, each slice loaded with ``weights_only=True``. A
    slice that needs more than weights_only allows is an ``unsafe_pickle`` refusal naming
    its key."""
    import torch

    metadata = read_metadata(path)
    infos = metadata.storage_data
    state: dict[str, Any] = {}
    refused: list[tuple[str, str]] = []
    for key, item in metadata.state_dict_metadata.items():
        if _is_bytes(item) and not values:
            continue
        try:
            if _is_bytes(item):
                state[key] = _load_slice(path, key, infos[index_of(key, None)])
            else:
                state[key] = _assemble(path, key, item, infos, torch)
        except CheckpointReadError as error:
            if not error.unsafe:
                raise
            refused += [(f"[{key!r}]", name) for _, name in error.unsafe]
    if refused:
        shown = "; ".join(f"{where}: {name}" for where, name in refused[:6])
        raise CheckpointReadError(path, f"was refused by torch.load(weights_only=True) for "
                                        f"some entries; nothing from it was executed. They "
                                        f"need these globals: {shown}", unsafe=tuple(refused))
    return state


def _assemble(path: Path, key: str, item: Any, infos: Any, torch: Any) -> Any:
    whole = torch.empty(tuple(item.size), dtype=item.properties.dtype)
    for chunk in item.chunks:
        part = _load_slice(path, key, infos[index_of(key, chunk.offsets)])
        if not isinstance(part, torch.Tensor) or tuple(part.shape) != tuple(chunk.sizes) \
                or part.dtype != whole.dtype:
            raise CheckpointReadError(path, f"is corrupt: the chunk of {key!r} at "
                                            f"{list(chunk.offsets)} is not a "
                                            f"{dtype_name(whole.dtype)} tensor of size "
                                            f"{list(chunk.sizes)}")
        region = tuple(slice(start, start + size)
                       for start, size in zip(chunk.offsets, chunk.sizes, strict=True))
        whole[region] = part
    return whole


def _load_slice(path: Path, key: str, info: Any) -> Any:
    from pytest_ckpt.formats.torch_zip import load_bytes_weights_only

    if getattr(info, "transform_descriptors", None):
        raise CheckpointReadError(path, f"stores {key!r} through DCP stream transforms "
                                        f"({', '.join(info.transform_descriptors)}), which "
                                        "pytest-ckpt does not read", advice=(
            "fix: save the checkpoint without _extensions= for the tests"))
    label = Path(f"{path}/{info.relative_path}[{info.offset}:{info.offset + info.length}] "
                 f"({key!r})")
    return load_bytes_weights_only(storage_slice(path, info), label)


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
        """The tensors of a directory this round-trip wrote: allocated from the (validated)
        metadata, then filled by ``dcp.load``, the path users take."""
        import torch

        metadata = read_metadata(path)
        state: dict[str, Any] = {
            key: torch.empty(tuple(item.size), dtype=item.properties.dtype)
            for key, item in metadata.state_dict_metadata.items() if not _is_bytes(item)}
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
    """``dcp.load`` into ``state`` in place: only for directories this process wrote (DCP
    unpickles their metadata and values unrestricted; see :func:`read_dcp_state`)."""
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
    from pytest_ckpt.diagnosis.findings import Finding

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
