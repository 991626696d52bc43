"""The container around the weights: a bare state_dict, or a dict whose top-level entries hold
one or more state_dicts (``{"state_dict": ...}``, ``{"model": ...}``, HiFi-GAN's
``{"generator": ..., "discriminator": ...}``, ``{"ema": ...}``), which entry holds the
weights, and what else the checkpoint carries at the top level.

The weights are found by content: any top-level entry that is a state_dict counts. When
several are, the one whose keys match the model best wins (when a model is known), else a
usual name (``WEIGHT_ENTRIES``), else the largest; the choice is said (:meth:`choice`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

# the usual names of the weights entry, preferred in this order when several entries hold
# state_dicts and no model tells them apart
WEIGHT_ENTRIES = ("state_dict", "model", "model_state_dict", "module", "weights")
MATCHES = "matches the model"


@dataclass(frozen=True)
class ContainerLayout:
    """Where the weights sit in a loaded checkpoint and what sits beside them."""

    layout: str  # "bare state_dict", "{'model': state_dict}", "safetensors", ...
    weights_entry: str | None  # the top-level key holding the weights; None when bare
    others: tuple[tuple[str, str], ...]  # other top-level entries: (key, type name)
    state_dicts: tuple[str, ...] = ()  # every top-level entry holding a state_dict
    chosen_by: str = ""  # why weights_entry won among several state_dicts

    @property
    def alternatives(self) -> tuple[str, ...]:
        """The other top-level entries that hold a state_dict too."""
        return tuple(entry for entry in self.state_dicts if entry != self.weights_entry)

    def choice(self) -> str | None:
        """``weights read from ['generator'] (matches the model; also a state_dict:
        'discriminator')`` when several entries hold state_dicts, else ``None``."""
        why = self.why()
        return f"weights read from [{self.weights_entry!r}] {why}" if why else None

    def why(self) -> str:
        """Why the weights entry was chosen among several state_dicts, and the others
        (``(the largest; also a state_dict: 'generator')``); empty when it was the only one."""
        others = self.alternatives
        if not others:
            return ""
        noun = "a state_dict" if len(others) == 1 else "state_dicts"
        return f"({self.chosen_by}; also {noun}: {', '.join(map(repr, others))})"

    def describe(self) -> str:
        text = f"container: {self.layout}"
        if self.others:
            text += "; also " + ", ".join(f"{key} ({kind})" for key, kind in self.others)
        return text

    def to_json(self) -> dict[str, Any]:
        return {"layout": self.layout, "weights_entry": self.weights_entry,
                "others": dict(self.others), "state_dicts": list(self.state_dicts),
                "choice": self.choice()}


class FolderContainer(dict[str, Any]):
    """The state files of a checkpoint directory by entry name (``model``, ``optimizer``,
    ``random_states_0``), and the directory's kind (``accelerate save_state directory``)."""

    def __init__(self, kind: str, entries: Mapping[str, Any]) -> None:
        super().__init__(entries)
        self.kind = kind


@dataclass(frozen=True)
class UnreadFile:
    """A file of a checkpoint directory that is present but was not loaded (an RNG state
    that ``torch.load(weights_only=True)`` refuses); nothing from it was executed."""

    name: str
    reason: str  # "weights_only=True refuses its numpy globals"

    def describe(self) -> str:
        return f"file not read ({self.reason})"


def is_torch_tensor(value: Any) -> bool:
    import torch

    return isinstance(value, torch.Tensor)


def is_state_dict(value: Any, is_tensor: Callable[[Any], bool] = is_torch_tensor) -> bool:
    """A non-empty dict of string keys to tensors."""
    return isinstance(value, dict) and bool(value) and all(
        isinstance(key, str) and is_tensor(item) for key, item in value.items())


def container_layout(loaded: Any, is_tensor: Callable[[Any], bool] = is_torch_tensor, *,
                     model_keys: Collection[str] | None = None) -> ContainerLayout | None:
    """Describe a loaded checkpoint (``is_tensor`` tells its tensors, torch's by default);
    ``None`` when it holds no state_dict. With ``model_keys`` (the model's state_dict keys),
    the entry matching them best holds the weights."""
    if is_state_dict(loaded, is_tensor):
        return ContainerLayout("bare state_dict", None, ())
    if not isinstance(loaded, dict):
        return None
    candidates = {key: value for key, value in loaded.items()
                  if isinstance(key, str) and is_state_dict(value, is_tensor)}
    if not candidates:
        return None
    entry, chosen_by = choose_weights(candidates, model_keys)
    others = tuple((str(key), type(value).__name__) for key, value in loaded.items()
                   if key != entry)
    return ContainerLayout(f"{{{entry!r}: state_dict}}", entry, others,
                           (entry, *(key for key in candidates if key != entry)), chosen_by)


def choose_weights(candidates: Mapping[str, Mapping[str, Any]],
                   model_keys: Collection[str] | None = None) -> tuple[str, str]:
    """The entry holding the weights among ``candidates`` (entry -> state_dict), and why."""
    if len(candidates) == 1:
        return next(iter(candidates)), "the only state_dict"
    pool = dict(candidates)
    suffix = ""
    if model_keys is not None:
        scores = {entry: key_match(state, model_keys) for entry, state in pool.items()}
        best = max(scores.values())
        if best == (0, 0):
            suffix = "; none matches the model's keys"
        else:
            pool = {entry: pool[entry] for entry, score in scores.items() if score == best}
            if len(pool) == 1:
                return next(iter(pool)), MATCHES
            suffix = ", of those matching the model equally"
    usual = [entry for entry in WEIGHT_ENTRIES if entry in pool]
    if usual:
        return usual[0], f"the usual name{suffix}"
    largest = max(pool, key=lambda entry: (numel(pool[entry].values()), len(pool[entry])))
    return largest, f"the largest{suffix}"


def key_match(state: Iterable[str], model_keys: Collection[str]) -> tuple[int, int]:
    """How well a state_dict's keys match a model's: (keys equal to a model key, keys equal
    to one once a leading segment is dropped on either side: ``module.``, ``model.``)."""
    wanted = set(model_keys)
    inner = {key.partition(".")[2] for key in wanted if "." in key}
    exact = loose = 0
    for key in state:
        if key in wanted:
            exact += 1
        elif key in inner or ("." in key and key.partition(".")[2] in wanted):
            loose += 1
    return exact, loose


def numel(tensors: Iterable[Any]) -> int:
    """Elements of tensors (or of records that carry a ``shape``)."""
    return sum(math.prod(tuple(getattr(tensor, "shape", ()))) for tensor in tensors)
