"""A torch checkpoint file as ``torch.save`` lays it out: a zip archive (its ``data.pkl``,
size-checked against the zip directory, CRC-checked, every entry inside the file, no entry a
bomb) or a legacy (non-zip) file (magic number, protocol and system pickles, the container
pickle, then the storages), scanned inert by ``pickle_scan`` and kept by content."""

from __future__ import annotations

import hashlib
import io
import pickletools
import struct
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any, BinaryIO

from pytest_ckpt.errors import CheckpointReadError
from pytest_ckpt.formats.files import open_regular
from pytest_ckpt.formats.pickle_bounds import (
    check_opcodes,
    check_structure,
    quiet_opcode_reading,
)
from pytest_ckpt.formats.pickle_scan import (
    MAX_PICKLE_BYTES,
    Scanned,
    Scanner,
    StandIns,
    load_scanned,
    scan_pickle_bytes,
    scanned_children,
)

MAX_RATIO = 200  # a compressed zip entry may inflate to at most this many times its size
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


_CACHE: OrderedDict[tuple[Any, ...], Scanned] = OrderedDict()
_CACHE_SIZE = 2  # show reads one file's scan several times; keep little else


def scan(path: Path) -> Scanned:
    """The container of a torch zip or legacy file, every global a stand-in; a
    :class:`CheckpointReadError` naming the file when it is not one, is damaged, or breaks a
    bound. Scans of a zip are kept by content (the pickle's sha256 and the archive's
    directory), so ``show`` reads a file's manifest, container and notes from one scan and
    a file swapped in place is never mistaken for the one it replaced."""
    with open_regular(path) as handle:
        return scan_stream(handle, path)


def scan_stream(handle: BinaryIO, source: Path) -> Scanned:
    """:func:`scan` of an open file or an in-memory one (``source`` names it in errors)."""
    head = handle.read(4)
    handle.seek(0)
    if head != b"PK\x03\x04" and not zipfile.is_zipfile(handle):
        return _scan_legacy(handle, source)
    prefix, data, sizes = read_zip_pickle(handle, source)
    key = (hashlib.sha256(data).digest(), prefix, tuple(sorted(sizes.items())))
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    scanned = scan_pickle_bytes(data, source, prefix=prefix, sizes=sizes)
    _CACHE[key] = scanned
    if len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return scanned


def storage_locations(path: Path) -> dict[str, int]:
    """How many tensor storages the file tags with each device (``{'cpu': 10, 'cuda:0': 2}``)."""
    return dict(scan(path).locations)


# -- zip archives ------------------------------------------------------------------------

def read_zip_pickle(handle: BinaryIO, path: Path) -> tuple[str, bytes, dict[str, int]]:
    """The archive's directory prefix, the bytes of its ``data.pkl`` (size-checked against
    the zip directory and ``MAX_PICKLE_BYTES``, CRC-checked) and every entry's size."""
    total = handle.seek(0, io.SEEK_END)
    handle.seek(0)
    try:
        archive = zipfile.ZipFile(handle)
        infos = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError,
            NotImplementedError, struct.error) as error:
        raise CheckpointReadError(path, f"is corrupt or truncated (its zip directory is "
                                        f"missing or damaged: {str(error)[:120]})") from None
    pickles = [info for info in infos if info.filename.rpartition("/")[2] == "data.pkl"]
    if len(pickles) != 1:
        what = "no data.pkl entry" if not pickles else f"{len(pickles)} data.pkl entries"
        raise CheckpointReadError(path, f"is a zip archive with {what}: not a torch.save "
                                        "checkpoint")
    for info in infos:
        _check_entry(handle, info, total, path)
    entry = pickles[0]
    data = _read_entry(archive, entry, path)
    return (entry.filename.removesuffix("data.pkl"), data,
            {info.filename: info.file_size for info in infos})


def _check_entry(handle: BinaryIO, info: zipfile.ZipInfo, total: int, path: Path) -> None:
    """The entry's data lies inside the file, and a compressed entry is not a bomb."""
    if not 0 <= info.header_offset < total or info.compress_size < 0:
        raise CheckpointReadError(path, f"is corrupt: zip entry {info.filename} is said to "
                                        f"start at byte {info.header_offset:,} of {total:,}")
    handle.seek(info.header_offset)
    header = handle.read(30)
    if len(header) < 30 or header[:4] != b"PK\x03\x04":
        raise CheckpointReadError(path, f"is corrupt or truncated: zip entry {info.filename} "
                                        "has no local header where the directory says")
    name_length, extra_length = struct.unpack("<HH", header[26:30])
    end = info.header_offset + 30 + name_length + extra_length + info.compress_size
    if end > total:
        raise CheckpointReadError(path, f"is truncated: zip entry {info.filename} ends at byte "
                                        f"{end:,}, the file has {total:,}")
    if info.compress_type != zipfile.ZIP_STORED and \
            info.file_size > MAX_RATIO * max(info.compress_size, 1) + (1 << 20):
        raise CheckpointReadError(path, f"is a zip bomb: entry {info.filename} inflates from "
                                        f"{info.compress_size:,} to {info.file_size:,} bytes; "
                                        "refused without inflating it")


