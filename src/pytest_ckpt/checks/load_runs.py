"""One run of a load path over a poisoned model, judged by values.

Before: every model tensor is poisoned to differ, element by element, from the value the load
should write. The load path runs (the project's ``load(model, state)``, ``load_from(model,
path)``, or ``load_state_dict(strict=False)``), each ``load_state_dict`` call it makes is
recorded, and pytest-ckpt's own loads are kept out of the strict-load guard. After: a model
tensor holds a checkpoint value (under its own name or any other: remaps and torch's key
conversions count), is still at its poison, or holds something else; a checkpoint tensor
reached the model or not, by value (through the project's own load path, a value the model
computes itself in a non-persistent buffer counts as reached). Tensors still at their poison
get their values back, so the model ends with exactly what the load wrote; after an
exception, all of them do.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_ckpt.checkpoint.keys import common_suffix_length
from pytest_ckpt.checkpoint.manifest import Manifest
from pytest_ckpt.checkpoint.values import bitwise_equal, digest, poison_, poisoned_value
from pytest_ckpt.checks.casts import dtypes_of, retyped_finding
from pytest_ckpt.checks.own_loads import own_loads
from pytest_ckpt.diagnosis.findings import Finding

if TYPE_CHECKING:
    import torch

VALUES_NOT_COMPARED = ("values not compared: the checkpoint cannot be read with "
                       "weights_only=True, so only what the load wrote was measured")


@dataclass(frozen=True)
class LoadRun:
    """What a load wrote, classified against the checkpoint."""

    model: torch.nn.Module  # the loaded model (the target, or what load_from returned)
    not_written: tuple[str, ...]  # model keys holding no checkpoint value
    wrong_value: tuple[str, ...]  # written under a key the checkpoint provides, not its value
    # checkpoint entries whose value reached no model tensor, under the name the load path
    # handed load_state_dict (its own remap applied), else the checkpoint's
    unexpected: Manifest
    note: str | None = None
    load_state_dict_calls: int = 0  # how often the load path called model.load_state_dict
    retyped: Finding | None = None  # model tensors whose dtype the load changed
    # checkpoint keys the load path handed to load_state_dict under another name, unreached
    renamed: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class LoadRaised:
    """The load path raised; the model was put back as it was."""

    error: BaseException
    handed: Manifest | None  # the last state_dict the load path gave load_state_dict
    container: Any  # what the checkpoint holds, when it was read

    @property
    def line(self) -> str:
        from pytest_ckpt.checks.user_code import error_line, user_frame

        frame = user_frame(self.error)
        where = f" at {frame.short}" if frame is not None else ""
        return f"{error_line(self.error)}{where}"

    def findings(self, model: torch.nn.Module, state: Mapping[str, Any] | None) -> list[Finding]:
        from pytest_ckpt.checks.user_code import raised_findings

        return raised_findings(self.error, model=model, handed=self.handed,
                               container=self.container if self.container is not None
                               else state)


def run_load(model: torch.nn.Module, state: dict[str, Any] | None, manifest: Manifest, *,
             load: Callable[..., Any] | None = None, load_from: Callable[..., Any] | None = None,
             path: Path | None = None, container: Any = None) -> LoadRun | LoadRaised:
    """Poison ``model``, run the load path, classify (see the module docstring)."""
    import torch

    tensors = {k: v for k, v in model.state_dict(keep_vars=True).items()
               if isinstance(v, torch.Tensor)}
    original = {key: tensor.detach().clone() for key, tensor in tensors.items()}
    references = _references(tensors, original, state or {})
    for tensor in {id(tensor): tensor for tensor in tensors.values()}.values():
        poison_(tensor, avoid=references[id(tensor)])
    handed: list[dict[str, Any]] = []
    dtypes = dtypes_of(model)
    recording = Recording(model, handed)
    try:
        with recording, own_loads():
            result = _call(model, state, load, load_from, path)
    except Exception as error:  # the project's load path raised: a finding, not a traceback
        _restore(model, tensors, original, set(tensors))
        return LoadRaised(error, Manifest.from_state_dict(handed[-1]) if handed else None,
                          container)
    loaded = result if isinstance(result, torch.nn.Module) and result is not model else model
    at_poison = set()
    if loaded is model:
        after = model.state_dict(keep_vars=True)
        at_poison = {key for key, tensor in tensors.items() if after.get(key) is tensor
                     and _at_poison(tensor, references[id(tensor)])}
        _restore(model, tensors, original, at_poison)
    run = _classify(loaded, state, manifest, at_poison, handed,
                    own_path=load is not None or load_from is not None)
    return replace(run, load_state_dict_calls=len(handed), retyped=retyped_finding(
        dtypes, dtypes_of(loaded), recording.assigned))


def _call(model: torch.nn.Module, state: dict[str, Any] | None, load: Any, load_from: Any,
          path: Path | None) -> Any:
    if load_from is not None:
        return load_from(model, path)
    if state is None:
        raise ValueError("no state_dict to load")  # pragma: no cover - callers give one
    from pytest_ckpt.formats.torch_zip import with_metadata

    return (load or (lambda m, s: m.load_state_dict(s, strict=False)))(model,
                                                                        with_metadata(state))


class Recording:
    """Record what every ``model.load_state_dict`` call is given, as ``keep(state_dict)`` (a
    shallow copy by default; a manifest where holding the tensors would cost memory), through
    an instance attribute over the class method, removed afterwards."""

    def __init__(self, model: torch.nn.Module, handed: list[Any],
                 keep: Callable[[Any], Any] = dict) -> None:
        self.model, self.handed, self.keep = model, handed, keep
        self.assigned = False  # a call passed assign=True

    def __enter__(self) -> None:
        original = self.model.load_state_dict
        handed, keep = self.handed, self.keep

        def recording(state_dict: Any, *args: Any, **kwargs: Any) -> Any:
            handed.append(keep(state_dict))
            self.assigned = self.assigned or bool(kwargs.get("assign", args[1] if len(args) > 1
                                                             else False))
            return original(state_dict, *args, **kwargs)

        self.model.load_state_dict = recording  # type: ignore[method-assign]

    def __exit__(self, *_: Any) -> None:
        vars(self.model).pop("load_state_dict", None)


def _references(tensors: dict[str, torch.Tensor], original: dict[str, torch.Tensor],
                state: Mapping[str, Any]) -> dict[int, torch.Tensor]:
    """The value each tensor object is poisoned against (tied keys share one object)."""
    import torch

    references: dict[int, torch.Tensor] = {}
    for key, tensor in sorted(tensors.items(), key=lambda item: item[0] not in state):
        provided = state.get(key)
        compatible = isinstance(provided, torch.Tensor) and provided.shape == tensor.shape \
            and provided.dtype == tensor.dtype and provided.is_quantized == tensor.is_quantized
        references.setdefault(id(tensor), provided if compatible and isinstance(
            provided, torch.Tensor) else original[key])
    return references


def _at_poison(tensor: torch.Tensor, reference: torch.Tensor) -> bool:
    poison = poisoned_value(reference)
    return poison is not None and bitwise_equal(tensor, poison)


def _restore(model: torch.nn.Module, tensors: dict[str, torch.Tensor],
             original: dict[str, torch.Tensor], keys: set[str]) -> None:
    import torch

    after = model.state_dict(keep_vars=True)
    with torch.no_grad():
        for key in keys:
            if after.get(key) is tensors[key]:
                tensors[key].copy_(original[key])


def _classify(loaded: torch.nn.Module, state: dict[str, Any] | None, manifest: Manifest,
              at_poison: set[str], handed: list[dict[str, Any]], *,
              own_path: bool) -> LoadRun:
    import torch

    from pytest_ckpt.checkpoint.weight_norm import norms_of_loaded

    model_tensors = {k: v for k, v in loaded.state_dict().items()
                     if isinstance(v, torch.Tensor) and v.numel()}
    if state is None:  # only names are known
        extra = Manifest(tuple(row for row in manifest if row.key not in model_tensors))
        return LoadRun(loaded, tuple(sorted(at_poison)), (), extra, VALUES_NOT_COMPARED)
    provided = {k: v for k, v in state.items() if isinstance(v, torch.Tensor) and v.numel()}
    keys = set(loaded.state_dict())
    # a buffer the model computes itself (persistent=False) holds what an older checkpoint
    # carries under its name: that entry is not lost when the project's load path drops it
    # (torch's own strict load would reject it: that is a buffer_persistence finding)
    computed = [buffer for name, buffer in loaded.named_buffers() if name not in keys
                and buffer.numel()] if own_path else []
    # a value that reached the model under another name: held by a tensor the load wrote
    # (not one still at its poison, put back) that its own key does not explain; a constant
    # (ones, zeros) the model loaded under its own keys does not make a checkpoint's extra
    # LayerNorm "reached"
    moved = [tensor for key, tensor in model_tensors.items() if key not in at_poison
             and not (key in provided and _holds(tensor, provided[key]))]
    held = {digest(tensor) for tensor in [*moved, *computed]} - {None}
    available = {digest(tensor) for tensor in provided.values()} - {None}
    # a weight_norm g computed from a loaded plain weight (re-wrapping an export)
    derived = norms_of_loaded(model_tensors, lambda v: digest(v) in available)
    not_written, wrong = [], []
    for key, tensor in model_tensors.items():
        own = provided.get(key)
        if key not in at_poison and ((own is not None and _holds(tensor, own))
                                     or digest(tensor) in available or key in derived):
            continue
        if key in at_poison or own is None:
            not_written.append(key)
        else:
            wrong.append(key)
    unreached = {key: value for key, value in state.items()
                 if not _reached(key, value, model_tensors, held, keys - at_poison)}
    renamed = _handed_names(unreached, handed)
    return LoadRun(loaded, tuple(sorted(not_written)), tuple(sorted(wrong)),
                   Manifest.from_state_dict({renamed.get(key, key): value
                                             for key, value in unreached.items()}),
                   renamed={key: name for key, name in renamed.items() if name != key})


def _reached(key: str, value: Any, model_tensors: dict[str, torch.Tensor], held: set[Any],
             keys: set[str]) -> bool:
    """Whether a checkpoint entry reached the model: a tensor's value is held by some model
    tensor (under any name); an empty tensor or another value, by its key. ``keys``: the
    model's keys the load wrote (one still at its poison holds its own initial value again,
    which may equal the checkpoint's: it was not loaded)."""
    import torch

    if not isinstance(value, torch.Tensor) or not value.numel():
        return key in keys
    own = model_tensors.get(key) if key in keys else None
    return digest(value) in held or (own is not None and _holds(own, value))


