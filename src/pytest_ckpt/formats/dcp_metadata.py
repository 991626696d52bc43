"""A ``torch.distributed.checkpoint`` directory's ``.metadata``, read without trusting it.

DCP writes ``.metadata`` with plain ``pickle``. It is read here by an unpickler that admits
only what DCP metadata holds (its dataclasses and enums, ``torch.Size``, dtypes, a path),
after the opcode bounds, and then validated field by field: exact types, exact attribute
sets (a pickle can give any object extra attributes), sizes and chunk offsets that fit,
storage files inside the directory with slices inside the files. Nothing is planned or read
from a directory whose metadata fails a check.
"""

from __future__ import annotations

import dataclasses
import enum
import importlib
import io
import math
import os
import pickle
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from pytest_ckpt.errors import CheckpointReadError, first_line
from pytest_ckpt.formats.files import open_regular, read_bounded

METADATA = ".metadata"
MAX_METADATA_BYTES = 256 << 20
_DCP_MODULES = ("torch.distributed.checkpoint.", "torch.distributed._shard.")
_FUNCTIONS = {("torch.serialization", "_get_layout")}  # "torch.strided" -> torch.strided
_PATHS = {("pathlib", "PosixPath"), ("pathlib", "WindowsPath"), ("pathlib", "Path")}
_FIX = ("fix: this directory's metadata is crafted or damaged; re-save the checkpoint with "
        "torch.distributed.checkpoint.save from trusted code")


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        import torch

        if module == "torch" and (name == "Size" or isinstance(getattr(torch, name, None),
                                                               torch.dtype)):
            return getattr(torch, name)
        if (module, name) in _PATHS or (module, name) == ("collections", "OrderedDict"):
            return getattr(importlib.import_module(module), name)
        if module.startswith(_DCP_MODULES) or (module, name) in _FUNCTIONS:
            try:
                found = getattr(importlib.import_module(module), name, None)
            except ImportError:
                found = None
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
    """The validated ``Metadata`` of a DCP directory; nothing from the pickle is run."""
    from pytest_ckpt.formats.pickle_bounds import check_opcodes

    source = path / METADATA
    data = read_bounded(source, MAX_METADATA_BYTES, "DCP .metadata file")
    check_opcodes(data, source)
    try:
        metadata = _MetadataUnpickler(io.BytesIO(data)).load()
    except pickle.UnpicklingError as error:
        raise CheckpointReadError(source, f"cannot be read: {error}; nothing from it was "
                                          "executed", advice=_FIX) from None
    except Exception as error:  # a truncated or crafted pickle of allowed types
        raise CheckpointReadError(source, f"is corrupt or truncated ({type(error).__name__}: "
                                          f"{first_line(error)})", advice=_FIX) from None
    _Validator(path).metadata(metadata)
    return metadata