def _read_entry(archive: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path) -> bytes:
    if info.file_size > MAX_PICKLE_BYTES:
        raise CheckpointReadError(path, f"has a {info.filename} of {info.file_size:,} bytes, "
                                        f"over the {MAX_PICKLE_BYTES:,} a checkpoint's pickle "
                                        "may have: refused without reading it")
    try:
        with archive.open(info) as stream:
            data = stream.read(info.file_size + 1)  # the size is checked above
    except zipfile.BadZipFile as error:
        what = "fails its CRC-32 check" if "CRC" in str(error) else f"is corrupt ({error})"
        raise CheckpointReadError(path, f"is corrupt: its {info.filename} entry {what} (the "
                                        "file changed after it was written)") from None
    except (OSError, EOFError, ValueError, RuntimeError, NotImplementedError,
            zipfile.LargeZipFile) as error:  # RuntimeError: an entry flagged as encrypted
        raise CheckpointReadError(path, f"is corrupt: its {info.filename} entry cannot be read "
                                        f"({str(error)[:120]})") from None
    if len(data) != info.file_size:
        raise CheckpointReadError(path, f"is corrupt: its {info.filename} entry holds "
                                        f"{len(data):,} bytes, the zip directory says "
                                        f"{info.file_size:,}")
    return data


# -- legacy (non-zip) files --------------------------------------------------------------

def _scan_legacy(handle: BinaryIO, path: Path) -> Scanned:
    """Legacy ``torch.save`` (``_use_new_zipfile_serialization=False``): magic number,
    protocol, system info, then the container pickle and the storage keys. The pickles are
    read into memory (growing up to ``MAX_PICKLE_BYTES``) and bounds-checked one by one
    before each is unpickled; the storages' raw bytes after them are not read."""
    size = handle.seek(0, io.SEEK_END)
    handle.seek(0)
    head = handle.read(2)
    if not head.startswith(b"\x80") or head[1:2] not in (b"\x02", b"\x03", b"\x04", b"\x05"):
        raise not_a_checkpoint(path)
    parts = _legacy_pickles(handle, size, path)
    stand_ins = StandIns(path)
    if _legacy_part(parts[0], path, stand_ins) != _LEGACY_MAGIC:
        raise not_a_checkpoint(path, "its first pickle is not torch's legacy magic number")
    for part in parts[1:3]:  # protocol version, system info
        _legacy_part(part, path, stand_ins)
    check_opcodes(parts[3], path)
    scanner = Scanner(io.BytesIO(parts[3]), stand_ins)
    root = load_scanned(scanner, path)
    check_structure(root, path, scanned_children)
    declared = sum(record.nbytes or 0 for record in scanner.storages)
    if declared > size:
        raise CheckpointReadError(path, f"is truncated or corrupt: its storages claim "
                                        f"{declared:,} bytes, the file has {size:,}")
    return Scanned(root, scanner.locations, storages=tuple(scanner.storages))


def _legacy_pickles(handle: BinaryIO, size: int, path: Path) -> list[bytes]:
    """The first four pickles of a legacy file, found by their opcodes (nothing built)."""
    limit = min(size, MAX_PICKLE_BYTES)
    length = min(limit, 1 << 20)
    while True:
        handle.seek(0)
        data = handle.read(length)
        stream = io.BytesIO(data)
        ends: list[int] = []
        try:
            while len(ends) < 4:
                ends.append(_pickle_end(stream))
        except ValueError as error:
            if length < limit:
                length = min(limit, length * 4)
                continue
            why = "its header pickles cannot be read" if len(ends) < 3 else (
                f"its container pickle is malformed or truncated ({str(error)[:100]})")
            raise not_a_checkpoint(path, why) from None
        starts = [0, *ends[:-1]]
        return [data[start:end] for start, end in zip(starts, ends, strict=True)]


def _pickle_end(stream: io.BytesIO) -> int:
    with quiet_opcode_reading():
        for _ in pickletools.genops(stream):
            pass
    return stream.tell()


def _legacy_part(data: bytes, path: Path, stand_ins: StandIns) -> Any:
    check_opcodes(data, path)
    scanner = Scanner(io.BytesIO(data), stand_ins)
    try:
        return scanner.load()
    except Exception:
        raise not_a_checkpoint(path, "its header pickles cannot be read") from None


def not_a_checkpoint(path: Path, why: str = "") -> CheckpointReadError:
    detail = f" ({why})" if why else ""
    return CheckpointReadError(
        path, "is not a checkpoint: it is neither a torch zip file, a legacy torch file nor a "
              f"safetensors file{detail}", advice=(
            "fix: pass a file written by torch.save or safetensors' save_file, or a "
            "torch.distributed.checkpoint directory"))
