"""Loads that pytest-ckpt's own checks make (the default loaders, and the project's loaders
they call and judge by values): the strict-load guard is not theirs to judge."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

_DEPTH = [0]


@contextmanager
def own_loads() -> Iterator[None]:
    """While this runs, ``load_state_dict(strict=False)`` calls are a check's own."""
    _DEPTH[0] += 1
    try:
        yield
    finally:
        _DEPTH[0] -= 1


def in_own_load() -> bool:
    return _DEPTH[0] > 0
