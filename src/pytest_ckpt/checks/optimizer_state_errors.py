"""Exceptions of a resume path that concern the optimizer, explained from the objects involved:
``load_state_dict`` refusing a param_group of another size (the parameters that left the
optimizer, named by matching the saved state against the model), and a key the resume code
looks up in a param_group or per-parameter state that torch never writes (while the file's
optimizer state is complete, so the frame is the bug)."""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from pytest_ckpt.checks.user_code import UserFrame, error_line, looked_up
from pytest_ckpt.diagnosis.findings import Finding

if TYPE_CHECKING:
    import torch

GROUP_SIZE = "doesn't match the size of optimizer's group"
_STATE_KEYS = {"exp_avg", "exp_avg_sq", "momentum_buffer", "square_avg", "max_exp_avg_sq"}
FROZEN_FIX = ("fix: build the optimizer over the same parameters in the same order as at save "
              "(freeze after loading the optimizer state, or keep frozen params in the group "
              "with requires_grad=False)")


def _torch_frame_locals(error: BaseException) -> Iterator[dict[str, Any]]:
    traceback_ = error.__traceback__
    while traceback_ is not None:
        yield traceback_.tb_frame.f_locals
        traceback_ = traceback_.tb_next


def _loading_optimizer(error: BaseException) -> tuple[Any, Mapping[str, Any] | None]:
    """The optimizer whose ``load_state_dict`` raised, and the state_dict it was given."""
    import torch

    for names in _torch_frame_locals(error):
        optimizer, given = names.get("self"), names.get("state_dict")
        if isinstance(optimizer, torch.optim.Optimizer) and isinstance(given, Mapping):
            return optimizer, given
    return None, None


def _modules_in(error: BaseException) -> list[torch.nn.Module]:
    import torch

    return [value for names in _torch_frame_locals(error) for value in names.values()
            if isinstance(value, torch.nn.Module)]


def group_size_findings(error: BaseException, frame: UserFrame | None,
                        step: int) -> list[Finding]:
    """torch's ``ValueError`` about a param_group's size, with each group's sizes (saved,
    now) and the parameters that left the optimizer."""
    if not isinstance(error, ValueError) or GROUP_SIZE not in str(error):
        return []
    optimizer, given = _loading_optimizer(error)
    if optimizer is None or given is None:
        return []
    saved_groups = list(given.get("param_groups", []))
    sizes = [f"param_group {index}: saved {len(saved.get('params', []))} parameters, now "
             f"{len(group['params'])}"
             for index, (saved, group) in enumerate(zip(saved_groups, optimizer.param_groups,
                                                        strict=False))
             if len(saved.get("params", [])) != len(group["params"])]
    left, evidence = _left_out(error, optimizer, given)
    where = (f"raised at {frame.render()}",) if frame is not None else ()
    return [Finding("training_state", tuple(left), (
        f"resuming after step {step}, optimizer.load_state_dict raised "
        f"{error_line(error, 160)}: torch matches optimizer state by position, and the resume "
        "builds the optimizer over other parameters than the saved one"
        + (f" ({', '.join(left)} left it)" if left else "")),
        (*sizes, *evidence, *where), fix=FROZEN_FIX)]


def _left_out(error: BaseException, optimizer: Any,
              given: Mapping[str, Any]) -> tuple[list[str], tuple[str, ...]]:
    """The model's parameters the saved optimizer held and the new one does not, when the
    saved state's shapes match the model's named_parameters in order."""
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    model = next((module for module in _modules_in(error)
                  if in_optimizer & {id(p) for p in module.parameters()}), None)
    if model is None:
        return [], ()
    named = list(model.named_parameters())
    saved_shapes = _saved_shapes(given)
    if len(saved_shapes) != len(named) or any(
            shape is not None and shape != tuple(p.shape)
            for shape, (_, p) in zip(saved_shapes, named, strict=True)):
        return [], ()
    left = [name for name, p in named if id(p) not in in_optimizer]
    frozen = [name for name, p in named if not p.requires_grad]
    why = " (requires_grad=False in the resumed model)" if frozen and set(left) <= set(
        frozen) else ""
    return left, (f"the saved state's {len(named)} parameters match the model's "
                  "named_parameters by shape and order; left the optimizer: "
                  f"{', '.join(left)}{why}",)


