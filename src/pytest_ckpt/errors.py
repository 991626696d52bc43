"""Errors a user meets for bad input: each names the file or the test and says what to do."""

from __future__ import annotations

from pathlib import Path


def first_line(error: BaseException, limit: int = 160) -> str:
    """The first line of an exception's message (its type name when empty), at most
    ``limit`` characters."""
    text = str(error).strip()
    line = text.splitlines()[0] if text else type(error).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


class CheckpointReadError(Exception):
    """A file could not be read as a checkpoint; the message names the file."""

    def __init__(self, path: Path | str, reason: str,
                 unsafe: tuple[tuple[str, str], ...] = ()) -> None:
        self.path = Path(path)
        self.reason = reason
        self.unsafe = unsafe  # (place in the container, global) a weights_only load refused
        super().__init__(f"checkpoint {self.path} {reason}")


class CkptUsageError(Exception):
    """A marker or fixture was used wrongly; the message names the test and the fix."""


class CheckpointFileWarning(UserWarning):
    """A checkpoint file loads, but is not fit for release as it is (legacy format, storages
    tagged for CUDA); the message names the file."""
