"""Sharded checkpoints as ``save_pretrained(max_shard_size=...)`` writes them: an index
(``model.safetensors.index.json`` or ``pytorch_model.bin.index.json``) whose ``weight_map``
names the shard holding each key, and the shards beside it
(``model-00001-of-00003.safetensors``, ...).

The index is read bounded and validated (a map of strings to plain file names in its own
directory); the manifest comes from each shard's header alone, as for single files. A shard
that is missing, a key the index maps to a shard that lacks it and a key a shard holds that
the index does not map to it are each a :class:`CheckpointReadError` naming the file.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, final

from pytest_ckpt.checkpoint.keys import fold_keys
from pytest_ckpt.checkpoint.manifest import Manifest, ManifestRow
from pytest_ckpt.errors import CheckpointReadError, CkptUsageError

if TYPE_CHECKING:
    import torch

INDEX_NAMES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
MAX_INDEX_BYTES = 32 << 20  # the largest published indexes (MoE models) are under 10 MB
MAX_SHARDS = 10_000
INDEX_FIX = ("fix: re-create the checkpoint with save_pretrained (it writes the index and its "
             "shards together), or download the index file again")
SHARDS_FIX = ("fix: the index and its shards come from different saves: download the "
              "checkpoint again (the index and every shard), or re-save it with save_pretrained")
MISSING_FIX = ("fix: put every shard the index names beside it (a download that stopped "
               "early leaves some out), or re-save the checkpoint with save_pretrained")


@dataclass(frozen=True)
class ShardIndex:
    """A validated index: which shard (a file name beside it) holds each key."""

    path: Path
    weight_map: dict[str, str]
    metadata: dict[str, Any]
    groups: dict[str, frozenset[str]] = field(init=False)  # shard -> the keys mapped to it

    def __post_init__(self) -> None:
        groups: dict[str, set[str]] = {}
        for key, shard in self.weight_map.items():
            groups.setdefault(shard, set()).add(key)
        object.__setattr__(self, "groups", {shard: frozenset(keys) for shard, keys in
                                            sorted(groups.items())})

    @property
    def directory(self) -> Path:
        return self.path.parent

    @property
    def shards(self) -> tuple[str, ...]:
        return tuple(self.groups)

    def keys_of(self, shard: str) -> frozenset[str]:
        return self.groups.get(shard, frozenset())


def read_index(path: Path) -> ShardIndex:
    """The index at ``path``, read whole within ``MAX_INDEX_BYTES`` and validated."""
    from pytest_ckpt.formats.files import read_bounded

    data = read_bounded(path, MAX_INDEX_BYTES, "sharded checkpoint index")
    try:
        parsed = json.loads(data, object_pairs_hook=_unique_keys)
    except (ValueError, UnicodeDecodeError, RecursionError) as error:
        raise _bad_index(path, f"is not JSON ({str(error)[:100]})") from None
    if not isinstance(parsed, dict):
        raise _bad_index(path, f"is a JSON {type(parsed).__name__}, not an object")
    weight_map = parsed.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointReadError(path, "is not a checkpoint: it is a JSON file without a "
                                        "weight_map (not a sharded checkpoint's index)", advice=(
            "fix: pass the checkpoint's directory, its model.safetensors.index.json or "
            "pytorch_model.bin.index.json, or a checkpoint file"))
    for key, shard in weight_map.items():
        if not isinstance(shard, str):
            raise _bad_index(path, f"maps {key!r} to a JSON {type(shard).__name__}, not a "
                                   "shard file name")
    shards = set(weight_map.values())
    if len(shards) > MAX_SHARDS:
        raise _bad_index(path, f"names more than {MAX_SHARDS:,} shards")
    for shard in sorted(shards):
        if not plain_file_name(shard):
            key = next(key for key, name in weight_map.items() if name == shard)
            raise _bad_index(path, f"maps {key!r} to {shard!r:.80}: a shard must be a plain "
                                   "file name beside the index (no directories, no '..'); "
                                   "refused without opening it")
    metadata = parsed.get("metadata")
    return ShardIndex(path, weight_map, metadata if isinstance(metadata, dict) else {})


def plain_file_name(name: str) -> bool:
    """A name of a file in a directory: no separator, no ``..``, nothing absolute."""
    return bool(name) and name not in (".", "..") and not any(
        char in name for char in ("/", "\\", "\0")) and Path(name).name == name \
        and not Path(name).is_absolute() and ":" not in name


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    unique = dict(pairs)
    if len(unique) != len(pairs):
        twice = sorted(key for key, count in Counter(key for key, _ in pairs).items()
                       if count > 1)
        raise ValueError(f"key {twice[0]!r} appears twice")
    return unique


def _bad_index(path: Path, why: str) -> CheckpointReadError:
    return CheckpointReadError(path, f"is not a usable sharded checkpoint index: it {why}",
                               advice=INDEX_FIX)


def folded(keys: Sequence[str] | set[str] | frozenset[str], limit: int = 4) -> str:
    """Keys folded by their integer segments, at most ``limit`` lines of them."""
    lines = fold_keys(keys)
    more = f" (and {len(lines) - limit} more)" if len(lines) > limit else ""
    return ", ".join(lines[:limit]) + more


def _count(keys: set[str] | frozenset[str]) -> str:
    return f"{len(keys)} key{'s' if len(keys) != 1 else ''}"


def check_shards_exist(index: ShardIndex) -> None:
    """Every shard the index names is there (a dangling link counts as missing)."""
    missing = [shard for shard in index.shards if not (index.directory / shard).exists()]
    if not missing:
        return
    keys = {key for shard in missing for key in index.keys_of(shard)}
    names = ", ".join(missing[:3]) + (f" (and {len(missing) - 3} more)" if len(missing) > 3
                                      else "")
    what = ("a shard that is" if len(missing) == 1 else f"{len(missing)} shards that are")
    raise CheckpointReadError(index.path, f"names {what} not beside it ({len(missing)} of "
                                          f"{len(index.shards)}): {names}, holding "
                                          f"{_count(keys)}: {folded(keys)}",
                              advice=MISSING_FIX)


def check_shard_keys(index: ShardIndex, shard: str, held: set[str] | frozenset[str]) -> None:
    """The keys a shard holds are exactly those the index maps to it."""
    mapped = index.keys_of(shard)
    path = index.directory / shard
    lacking = mapped - held
    if lacking:
        raise CheckpointReadError(path, f"lacks {_count(lacking)} that {index.path.name} maps "
                                        f"to it: {folded(lacking)}", advice=SHARDS_FIX)
    unmapped = held - mapped
    if unmapped:
        elsewhere = {key for key in unmapped if key in index.weight_map}
        where = f" ({len(elsewhere)} of them to another shard)" if elsewhere else ""
        raise CheckpointReadError(path, f"holds {_count(unmapped)} that {index.path.name} "
                                        f"does not map to it{where}: {folded(unmapped)}",
                                  advice=SHARDS_FIX)


@final
class ShardedFormat:
    """A sharded checkpoint, read through its index (``path``: the index or its directory)."""

    suffix = ".index.json"
    memory_mapped = False

    def __init__(self, index: ShardIndex, kind: str = "") -> None:
        self.index = index
        self.kind = kind  # the directory's kind ("save_pretrained directory"), if any
        stem = "safetensors" if index.path.name.startswith("model.safetensors") else ""
        self.shard_format = stem or _shard_format_name(index)
        sharded = f"sharded {self.shard_format}"
        self.name = f"{kind} ({sharded})" if kind else sharded

    def save(self, module: torch.nn.Module, path: Path) -> None:
        raise CkptUsageError("sharded checkpoints are read, not written, by pytest-ckpt: "
                             "round-trip with formats=('torch', 'safetensors'), or pass your "
                             "save_pretrained as save_to=")

    def read_manifest(self, path: Path) -> Manifest:
        """The shards' headers, checked against the index."""
        from pytest_ckpt.formats.single_file import file_format

        check_shards_exist(self.index)
        rows: list[ManifestRow] = []
        for shard in self.index.shards:
            file = self.index.directory / shard
            manifest = file_format(file).read_manifest(file)
            check_shard_keys(self.index, shard, set(manifest.keys()))
            rows.extend(manifest)
        return Manifest(tuple(rows))

    def load(self, path: Path) -> dict[str, Any]:
        return self.read_container(())

    def read_container(self, safe_globals: Sequence[Any]) -> dict[str, Any]:
        """Every shard's tensors merged, each shard read weights-only (and CRC-checked) after
        the headers were checked against the index."""
        from pytest_ckpt.formats.single_file import load_file
        from pytest_ckpt.formats.torch_zip import state_dict_of

        self.read_manifest(self.index.path)
        merged: dict[str, Any] = {}
        for shard in self.index.shards:
            file = self.index.directory / shard
            state = state_dict_of(load_file(file, safe_globals), file)
            check_shard_keys(self.index, shard, set(state))
            merged.update(state)
        return merged

    def weight_files(self) -> list[Path]:
        return [self.index.directory / shard for shard in self.index.shards]

    def layout(self) -> dict[str, Any]:
        count = len(self.index.shards)
        return {"layout": f"{count} {self.shard_format} shard{'s' if count > 1 else ''} "
                          f"named by {self.index.path.name} (flat tensor map)",
                "weights_entry": None,
                "others": {f"metadata.{key}": type(value).__name__
                           for key, value in self.index.metadata.items()}}

    def notes(self) -> list[str]:
        shards = self.index.shards
        listed = ", ".join(shards) if len(shards) <= 3 else f"{shards[0]} ... {shards[-1]}"
        where = f"{self.kind}: " if self.kind else ""
        return [f"{where}weights read from {len(shards)} shard{'s' if len(shards) > 1 else ''}"
                f" ({listed}), each header-only, as {self.index.path.name} maps "
                f"{len(self.index.weight_map)} keys to them"]


def _shard_format_name(index: ShardIndex) -> str:
    """``safetensors`` or ``torch``: from the index's name, else from the shards' names."""
    if index.path.name.startswith("pytorch_model.bin"):
        return "torch"
    suffixes = {Path(shard).suffix for shard in index.shards}
    return "safetensors" if suffixes == {".safetensors"} else "torch"