def _saved_shapes(given: Mapping[str, Any]) -> list[tuple[int, ...] | None]:
    """Per saved parameter index (in group order), the shape of its first state tensor."""
    import torch

    state = given.get("state", {})
    shapes: list[tuple[int, ...] | None] = []
    for group in given.get("param_groups", []):
        for index in group.get("params", []):
            tensors = [value for value in dict(state.get(index, {})).values()
                       if isinstance(value, torch.Tensor) and value.dim() > 0]
            shapes.append(tuple(tensors[0].shape) if tensors else None)
    return shapes


# -- a key looked up where torch never writes it ----------------------------------------------

def optimizer_lookup_findings(error: BaseException, frame: UserFrame | None, container: Any,
                              step: int) -> list[Finding]:
    """A ``KeyError`` of the resume code looking a key up in an optimizer param_group (or a
    parameter's state) while every param_group in the file has all keys torch writes."""
    key = looked_up(error)
    if not isinstance(error, KeyError) or key is None or frame is None or (
            f"[{key!r}]" not in frame.line and f'["{key}"]' not in frame.line):
        return []
    holder = _optimizer_holder(error, key, frame.line)
    saved = _saved_optimizer(container)
    if holder is None or saved is None:
        return []
    entries = list(saved["param_groups"]) if holder == "param_group" else [
        value for value in dict(saved["state"]).values() if isinstance(value, Mapping)]
    written = list(dict.fromkeys(name for entry in entries for name in entry))
    if not entries or any(set(written) - set(entry) for entry in entries):
        return []
    names = ", ".join(str(name) for name in written)
    close = difflib.get_close_matches(key, [str(name) for name in written], n=1, cutoff=0.6)
    nearest = f" (the closest one: {close[0]!r})" if close else ""
    where = "param_group" if holder == "param_group" else "parameter's state"
    hint = (f"resuming after step {step}, the code at {frame.short} raised "
            f"{error_line(error, 120)} looking it up in an optimizer {holder}: torch never "
            f"writes {key!r} there, so the frame shown is the bug, not the file")
    details = (f"raised at {frame.render()}",
               f"the optimizer state in the file is complete: "
               f"{_each(len(entries), where)} {names}")
    return [Finding("training_state", (), hint, details, fix=(
        f"fix: the bug is in the code at {frame.short} ({frame.line}): read a key torch "
        f"writes{nearest}"))]


def _each(count: int, noun: str) -> str:
    return f"its one {noun} has" if count == 1 else f"each of its {count} {noun}s has"


def _optimizer_holder(error: BaseException, key: str, line: str) -> str | None:
    """``param_group`` or ``state`` when the raising frame holds an optimizer param_group (or
    a parameter's state) that lacks ``key``."""
    import torch

    frames = list(_torch_frame_locals(error))
    names = frames[-1] if frames else {}
    for value in names.values():
        if isinstance(value, Mapping) and key not in value:
            if "params" in value and "lr" in value:
                return "param_group"
            if set(value) & _STATE_KEYS:
                return "state"
    if "param_groups" in line and any(isinstance(value, torch.optim.Optimizer)
                                      for value in names.values()):
        return "param_group"
    return None


def _saved_optimizer(container: Any, depth: int = 0) -> Mapping[str, Any] | None:
    """The first optimizer state_dict (``state`` and ``param_groups``) in the container."""
    if not isinstance(container, Mapping) or depth > 4:
        return None
    if "param_groups" in container and "state" in container:
        return container
    for value in container.values():
        found = _saved_optimizer(value, depth + 1)
        if found is not None:
            return found
    return None