class _Validator:
    """Checks one directory's metadata; the first problem is a :class:`CheckpointReadError`."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.sizes: dict[str, int] = {}  # storage file -> its size
        module: Any = importlib.import_module("torch.distributed.checkpoint.metadata")
        self.types = module

    def fail(self, what: str) -> NoReturn:
        raise CheckpointReadError(self.directory / METADATA, f"is malformed: {what}; refused, "
                                  "nothing was read from the directory", advice=_FIX)

    def exact(self, value: Any, kind: type, where: str, required: tuple[str, ...] = ()) -> None:
        """``value`` is exactly a ``kind`` whose attributes are among its dataclass fields."""
        if type(value) is not kind:
            self.fail(f"{where} is a {type(value).__name__}, not a {kind.__name__}")
        fields = {field.name for field in dataclasses.fields(kind)}
        attributes = set(vars(value))
        if attributes - fields or set(required) - attributes:
            extra, absent = sorted(attributes - fields), sorted(set(required) - attributes)
            self.fail(f"{where} ({kind.__name__}) has "
                      + (f"unexpected attributes {', '.join(extra)}" if extra else
                         f"no {', '.join(absent)}"))

    def metadata(self, metadata: Any) -> None:
        types = self.types
        self.exact(metadata, types.Metadata, "the metadata", ("state_dict_metadata",))
        entries = metadata.state_dict_metadata
        if type(entries) is not dict:
            self.fail(f"state_dict_metadata is a {type(entries).__name__}, not a dict")
        storage = getattr(metadata, "storage_data", None)
        if type(storage) is not dict:
            self.fail("storage_data is missing: it names no data files")
        infos = self.storage(storage)
        for key, item in entries.items():
            if type(key) is not str:
                self.fail(f"an entry key is a {type(key).__name__}, not a str")
            self.entry(key, item, infos)

    def entry(self, key: str, item: Any, infos: dict[Any, Any]) -> None:
        types = self.types
        if type(item) is types.BytesStorageMetadata:
            self.exact(item, types.BytesStorageMetadata, f"entry {key!r}")
            self.slice_of(key, None, infos)
            return
        self.exact(item, types.TensorStorageMetadata, f"entry {key!r}",
                   ("properties", "size", "chunks"))
        size = self.shape(item.size, f"entry {key!r}'s size")
        self.properties(key, item.properties)
        if type(item.chunks) is not list:
            self.fail(f"entry {key!r}'s chunks are a {type(item.chunks).__name__}, not a list")
        itemsize = item.properties.dtype.itemsize
        for index, chunk in enumerate(item.chunks):
            self.chunk(key, index, chunk, size, itemsize, infos)

    def properties(self, key: str, properties: Any) -> None:
        import torch

        self.exact(properties, self.types.TensorProperties, f"entry {key!r}'s properties",
                   ("dtype",))
        if not isinstance(properties.dtype, torch.dtype):
            self.fail(f"entry {key!r}'s dtype is a {type(properties.dtype).__name__}")

    def shape(self, value: Any, where: str) -> tuple[int, ...]:
        import torch

        if type(value) is not torch.Size or any(type(n) is not int or n < 0 for n in value):
            self.fail(f"{where} is not a size of non-negative integers ({value!r:.80})")
        return tuple(value)

    def chunk(self, key: str, index: int, chunk: Any, size: tuple[int, ...], itemsize: int,
              infos: dict[Any, Any]) -> None:
        where = f"chunk {index} of entry {key!r}"
        self.exact(chunk, self.types.ChunkStorageMetadata, where, ("offsets", "sizes"))
        offsets, sizes = self.shape(chunk.offsets, where), self.shape(chunk.sizes, where)
        if len(offsets) != len(size) or len(sizes) != len(size) or any(
                start + length > whole for start, length, whole in zip(offsets, sizes, size,
                                                                        strict=True)):
            self.fail(f"{where} (offsets {list(offsets)}, sizes {list(sizes)}) does not fit "
                      f"the tensor's size {list(size)}")
        info = self.slice_of(key, chunk.offsets, infos)
        if not getattr(info, "transform_descriptors", None) and \
                info.length < math.prod(sizes) * itemsize:
            self.fail(f"{where} needs {math.prod(sizes) * itemsize:,} bytes, its data slice "
                      f"holds {info.length:,}")

    def storage(self, storage: dict[Any, Any]) -> dict[Any, Any]:
        filesystem: Any = importlib.import_module("torch.distributed.checkpoint.filesystem")
        for index, info in storage.items():
            self.exact(index, self.types.MetadataIndex, "a storage_data key", ("fqn",))
            if type(index.fqn) is not str:
                self.fail("a storage_data key has a fqn that is not a str")
            self.exact(info, filesystem._StorageInfo, f"the storage of {index.fqn!r}",
                       ("relative_path", "offset", "length"))
            self.place(index.fqn, info)
        return storage

    def place(self, key: str, info: Any) -> None:
        """The slice lies inside a regular file inside the directory."""
        relative, offset, length = info.relative_path, info.offset, info.length
        if type(relative) is not str or type(offset) is not int or type(length) is not int \
                or offset < 0 or length < 0:
            self.fail(f"the storage of {key!r} is not (relative path, offset >= 0, "
                      "length >= 0)")
        descriptors = getattr(info, "transform_descriptors", None)
        if descriptors is not None and (not isinstance(descriptors, (list, tuple)) or not all(
                type(item) is str for item in descriptors)):
            self.fail(f"the storage of {key!r} has transform descriptors that are not strings")
        if relative not in self.sizes:
            self.sizes[relative] = self.file_size(key, relative)
        if offset + length > self.sizes[relative]:
            self.fail(f"the data of {key!r} ends at byte {offset + length:,} of {relative}, "
                      f"which has {self.sizes[relative]:,} (truncated?)")

    def file_size(self, key: str, relative: str) -> int:
        root = os.path.realpath(self.directory)
        target = os.path.realpath(os.path.join(root, relative))
        if "\0" in relative or os.path.isabs(relative) or os.path.commonpath(
                [root, target]) != root:
            self.fail(f"the storage of {key!r} points outside the directory ({relative!r})")
        try:  # its size only: the data is not opened until it is read
            status = os.stat(target)
        except OSError as error:
            self.fail(f"the storage of {key!r} names {relative!r}, which cannot be found "
                      f"({error.strerror})")
        if not stat.S_ISREG(status.st_mode):
            self.fail(f"the storage of {key!r} names {relative!r}, which is not a regular file")
        return status.st_size

    def slice_of(self, key: str, offsets: Any, infos: dict[Any, Any]) -> Any:
        info = infos.get(self.types.MetadataIndex(key, offsets))
        if info is None:
            self.fail(f"entry {key!r} has no storage_data for "
                      + ("its value" if offsets is None else f"its chunk at {list(offsets)}"))
        return info


def storage_slice(directory: Path, info: Any) -> bytes:
    """The bytes of one validated storage slice."""
    with open_regular(directory / info.relative_path) as handle:
        handle.seek(info.offset)
        return handle.read(info.length)


def index_of(key: str, offsets: Any) -> Any:
    module: Any = importlib.import_module("torch.distributed.checkpoint.metadata")
    index: Callable[..., Any] = module.MetadataIndex
    return index(key, offsets)
