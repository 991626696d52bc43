"""Pausing Python's cyclic garbage collector while 100k-row manifests are built, parsed or
diagnosed: those allocate many small objects and create no reference cycles, and the
collector would rescan the growing lists over and over (about 2x on 100k keys)."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def collector_paused() -> Iterator[None]:
    """The cyclic collector off for the block, back on after it if it was on before."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
