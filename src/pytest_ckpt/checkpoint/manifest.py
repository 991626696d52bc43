"""The manifest: one row per tensor of a checkpoint (key, dtype, shape, kind, tie group).

Rendering and parsing are pure. Building a manifest from a module or a state_dict reads
only tensor metadata (shape, dtype, storage identity), so it works on ``meta`` tensors.
torch is imported inside the functions that need it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, KeysView, Mapping
from dataclasses import dataclass, field, replace
from functools import lru_cache
from operator import attrgetter
from typing import TYPE_CHECKING, Any, final

from pytest_ckpt.checkpoint.collector import collector_paused

if TYPE_CHECKING:
    import torch

HEADER = "# pytest-ckpt manifest v1"

PARAM = "param"
BUFFER = "buffer"
TENSOR = "tensor"  # a tensor whose role is unknown (read from a file)
EXTRA = "extra"  # a non-tensor state_dict entry (``get_extra_state``)
KINDS = (PARAM, BUFFER, TENSOR, EXTRA)


class ManifestParseError(ValueError):
    """A manifest text could not be parsed; the message names the line."""


@dataclass(frozen=True, order=True)
class ManifestRow:
    """One tensor: its key, dtype name (``float32``), shape, kind and tie group.

    ``tie`` is the smallest key of the group of keys sharing this tensor's storage,
    or ``None`` when the storage is not shared.
    """

    key: str
    dtype: str
    shape: tuple[int, ...]
    kind: str = TENSOR
    tie: str | None = None

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@final
@dataclass(frozen=True)
class Manifest:
    """A sorted table of :class:`ManifestRow`, keyed by state_dict key."""

    rows: tuple[ManifestRow, ...]
    _by_key: dict[str, ManifestRow] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        rows = tuple(sorted(self.rows, key=_row_key))  # keys are unique: checked below
        object.__setattr__(self, "rows", rows)
        object.__setattr__(self, "_by_key", {row.key: row for row in rows})
        if len(self._by_key) != len(rows):
            raise ValueError("a manifest cannot hold the same key twice")

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[ManifestRow]:
        return iter(self.rows)

    def __contains__(self, key: object) -> bool:
        return key in self._by_key

    def __getitem__(self, key: str) -> ManifestRow:
        return self._by_key[key]

    def keys(self) -> list[str]:
        return [row.key for row in self.rows]

    def row_map(self) -> Mapping[str, ManifestRow]:
        """Key -> row (read it, do not change it)."""
        return self._by_key

    def key_set(self) -> KeysView[str]:
        """The keys as a set-like view (fast ``-``, ``&``, ``in``)."""
        return self._by_key.keys()

    @property
    def numel(self) -> int:
        return sum(row.numel for row in self.rows if row.kind != EXTRA)

    def tie_groups(self) -> dict[str, tuple[str, ...]]:
        """Map each tie group's name to the keys sharing its storage."""
        groups: dict[str, list[str]] = {}
        for row in self.rows:
            if row.tie is not None:
                groups.setdefault(row.tie, []).append(row.key)
        return {name: tuple(keys) for name, keys in groups.items()}

    def render(self) -> str:
        """A stable, sorted text with one row per line; :func:`parse` reads it back."""
        summary = f"{HEADER}: {len(self.rows)} entries, {self.numel:,} elements"
        return "\n".join([summary, *self._layout_notes(), *(_render_row(row) for row in self.rows)]
                         ) + "\n"

    def _layout_notes(self) -> list[str]:
        """``# weight_norm <layout>: <modules>`` lines, derived from the keys (parse skips
        them), so a snapshot shows which implementation each module uses."""
        from pytest_ckpt.checkpoint.keys import fold_keys
        from pytest_ckpt.checkpoint.layouts import weight_norm_layouts

        by_layout: dict[str, list[str]] = {}
        for (module, name), layout in weight_norm_layouts(self.key_set()).items():
            by_layout.setdefault(layout, []).append(f"{module}.{name}" if module else name)
        return [f"# weight_norm {layout}: {', '.join(fold_keys(paths))}"
                for layout, paths in sorted(by_layout.items())]

    @classmethod
    def parse(cls, text: str) -> Manifest:
        lines = text.splitlines()
        if not lines or not lines[0].startswith(HEADER):
            raise ManifestParseError(f"not a pytest-ckpt manifest (expected {HEADER!r})")
        shapes: dict[str, tuple[int, ...] | None] = {}  # a model repeats a few shapes
        with collector_paused():
            rows = [
                _parse_row(line, number, shapes)
                for number, line in enumerate(lines[1:], start=2)
                if line.strip() and not line.startswith("#")
            ]
            return cls(tuple(rows))

    @classmethod
    def from_module(cls, module: torch.nn.Module) -> Manifest:
        """The manifest of ``module.state_dict()``, with parameters and buffers told apart."""
        with collector_paused():
            params = {name for name, _ in module.named_parameters(remove_duplicate=False)}
            state = module.state_dict(keep_vars=True)
            kinds = {key: PARAM if key in params else BUFFER for key in state}
            return cls.from_state_dict(state, kinds=kinds)

    @classmethod
    def from_state_dict(
        cls, state: Mapping[str, Any], *, kinds: Mapping[str, str] | None = None
    ) -> Manifest:
        """Build from a mapping of key to tensor; non-tensors become ``extra`` rows."""
        import torch

        kinds = kinds or {}
        with collector_paused():
            ties = _tie_groups((key, value) for key, value in state.items()
                               if isinstance(value, torch.Tensor))
            rows = []
            for key, value in state.items():
                if isinstance(value, torch.Tensor):
                    rows.append(ManifestRow(key, dtype_name(value.dtype), tuple(value.shape),
                                            kinds.get(key, TENSOR), ties.get(key)))
                else:
                    rows.append(ManifestRow(key, f"object:{type(value).__name__}", (), EXTRA))
            return cls(tuple(rows))


