"""Name the globals a checkpoint's pickle needs, and where they sit in the container, without
importing or calling anything: every global becomes an inert stand-in class."""

from __future__ import annotations

import io
import pickle
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# Globals torch's weights_only unpickler accepts (the prefixes of their qualified names).
_SAFE = ("torch.", "collections.OrderedDict", "builtins.set", "builtins.frozenset",
         "builtins.bytearray", "builtins.complex", "builtins.slice", "builtins.range",
         "_codecs.encode")


class _Stub:
    """An instance of a global the checkpoint names; records its arguments, runs nothing."""

    qualname = "?"
    args: tuple[Any, ...] = ()  # unset when the pickle builds it without calling it
    state: Any = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args

    @property
    def items(self) -> dict[Any, Any]:
        items: dict[Any, Any] = self.__dict__.setdefault("_items", {})
        return items

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __call__(self, *args: Any, **kwargs: Any) -> _Stub:
        """A call of something the pickle built (``getattr(Path, 'touch')(...)``)."""
        stub: _Stub = type("call", (_Stub,), {"qualname": self.describe()})(*args)
        return stub

    def describe(self) -> str:
        if self.qualname in ("builtins.getattr", "__builtin__.getattr") and len(self.args) == 2:
            owner, attribute = self.args
            return f"{getattr(owner, 'qualname', type(owner).__name__)}.{attribute}"
        return self.qualname

    def __setitem__(self, key: Any, value: Any) -> None:  # dict subclasses (SETITEMS)
        self.items[key] = value

    def append(self, value: Any) -> None:  # list subclasses (APPENDS)
        self.items[len(self.items)] = value

    def extend(self, values: Any) -> None:
        for value in values:
            self.append(value)


class _Dict(dict[Any, Any]):
    """An OrderedDict stand-in that takes attributes (a state_dict's ``_metadata``)."""


class _Scanner(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return _Dict  # a plain container: nothing to run
        return type(name, (_Stub,), {"qualname": f"{module}.{name}"})

    def persistent_load(self, pid: Any) -> Any:
        return None  # a tensor storage record: data is never read


def unsafe_globals(path: Path) -> list[tuple[str, str]]:
    """(container path, global) for each global weights_only would refuse."""
    data = _pickle_bytes(path)
    if data is None:
        return []
    try:
        root = _Scanner(io.BytesIO(data)).load()
    except Exception:
        return []
    return sorted(set(_walk(root, "")))


def _pickle_bytes(path: Path) -> bytes | None:
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = [name for name in archive.namelist() if name.endswith("/data.pkl")
                     or name == "data.pkl"]
            return archive.read(names[0]) if names else None
    return None


def _walk(value: Any, path: str, inside: bool = False) -> Iterator[tuple[str, str]]:
    if isinstance(value, _Stub):
        if not value.describe().startswith(_SAFE):
            yield path or "<root>", value.describe()
        # what it was built from sits at the same place (a numpy scalar's dtype)
        yield from _walk(value.args, path, inside=True)
        yield from _walk(value.state, path, inside=True)
        yield from _walk(value.items, path)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _walk(item, f"{path}[{key!r}]")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _walk(item, path if inside else f"{path}[{index}]")
