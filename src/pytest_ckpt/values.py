"""Exact tensor comparison, poisoning and cheap fingerprints (torch, no pytest)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

# Tensors up to this many elements are fingerprinted whole; larger ones by a strided sample.
FINGERPRINT_FULL = 4096
FINGERPRINT_SAMPLES = 257


def bits(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor reinterpreted as integers of the same width, so equality is bitwise."""
    import torch

    ints = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
    flat = tensor.detach().reshape(-1)
    width = tensor.element_size()
    if width in ints and tensor.dtype != ints[width]:
        return flat.view(ints[width])
    return flat


def bitwise_equal(left: torch.Tensor, right: torch.Tensor) -> bool:
    """Same dtype, same shape, same bits (NaN equals NaN, 0.0 differs from -0.0)."""
    import torch

    if left.dtype != right.dtype or left.shape != right.shape:
        return False
    return bool(torch.equal(bits(left), bits(right)))


def fingerprint(tensor: torch.Tensor) -> torch.Tensor:
    """A small copy that changes when the tensor is overwritten by a different value."""
    flat = bits(tensor)
    if flat.numel() <= FINGERPRINT_FULL:
        return flat.clone()
    stride = max(1, flat.numel() // FINGERPRINT_SAMPLES)
    return flat[::stride].clone()


def poison_(tensor: torch.Tensor) -> None:
    """Overwrite in place with a value no sane checkpoint holds (NaN, the dtype's minimum)."""
    import torch

    with torch.no_grad():
        if tensor.dtype == torch.bool:
            tensor.logical_not_()
        elif tensor.is_floating_point() or tensor.is_complex():
            tensor.fill_(float("nan"))
        else:
            tensor.fill_(torch.iinfo(tensor.dtype).min)


def mismatch_summary(expected: torch.Tensor, actual: torch.Tensor) -> str:
    """Counts and max abs/rel error of two same-shape tensors (only called on failure)."""
    import torch

    if expected.shape != actual.shape:
        return f"shape {list(actual.shape)} != {list(expected.shape)}"
    differs = bits(expected) != bits(actual.to(expected.dtype))
    count = int(differs.sum())
    text = f"{count} of {expected.numel()} elements differ"
    if expected.is_floating_point():
        e, a = expected.detach().double(), actual.detach().double()
        abs_err = (e - a).abs()
        rel_err = abs_err / e.abs().clamp_min(torch.finfo(torch.float64).tiny)
        text += (f", max abs error {float(abs_err.nan_to_num(float('inf')).max()):.3g}, "
                 f"max rel error {float(rel_err.nan_to_num(float('inf')).max()):.3g}")
    return text


def flatten_outputs(output: Any, prefix: str = "output") -> dict[str, torch.Tensor]:
    """Name every tensor in a (nested) model output: ``output[0]``, ``output['logits']``."""
    import torch

    if isinstance(output, torch.Tensor):
        return {prefix: output}
    items: list[tuple[str, Any]] = []
    if isinstance(output, dict):
        items = [(f"{prefix}[{key!r}]", value) for key, value in output.items()]
    elif isinstance(output, (list, tuple)):
        items = [(f"{prefix}[{index}]", value) for index, value in enumerate(output)]
    elif hasattr(output, "to_tuple"):
        return flatten_outputs(output.to_tuple(), prefix)
    flat: dict[str, torch.Tensor] = {}
    for name, value in items:
        flat.update(flatten_outputs(value, name))
    return flat
