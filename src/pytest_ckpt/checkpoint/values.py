"""Exact tensor comparison, poisoning, write witnesses and cheap fingerprints (torch, no
pytest).

Every dtype is compared by its bits (complex through its real view, so NaN equals NaN);
quantized tensors by their integer representation and quantization parameters; sparse ones
by their dense values. A poison is made for the value a load should write (its bits
inverted), so it differs from that value in every element: a checkpoint value can never
equal its poison, and a tensor a load skipped can never pass for loaded.
"""

from __future__ import annotations

import weakref
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

# Tensors up to this many elements are fingerprinted whole; larger ones by a strided sample.
FINGERPRINT_FULL = 4096
FINGERPRINT_SAMPLES = 257


def _plain(tensor: torch.Tensor) -> torch.Tensor:
    """A strided, real-valued, integer-comparable form of ``tensor``'s data (a copy only
    where the layout needs one)."""
    import torch

    value = tensor.detach()
    if value.is_quantized:
        value = value.int_repr()
    elif value.layout != torch.strided:
        value = value.to_dense()
    if value.is_complex():
        value = torch.view_as_real(value.resolve_conj().resolve_neg())
    return value


def bits(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor's data reinterpreted as integers of the same width, flattened, so equality
    is bitwise (NaN equals NaN, 0.0 differs from -0.0)."""
    import torch

    ints = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
    flat = _plain(tensor).reshape(-1)
    width = flat.element_size()
    if width in ints and flat.dtype != ints[width]:
        return flat.view(ints[width])
    return flat


def _qparams(tensor: torch.Tensor) -> tuple[Any, ...]:
    """A quantized tensor's scheme and parameters, comparable with ``==``; ``()`` otherwise."""
    import torch

    if not tensor.is_quantized:
        return ()
    scheme = tensor.qscheme()
    if scheme in (torch.per_tensor_affine, torch.per_tensor_symmetric):
        return (scheme, float(tensor.q_scale()), int(tensor.q_zero_point()))
    return (scheme, tensor.q_per_channel_axis(), tensor.q_per_channel_scales().tolist(),
            tensor.q_per_channel_zero_points().tolist())


def bitwise_equal(left: torch.Tensor, right: torch.Tensor) -> bool:
    """Same dtype, shape, layout and quantization, same bits."""
    import torch

    if left.dtype != right.dtype or left.shape != right.shape:
        return False
    if left.is_quantized != right.is_quantized or _qparams(left) != _qparams(right):
        return False
    return bool(torch.equal(bits(left), bits(right)))


def fingerprint(tensor: torch.Tensor) -> torch.Tensor:
    """A small copy (int64) that changes when the tensor is overwritten by another value."""
    import torch

    flat = bits(tensor)
    if flat.numel() > FINGERPRINT_FULL:
        flat = flat[:: max(1, flat.numel() // FINGERPRINT_SAMPLES)]
    sample = flat.to(torch.int64)
    params = _qparams(tensor)
    if params:
        extra = torch.tensor([zlib.crc32(repr(params).encode())], dtype=torch.int64)
        sample = torch.cat([sample, extra])
    return sample.clone()


def digest(tensor: torch.Tensor) -> tuple[str, tuple[int, ...], bytes] | None:
    """dtype, shape and a hash of the bits: equal for tensors holding the same value (``None``
    for a tensor without data: meta, or empty)."""
    import hashlib

    if tensor.device.type == "meta" or tensor.numel() == 0:
        return None
    data = bits(tensor).contiguous()
    if data.device.type != "cpu":
        data = data.cpu()
    hashed = hashlib.blake2b(data.numpy().tobytes(), digest_size=16).digest()
    return str(tensor.dtype), tuple(tensor.shape), hashed + repr(_qparams(tensor)).encode()


def poisoned_value(reference: torch.Tensor) -> torch.Tensor | None:
    """A tensor like ``reference`` whose every element differs from it bitwise (its bits
    inverted; a flipped bool); ``None`` where none can be made (sparse, empty)."""
    import torch

    if reference.layout != torch.strided or reference.numel() == 0 \
            or reference.device.type == "meta":
        return None
    value = reference.detach()
    if value.is_quantized:
        return _poisoned_quantized(value)
    if value.dtype == torch.bool:
        return value.logical_not()
    flipped = torch.bitwise_not(bits(value)).view(_plain(value).dtype)
    if value.is_complex():
        return torch.view_as_complex(flipped.reshape(*value.shape, 2).contiguous())
    return flipped.reshape(value.shape)


def _poisoned_quantized(value: torch.Tensor) -> torch.Tensor | None:
    import torch

    inverted = torch.bitwise_not(value.int_repr())
    scheme = value.qscheme()
    if scheme in (torch.per_tensor_affine, torch.per_tensor_symmetric):
        make = getattr(torch, "_make_per_tensor_quantized_tensor", None)
        return None if make is None else make(inverted, value.q_scale(), value.q_zero_point())
    make = getattr(torch, "_make_per_channel_quantized_tensor", None)
    return None if make is None else make(inverted, value.q_per_channel_scales(),
                                          value.q_per_channel_zero_points(),
                                          value.q_per_channel_axis())


def poison_(tensor: torch.Tensor, avoid: torch.Tensor | None = None) -> None:
    """Overwrite in place with values that differ element by element from ``avoid`` (the
    value a load should write; by default the tensor's own value)."""
    import torch

    reference = tensor if avoid is None or avoid.shape != tensor.shape \
        or avoid.dtype != tensor.dtype or avoid.is_quantized != tensor.is_quantized else avoid
    if _poison_in_place(tensor, reference):
        return
    value = poisoned_value(reference)
    if value is not None:
        with torch.no_grad():
            tensor.copy_(value)


def _poison_in_place(tensor: torch.Tensor, reference: torch.Tensor) -> bool:
    """Write ``reference``'s inverted bits straight into ``tensor`` (one pass, no temporary
    the size of the tensor), where both are plain contiguous strided tensors on the CPU;
    ``False`` where the general path is needed."""
    import torch

    plain = (tensor.layout == torch.strided and tensor.device.type == "cpu"
             and tensor.is_contiguous() and reference.is_contiguous() and tensor.numel() > 0
             and reference.device == tensor.device and not tensor.is_quantized
             and not tensor.is_complex() and tensor.dtype != torch.bool)
    if not plain:
        return False
    with torch.no_grad():
        torch.bitwise_not(bits(reference), out=bits(tensor.detach()))
    return True


@dataclass(frozen=True)
class Witness:
    """What a tensor was just before a load: the object and a fingerprint of its bits.

    A load can write a tensor's own value back (BatchNorm fills a missing
    ``num_batches_tracked`` from itself), so a write is judged by what changed, not by the
    version counter."""

    ref: Any  # a weak reference: a load with assign=True may replace the object
    print: torch.Tensor

    @classmethod
    def of(cls, tensor: torch.Tensor) -> Witness:
        return cls(weakref.ref(tensor), fingerprint(tensor))

    def changed(self, tensor: torch.Tensor) -> bool:
        """Whether ``tensor`` is another object, or other bits, than when this was taken."""
        import torch

        if self.ref() is not tensor:
            return True
        now = fingerprint(tensor)
        return now.shape != self.print.shape or not bool(torch.equal(now, self.print))


def mismatch_summary(expected: torch.Tensor, actual: torch.Tensor) -> str:
    """Counts and max abs/rel error of two same-shape tensors (only called on failure)."""
    import torch

    if expected.shape != actual.shape:
        return f"shape {list(actual.shape)} != {list(expected.shape)}"
    if expected.dtype != actual.dtype:
        return f"dtype {actual.dtype} != {expected.dtype}"
    differs = bits(expected) != bits(actual)
    if expected.is_complex():
        differs = differs.reshape(-1, 2).any(dim=1)
    text = f"{int(differs.sum())} of {expected.numel()} elements differ"
    if _qparams(expected) != _qparams(actual):
        text += ", quantization parameters differ"
    if expected.is_floating_point() or expected.is_complex() or expected.is_quantized:
        wide = torch.complex128 if expected.is_complex() else torch.float64
        e, a = (_values(tensor).to(wide) for tensor in (expected, actual))
        abs_err = (e - a).abs()
        rel_err = abs_err / e.abs().clamp_min(torch.finfo(torch.float64).tiny)
        text += (f", max abs error {float(abs_err.nan_to_num(float('inf')).max()):.3g}, "
                 f"max rel error {float(rel_err.nan_to_num(float('inf')).max()):.3g}")
    return text


def _values(tensor: torch.Tensor) -> torch.Tensor:
    """The numbers a tensor stands for: dequantized, dense."""
    import torch

    value = tensor.detach()
    if value.is_quantized:
        return value.dequantize()
    return value.to_dense() if value.layout != torch.strided else value


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