def with_kept_ties(saved: Manifest, model: Manifest) -> Manifest:
    """``saved`` (a checkpoint's manifest) with the keys it dropped because their tensor is
    tied, in ``model``, to a key it holds: one key per tied group, as safetensors'
    ``save_model`` and ``save_pretrained`` store them."""
    rows = {row.key: row for row in saved}
    for tie, group in model.tie_groups().items():
        kept = [key for key in group if key in rows]
        if kept and len(kept) < len(group):
            rows.update({key: replace(rows[kept[0]], key=key, tie=tie) for key in group})
    return Manifest(tuple(rows.values())) if len(rows) > len(saved) else saved


def dropped_ties(saved: Manifest, model: Manifest) -> dict[str, str]:
    """Keys of ``model`` absent from ``saved`` because they are tied to a key it holds ->
    that key."""
    dropped: dict[str, str] = {}
    for group in model.tie_groups().values():
        kept = [key for key in group if key in saved]
        dropped.update({key: kept[0] for key in group if kept and key not in saved})
    return dropped


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def storage_identity(tensor: torch.Tensor) -> int:
    """An identity shared by tensors that share storage (by object on ``meta``)."""
    if tensor.device.type == "meta":
        return id(tensor)
    storage = tensor.untyped_storage()
    return storage.data_ptr() if storage.nbytes() else id(tensor)


def _tie_groups(items: Iterable[tuple[str, torch.Tensor]]) -> dict[str, str]:
    by_storage: dict[int, list[str]] = {}
    for key, tensor in items:
        by_storage.setdefault(storage_identity(tensor), []).append(key)
    ties: dict[str, str] = {}
    for keys in by_storage.values():
        if len(keys) > 1:
            ties.update((key, min(keys)) for key in keys)
    return ties


_row_key = attrgetter("key")


def _render_row(row: ManifestRow) -> str:
    tie = f" tie={escape_key(row.tie)}" if row.tie is not None else ""
    return f"{escape_key(row.key)} {row.dtype} {_shape_text(row.shape)} {row.kind}{tie}"


def _parse_row(line: str, number: int, shapes: dict[str, tuple[int, ...] | None]) -> ManifestRow:
    fields = line.split(" ")
    if len(fields) not in (4, 5):
        raise ManifestParseError(f"line {number}: expected 'key dtype [shape] kind': {line!r}")
    key, dtype, shape, kind = fields[:4]
    if kind not in KINDS or not (shape.startswith("[") and shape.endswith("]")):
        raise ManifestParseError(f"line {number}: bad kind or shape: {line!r}")
    tie = None
    if len(fields) == 5:
        if not fields[4].startswith("tie="):
            raise ManifestParseError(f"line {number}: expected 'tie=KEY': {line!r}")
        tie = unescape_key(fields[4].removeprefix("tie="))
    if shape not in shapes:
        shapes[shape] = _sizes(shape)
    sizes = shapes[shape]
    if sizes is None:
        raise ManifestParseError(f"line {number}: bad shape {shape!r}")
    return ManifestRow(unescape_key(key), dtype, sizes, kind, tie)


def _sizes(shape: str) -> tuple[int, ...] | None:
    try:
        return tuple(int(size) for size in shape[1:-1].split(",") if size)
    except ValueError:
        return None


@lru_cache(maxsize=4096)
def _shape_text(shape: tuple[int, ...]) -> str:
    return "[" + ",".join(str(size) for size in shape) + "]"


def escape_key(key: str) -> str:
    """Escape backslashes, whitespace, unprintables and a leading ``#`` so a key is one token."""
    # the common case, kept as it is: the only whitespace str.isprintable() admits is " "
    if key and key[0] != "#" and key.isprintable() and " " not in key and "\\" not in key:
        return key
    out = []
    for position, char in enumerate(key):
        if char == "\\":
            out.append("\\\\")
        elif char.isspace() or not char.isprintable() or (char == "#" and position == 0):
            out.append(f"\\u{ord(char):06x}")
        else:
            out.append(char)
    return "".join(out) if key else "\\e"


def unescape_key(text: str) -> str:
    if text == "\\e":
        return ""
    if "\\" not in text:
        return text
    out, position = [], 0
    while position < len(text):
        char = text[position]
        if char != "\\":
            out.append(char)
            position += 1
        elif text.startswith("\\\\", position):
            out.append("\\")
            position += 2
        elif text.startswith("\\u", position):
            out.append(chr(int(text[position + 2 : position + 8], 16)))
            position += 8
        else:
            raise ManifestParseError(f"bad escape in key {text!r}")
    return "".join(out)
