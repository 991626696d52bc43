"""Errors a user meets for bad input: each names the file or the test and says what to do."""

from __future__ import annotations

import re
from pathlib import Path

# torch's own advice on a refusal; never repeated: it would run whatever the file carries
_UNSAFE_ADVICE = re.compile(r"weights_only\W*(=|to|set to)\W*False", re.IGNORECASE)

READ_FIX = ("fix: re-create the checkpoint from trusted code (torch.save, or safetensors' "
            "save_file), or download it again; check that the path names the checkpoint")


def first_line(error: BaseException, limit: int = 160) -> str:
    """The first line of an exception's message (its type name when empty), at most
    ``limit`` characters; a sentence advising ``weights_only=False`` is dropped."""
    text = without_unsafe_advice(str(error).strip())
    line = text.splitlines()[0] if text else type(error).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


def without_unsafe_advice(text: str) -> str:
    """``text`` without the sentences (or lines) that tell the reader to load with
    ``weights_only=False``."""
    kept = []
    for line in text.splitlines():
        sentences = [part for part in line.split(". ") if not _UNSAFE_ADVICE.search(part)]
        if sentences:
            kept.append(". ".join(sentences))
    return "\n".join(kept)


class CheckpointReadError(Exception):
    """A file could not be read as a checkpoint; the message names the file, says what is
    wrong with it and (last line) what to do."""

    def __init__(self, path: Path | str, reason: str,
                 unsafe: tuple[tuple[str, str], ...] = (), advice: str | None = None) -> None:
        self.path = Path(path)
        self.reason = reason
        self.unsafe = unsafe  # (place in the container, global) a weights_only load refused
        self.advice = advice or READ_FIX
        super().__init__(f"checkpoint {self.path} {reason}")

    @property
    def headline(self) -> str:
        """One line: the file and what is wrong with it."""
        return f"checkpoint {self.path} {self.reason}"

    def paragraph(self) -> str:
        """The file, what is wrong with it, and what to do (the last line)."""
        return f"{self.headline}\n{self.advice}"


class CkptUsageError(Exception):
    """A marker or fixture was used wrongly; the message names the test and the fix."""


class CheckpointFileWarning(UserWarning):
    """A checkpoint file loads, but is not fit for release as it is (legacy format, storages
    tagged for CUDA); the message names the file."""
