"""The container schema of a training checkpoint: nested keys and value types down to tensors
(dtype and shape, never values), rendered one ``path: type`` row per line, and its diff.

A model state_dict inside the container is one row (``state_dict (60 tensors, ...)``; its
keys are the manifest's business). Entries of int-keyed dicts (an optimizer's per-parameter
``state``) are summarised once under ``[*]``, without shapes.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, final

from pytest_ckpt.checkpoint.manifest import ManifestParseError, escape_key

HEADER = "# pytest-ckpt schema v1"
_PARAM_GROUP_FIELD = re.compile(r"(^|\.)param_groups\[\d+\]\.[A-Za-z_][A-Za-z0-9_]*$")
MAX_LISTED = 8  # longer homogeneous sequences are one row ("list[int] of 12")
# top-level entries holding optimizer and scheduler states: plain torch training loops,
# Lightning (lists, one per optimizer or scheduler), accelerate save_state folders
OPTIMIZER_ENTRIES = ("optimizer", "optimizer_state_dict", "optimizer_states")
SCHEDULER_ENTRIES = ("scheduler", "lr_scheduler", "lr_schedulers")
TRAINING_KEYS = (*OPTIMIZER_ENTRIES, *SCHEDULER_ENTRIES, "global_step", "step", "epoch",
                 "scaler", "rng", "rng_state")


@final
@dataclass(frozen=True)
class Schema:
    """``path -> type`` rows of a checkpoint container, and where its weights sit."""

    rows: tuple[tuple[str, str], ...]
    container: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "rows", tuple(sorted(self.rows)))

    def as_dict(self) -> dict[str, str]:
        return dict(self.rows)

    def without_torch_flags(self) -> Schema:
        """The schema without the flags torch itself puts in optimizer ``param_groups``
        (``foreach: NoneType``, ``decoupled_weight_decay: bool``): their set changes between
        torch versions and torch fills missing ones with defaults when it loads the state),
        nor the private fields of LR scheduler states (``_is_initial``,
        ``_get_lr_called_within_step``, ``verbose``, ...: they come and go between torch
        versions, and a scheduler's ``load_state_dict`` takes whatever it is given); a
        scheduler's numeric fields compare as numbers (``eta_min`` is ``0`` or ``0.0`` by
        torch version)."""
        rows = [row for row in self.rows if not _torch_flag(*row)]
        return Schema(tuple(_without_scheduler_internals(rows)), self.container)

    def render(self) -> str:
        lines = [HEADER, f"# container: {self.container}"]
        lines += [f"{path}: {kind}" for path, kind in self.rows]
        return "\n".join(lines) + "\n"

    @classmethod
    def parse(cls, text: str) -> Schema:
        lines = text.splitlines()
        if not lines or lines[0] != HEADER:
            raise ManifestParseError(f"not a pytest-ckpt schema (expected {HEADER!r})")
        container = lines[1].removeprefix("# container: ") if len(lines) > 1 else ""
        rows = []
        for number, line in enumerate(lines[2:], start=3):
            path, separator, kind = line.partition(": ")
            if not separator:
                raise ManifestParseError(f"line {number}: expected 'path: type': {line!r}")
            rows.append((path, kind))
        return cls(tuple(rows), container)

    @classmethod
    def of(cls, checkpoint: Any) -> Schema:
        """The schema of a loaded checkpoint (any nesting of dicts, lists and tensors)."""
        from pytest_ckpt.checkpoint.container import FolderContainer, container_layout

        layout = container_layout(checkpoint)
        container = layout.layout if layout else f"no state_dict ({type(checkpoint).__name__})"
        if isinstance(checkpoint, FolderContainer):
            container = f"{checkpoint.kind}: {container}"
        return cls(tuple(_describe(checkpoint, "", shapes=True)), container)


def _describe(value: Any, path: str, *, shapes: bool) -> Iterator[tuple[str, str]]:
    import torch

    from pytest_ckpt.checkpoint.container import UnreadFile, is_state_dict
    from pytest_ckpt.checkpoint.manifest import dtype_name

    if isinstance(value, UnreadFile):
        yield path or "<root>", value.describe()
    elif isinstance(value, torch.Tensor):
        shape = f" [{','.join(map(str, value.shape))}]" if shapes else ""
        yield path or "<root>", f"tensor {dtype_name(value.dtype)}{shape}"
    elif shapes and is_state_dict(value) and all(isinstance(key, str) for key in value):
        numel = sum(tensor.numel() for tensor in value.values())
        yield path or "<root>", f"state_dict ({len(value)} tensors, {numel:,} elements)"
    elif isinstance(value, Mapping):
        yield from _describe_mapping(value, path, shapes=shapes)
    elif isinstance(value, (list, tuple)):
        yield from _describe_sequence(value, path, shapes=shapes)
    else:
        yield path or "<root>", _scalar_type(value)


def _describe_mapping(value: Mapping[Any, Any], path: str, *,
                      shapes: bool) -> Iterator[tuple[str, str]]:
    if value and all(isinstance(key, int) for key in value):
        yield path or "<root>", f"dict[int] of {len(value)}"
        yield from sorted({row for item in value.values()
                           for row in _describe(item, f"{path}[*]", shapes=False)})
        return
    yield path or "<root>", "dict"
    for key, item in value.items():
        child = escape_key(str(key))
        yield from _describe(item, f"{path}.{child}" if path else child, shapes=shapes)


def _describe_sequence(value: list[Any] | tuple[Any, ...], path: str, *,
                       shapes: bool) -> Iterator[tuple[str, str]]:
    kind = type(value).__name__
    scalar_types = {_scalar_type(item) for item in value}
    if len(value) > MAX_LISTED or (value and all(_is_scalar(item) for item in value)):
        inner = scalar_types.pop() if len(scalar_types) == 1 else "mixed"
        yield path or "<root>", f"{kind}[{inner}] of {len(value)}"
        return
    yield path or "<root>", f"{kind} of {len(value)}"
    for index, item in enumerate(value):
        yield from _describe(item, f"{path}[{index}]", shapes=shapes)


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str, complex))


def _scalar_type(value: Any) -> str:
    kind = type(value)
    module = kind.__module__
    return kind.__name__ if module == "builtins" else f"{module}.{kind.__qualname__}"


# scheduler fields whose presence depends on the torch version, beside the private ones
_SCHEDULER_VERSIONED = ("verbose", "default_min_lr", "anneal_func")
_FIRST_SEGMENT = re.compile(r"[.\[]")


def _without_scheduler_internals(rows: list[tuple[str, str]]) -> Iterator[tuple[str, str]]:
    """Rows of LR scheduler states (a dict holding an int ``last_epoch``) without their
    private and version-dependent fields, numbers as numbers."""
    states = {path.rpartition(".")[0] for path, kind in rows
              if path.rpartition(".")[2] == "last_epoch" and kind == "int"}
    for path, kind in rows:
        parent = next((state for state in sorted(states, key=len, reverse=True)
                       if not state or path.startswith(f"{state}.")),
                      None)
        if parent is None or path == "<root>":
            yield path, kind
            continue
        rest = path[len(parent) + 1:] if parent else path
        field = _FIRST_SEGMENT.split(rest, maxsplit=1)[0]
        if field.startswith("_") or field in _SCHEDULER_VERSIONED:
            continue
        yield path, ("int or float" if kind in ("int", "float") and field == rest else kind)


def _torch_flag(path: str, kind: str) -> bool:
    return kind in ("bool", "NoneType") and _PARAM_GROUP_FIELD.search(path) is not None
