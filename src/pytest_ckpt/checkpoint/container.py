"""The container around the weights: a bare state_dict, ``{"state_dict": ...}``,
``{"model": ...}``, and what else the checkpoint carries at the top level."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

WEIGHT_ENTRIES = ("state_dict", "model", "model_state_dict", "module", "weights")


@dataclass(frozen=True)
class ContainerLayout:
    """Where the weights sit in a loaded checkpoint and what sits beside them."""

    layout: str  # "bare state_dict", "{'model': state_dict}", "safetensors", ...
    weights_entry: str | None  # the top-level key holding the weights; None when bare
    others: tuple[tuple[str, str], ...]  # other top-level entries: (key, type name)

    def describe(self) -> str:
        text = f"container: {self.layout}"
        if self.others:
            text += "; also " + ", ".join(f"{key} ({kind})" for key, kind in self.others)
        return text

    def to_json(self) -> dict[str, Any]:
        return {"layout": self.layout, "weights_entry": self.weights_entry,
                "others": dict(self.others)}


def is_torch_tensor(value: Any) -> bool:
    import torch

    return isinstance(value, torch.Tensor)


def is_state_dict(value: Any, is_tensor: Callable[[Any], bool] = is_torch_tensor) -> bool:
    """A non-empty dict of string keys to tensors."""
    return isinstance(value, dict) and bool(value) and all(
        isinstance(key, str) and is_tensor(item) for key, item in value.items())


def container_layout(loaded: Any,
                     is_tensor: Callable[[Any], bool] = is_torch_tensor) -> ContainerLayout | None:
    """Describe a loaded checkpoint (``is_tensor`` tells its tensors, torch's by default);
    ``None`` when it holds no state_dict."""
    if is_state_dict(loaded, is_tensor):
        return ContainerLayout("bare state_dict", None, ())
    if not isinstance(loaded, dict):
        return None
    for entry in WEIGHT_ENTRIES:
        if is_state_dict(loaded.get(entry), is_tensor):
            others = tuple((str(key), type(value).__name__) for key, value in loaded.items()
                           if key != entry)
            return ContainerLayout(f"{{{entry!r}: state_dict}}", entry, others)
    return None
