"""What a load did to dtypes, judged on values: an ``assign=True`` load that replaced the
model's tensors with the checkpoint's (another dtype: the model changed precision), and a
cast that changed values beyond rounding (overflow to inf, integers that wrap, distinct values
merged into one), quantified. Rounding alone (a float32 checkpoint in a bfloat16 model) is
what the user asked for and passes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pytest_ckpt.diagnosis.findings import Finding
from pytest_ckpt.diagnosis.signatures import cast_loss

if TYPE_CHECKING:
    import torch


def dtypes_of(model: torch.nn.Module) -> dict[str, str]:
    import torch

    return {key: str(value.dtype).removeprefix("torch.")
            for key, value in model.state_dict().items() if isinstance(value, torch.Tensor)}


def retyped_finding(before: Mapping[str, str], after: Mapping[str, str],
                    assigned: bool) -> Finding | None:
    """Model tensors whose dtype the load changed (``load_state_dict(assign=True)`` keeps the
    checkpoint's tensors, dtype and all, where a copy would cast to the model's)."""
    changed = sorted(key for key, dtype in after.items() if before.get(key, dtype) != dtype)
    if not changed:
        return None
    pairs = sorted({(before[key], after[key]) for key in changed})
    shown = ", ".join(f"{old} -> {new}" for old, new in pairs)
    how = ("load_state_dict(assign=True) replaced the model's tensors with the checkpoint's, "
           "which keep their own dtype (assign does not cast)" if assigned else
           "the load path replaced the model's tensors with tensors of another dtype")
    return Finding(
        "dtype", tuple(changed),
        f"the load changed the model's dtype ({shown}): {how}; the model now computes in the "
        "checkpoint's precision",
        tuple(f"{key}: {before[key]} before the load, {after[key]} after" for key in changed),
        fix=("fix: cast the state_dict to the model's dtype before an assign=True load "
             "({k: v.to(model_param.dtype) for ...}), or load without assign=True "
             "(load_state_dict copies and casts), or build the model in the checkpoint's dtype"))


def lossy_cast_finding(model: torch.nn.Module, state: Mapping[str, Any]) -> Finding | None:
    """Checkpoint tensors the load cast to the model's dtype with values changed beyond
    rounding: finite values that became inf, integers that wrapped around, a tensor of
    several values that became one constant."""
    import torch

    details, keys = [], []
    for key, tensor in sorted(model.state_dict().items()):
        saved = state.get(key)
        if not isinstance(saved, torch.Tensor) or not isinstance(tensor, torch.Tensor) \
                or saved.dtype == tensor.dtype or saved.shape != tensor.shape \
                or not saved.numel() or saved.is_quantized or tensor.is_quantized:
            continue
        damage = _damage(saved, tensor)
        if damage:
            keys.append(key)
            old, new = (str(t.dtype).removeprefix("torch.") for t in (saved, tensor))
            details.append(f"{key}: {old} in the checkpoint, {new} in the model: {damage}"
                           + (f" ({cast_loss(old, new)})" if cast_loss(old, new) else ""))
    if not keys:
        return None
    return Finding(
        "dtype", tuple(keys),
        "the cast to the model's dtype changed values beyond rounding: load_state_dict casts "
        "without a warning", tuple(details),
        fix=("fix: load into a model in the checkpoint's dtype (or a wider one), or rescale / "
             "clamp these tensors in the load path before casting"))


def _damage(saved: torch.Tensor, cast: torch.Tensor) -> str:
    """How the cast changed ``saved``: counts of values that became inf or wrapped, and the
    distinct values merged; empty when only rounding happened."""
    import torch

    parts = []
    before = saved.detach().reshape(-1)
    after = cast.detach().reshape(-1)
    if before.is_floating_point() and after.is_floating_point():
        overflow = int((torch.isfinite(before) & ~torch.isfinite(after)).sum())
        if overflow:
            largest = float(before[torch.isfinite(before)].abs().max())
            parts.append(f"{overflow} of {before.numel()} values become inf (largest |value| "
                         f"{largest:g}, the {str(cast.dtype).removeprefix('torch.')} maximum "
                         f"{torch.finfo(cast.dtype).max:g})")
    elif not before.is_floating_point() and not after.is_floating_point():
        wrapped = int((before != after.to(before.dtype)).sum())
        if wrapped:
            parts.append(f"{wrapped} of {before.numel()} values wrap around")
    # sorting for distinct counts only where something is to be said: a constant cast from a
    # tensor that was not constant (a min/max pass), or damage found above
    merged = bool(after.amin() == after.amax()) and bool(before.amin() != before.amax())
    if parts or merged:
        distinct, kept = (int(torch.unique(values).numel()) for values in (before, after))
        if kept < distinct:
            parts.append(f"{distinct} distinct values become {kept}")
    return "; ".join(parts)
