"""A hostile module: importing it is an attack. Never import it from a test process.

Every side effect creates a *canary* file, which a security test then looks for:

- on import, the file named by ``$PYTEST_CKPT_CANARY`` when that variable is set; ``IMPORTED``
  becomes true, and ``"tests.hostile.evil_module" in sys.modules`` tells a test that the import
  happened even when the variable was not set (a test that checks this must not import the
  module itself: :mod:`tests.hostile.payloads` names it only as a string);
- looking up the attribute ``canary_<hex of a UTF-8 path>`` (a PEP 562 module ``__getattr__``)
  creates that path. A pickle's ``GLOBAL 'tests.hostile.evil_module canary_<hex>'`` thus
  creates a canary baked into the payload with no environment: ``find_class`` imports the
  module, then looks the name up (the ``import_side_effect`` payload kind);
- ``Fuse(canary)``: ``__new__`` creates ``canary`` (NEWOBJ / NEWOBJ_EX payloads, which call
  ``__new__`` but not ``__init__``);
- ``Detonator``: ``__setstate__`` creates ``state["canary"]`` (BUILD payloads). ``__reduce__``
  returns ``(Detonator, (), {"canary": ...})``, so ``pickle.dumps(Detonator(path))`` is itself
  such a payload: REDUCE of a harmless ``Detonator()``, then BUILD.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

CANARY_ENV = "PYTEST_CKPT_CANARY"
CANARY_ATTRIBUTE_PREFIX = "canary_"

FIRED: list[str] = []  # every canary this module created, in order


def touch(path: str) -> str:
    """Create the canary ``path`` (an absolute path) and record it."""
    Path(path).touch()
    FIRED.append(path)
    return path


def __getattr__(name: str) -> str:
    """``canary_<hex>``: create the path the hex spells; any other missing name is missing."""
    if name.startswith(CANARY_ATTRIBUTE_PREFIX):
        try:
            path = bytes.fromhex(name[len(CANARY_ATTRIBUTE_PREFIX):]).decode("utf-8")
        except ValueError:
            pass
        else:
            return touch(path)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class Fuse:
    """``Fuse.__new__(Fuse, canary)`` creates ``canary``: the NEWOBJ / NEWOBJ_EX target."""

    canary: str

    def __new__(cls, canary: str) -> Fuse:
        touch(canary)
        return super().__new__(cls)

    def __init__(self, canary: str) -> None:
        self.canary = canary


class Detonator:
    """Harmless to construct; restoring its state (BUILD -> ``__setstate__``) creates the
    canary named there."""

    def __init__(self, canary: str | None = None) -> None:
        self.canary = canary

    def __reduce__(self) -> tuple[Any, ...]:
        return (Detonator, (), {"canary": self.canary})

    def __setstate__(self, state: dict[str, Any]) -> None:
        touch(state["canary"])
        self.__dict__.update(state)


IMPORTED = True
if os.environ.get(CANARY_ENV):
    touch(os.environ[CANARY_ENV])
