"""Errors a user meets for bad input: each names the file or the test and says what to do."""

from __future__ import annotations

from pathlib import Path


class CheckpointReadError(Exception):
    """A file could not be read as a checkpoint; the message names the file."""

    def __init__(self, path: Path | str, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"checkpoint {self.path} {reason}")


class CkptUsageError(Exception):
    """A marker or fixture was used wrongly; the message names the test and the fix."""
