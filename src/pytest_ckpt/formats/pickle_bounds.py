"""Bounds a pickle must keep before anything unpickles or walks it, so that a crafted file
cannot make a reader allocate, recurse or loop without end.

:func:`check_opcodes` reads the opcodes (``pickletools.genops``, nothing built): memo indices
must follow the memo's own count (CPython's C unpickler grows its memo to twice the largest
index it is given), frames and counted strings must fit in the data, the pickle must end.
:func:`check_structure` walks the built container without recursion: no container may hold
itself, nest deeper than ``MAX_DEPTH`` or expand (shared parts counted each time they are
reached) to more than ``MAX_NODES`` entries.
"""

from __future__ import annotations

import pickletools
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pytest_ckpt.errors import CheckpointReadError

MAX_MEMO = 2_000_000  # memoised objects (a 100k-tensor state_dict memoises 0.8 million)
MAX_DEPTH = 100  # nested containers (real checkpoints: under 20)
MAX_NODES = 5_000_000  # entries reached walking the container (100k tensors: 1.6 million)
_PUTS = {"PUT", "BINPUT", "LONG_BINPUT"}
_BOMB_FIX = ("fix: this file is crafted or damaged; re-create the checkpoint from trusted code "
             "(torch.save of tensors and plain values)")


def refused(source: Path, reason: str) -> CheckpointReadError:
    return CheckpointReadError(source, f"{reason}: refused before anything was built from it",
                               advice=_BOMB_FIX)


@contextmanager
def quiet_opcode_reading() -> Iterator[None]:
    """Around a ``pickletools.genops`` loop: a crafted string argument makes genops warn (an
    invalid escape); reading a file is not the user's code, so the user sees no warning (nor
    an error under filterwarnings=error) and the reading stays streamed."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


def check_opcodes(data: bytes, source: Path, entry: str | None = None) -> None:
    """Raise a :class:`CheckpointReadError` naming ``source`` (and the archive ``entry`` that
    holds the pickle) when the pickle in ``data`` is malformed or would make an unpickler
    allocate out of proportion to its size."""
    where = f" in {entry}" if entry else ""
    memo = 0
    try:
        with quiet_opcode_reading():
            for opcode, argument, position in pickletools.genops(data):
                name = opcode.name
                number = argument if isinstance(argument, int) else 0
                if name in _PUTS:
                    if number > memo:
                        raise refused(source, f"holds a pickle whose memo index {argument:,} "
                                              f"(byte {position}) runs ahead of its {memo:,} "
                                              "memoised objects (a memory bomb)")
                    memo += 1
                elif name == "MEMOIZE":
                    memo += 1
                elif name == "FRAME" and number > len(data) - (position or 0):
                    raise refused(source, f"holds a pickle frame of {argument:,} bytes in "
                                          f"{len(data):,} bytes of data")
                if memo > MAX_MEMO:
                    raise refused(source, f"holds a pickle of more than {MAX_MEMO:,} memoised "
                                          "objects (over pytest-ckpt's limit)")
    except CheckpointReadError:
        raise
    except Exception as error:  # genops: unknown opcode, truncated argument, no STOP
        raise CheckpointReadError(source, f"holds a malformed or truncated pickle{where} "
                                          f"({error})") from None


def check_structure(root: Any, source: Path,
                    children: Callable[[Any], Iterable[Any] | None]) -> None:
    """Raise when the container ``root`` holds itself, nests too deep or expands too far;
    ``children(value)`` is what a walker visits under ``value`` (``None`` for a leaf). The
    walk keeps one iterator per level, so it needs memory for the depth, not the breadth."""
    below = children(root)
    if below is None:
        return
    stack: list[tuple[Any, Iterator[Any]]] = [(root, iter(below))]
    on_path = {id(root)}
    reached = 1
    while stack:
        parent, pending = stack[-1]
        child = next(pending, _DONE)
        if child is _DONE:
            stack.pop()
            on_path.discard(id(parent))
            continue
        reached += 1
        if reached > MAX_NODES:
            raise refused(source, f"holds more than {MAX_NODES:,} entries, counting shared "
                                  "parts each time they are reached (a memory and time bomb)")
        grandchildren = children(child)
        if grandchildren is None:
            continue
        if id(child) in on_path:
            raise refused(source, "holds a container that contains itself")
        if len(stack) >= MAX_DEPTH:
            raise refused(source, f"nests containers more than {MAX_DEPTH} deep")
        on_path.add(id(child))
        stack.append((child, iter(grandchildren)))


_DONE = object()