def _handed_names(unreached: dict[str, Any], handed: list[dict[str, Any]]) -> dict[str, str]:
    """The name the load path gave each unreached entry (matched by value; of several handed
    names holding one value, such as a BatchNorm's zero bias and zero running mean, the one
    whose name ends most like the entry's, each name used once)."""
    import torch

    names: dict[Any, list[str]] = {}
    given_keys: set[str] = set()
    for given in handed:
        given_keys.update(given)
        for key, value in given.items():
            if isinstance(value, torch.Tensor) and value.numel():
                names.setdefault(digest(value), []).append(key)
    # an entry handed on under its own name keeps it (a constant such as a LayerNorm's ones
    # is not renamed after another key that holds the same value)
    renamed: dict[str, str] = {}
    used: set[str] = set()
    for key, value in unreached.items():
        if key in given_keys or not isinstance(value, torch.Tensor) or not value.numel():
            renamed[key] = key
            used.add(key)
            continue
        candidates = [name for name in dict.fromkeys(names.get(digest(value), ()))
                      if name not in used]
        name = max(candidates, key=lambda name: common_suffix_length(name, key)) \
            if candidates else key
        used.add(name)
        renamed[key] = name
    return renamed


def _holds(tensor: torch.Tensor, provided: torch.Tensor) -> bool:
    """Whether a model tensor holds the checkpoint's value (cast to its dtype, as
    ``load_state_dict`` does)."""
    if provided.shape != tensor.shape:
        return False
    if provided.dtype != tensor.dtype and not (provided.is_quantized or tensor.is_quantized):
        provided = provided.to(tensor.dtype)
    return bitwise_equal(tensor, provided)
