"""Opening the files a user hands over: regular files only (a FIFO, a socket or a device
would block or never end), with a clear error naming the file, and every read bounded."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

from pytest_ckpt.errors import CheckpointReadError

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"))
_PATH_FIX = "fix: pass the path of a checkpoint file (or a checkpoint directory)"


def open_regular(path: Path) -> BinaryIO:
    """``path`` opened for reading in binary mode, refused unless it is a regular file; the
    check is made on the opened descriptor, without blocking on a FIFO."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        descriptor = os.open(path, flags)
    except OSError as error:
        raise _open_error(path, error) from None
    try:
        mode = os.fstat(descriptor).st_mode
        if not stat.S_ISREG(mode):
            raise CheckpointReadError(path, f"is {_kind(mode)}, not a checkpoint file: "
                                            "refused (reading it could block or never end)",
                                      advice=_PATH_FIX)
        os.set_blocking(descriptor, True)
        return os.fdopen(descriptor, "rb")
    except BaseException:
        os.close(descriptor)
        raise


def require_regular(path: Path) -> int:
    """The size of ``path`` when it is a readable regular file, else the error that names it
    (for readers that open the file themselves, such as ``torch.load``)."""
    with open_regular(path) as handle:
        return os.fstat(handle.fileno()).st_size


CHUNK = 1 << 20


def read_bounded(path: Path, limit: int, what: str = "file") -> bytes:
    """The whole of a regular file of at most ``limit`` bytes, read in chunks (a buffered
    ``read(limit)`` would reserve ``limit`` bytes up front, whatever the file holds)."""
    chunks: list[bytes] = []
    held = 0
    with open_regular(path) as handle:
        while chunk := handle.read(CHUNK):
            held += len(chunk)
            if held > limit:
                raise CheckpointReadError(path, f"is larger than a {what} can be "
                                                f"({limit:,} bytes): refused without reading "
                                                "it whole")
            chunks.append(chunk)
    return b"".join(chunks)


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def _open_error(path: Path, error: OSError) -> CheckpointReadError:
    if isinstance(error, FileNotFoundError):
        dangling = os.path.islink(path)
        return CheckpointReadError(path, "is a dangling symbolic link" if dangling else
                                   "does not exist", advice=_PATH_FIX)
    if isinstance(error, PermissionError):
        return CheckpointReadError(path, "cannot be read: permission denied", advice=(
            "fix: make the file readable by the user running the tests (chmod a+r)"))
    return CheckpointReadError(path, f"cannot be opened: {error.strerror or error}",
                               advice=_PATH_FIX)
