"""Poisoning a load target: every element differs bitwise from the value a load should write,
for every dtype and layout, whether written in place (plain contiguous CPU tensors, one pass
and no temporary) or through the general path."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_ckpt.checkpoint.values import bits, bitwise_equal, poison_, poisoned_value

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32,
          torch.int8, torch.uint8, torch.bool, torch.complex64]


def source(dtype: torch.dtype, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    values = torch.randn(*shape, generator=generator) * 100
    if dtype == torch.bool:
        return values > 0
    if dtype.is_complex:
        return torch.complex(values, -values).to(dtype)
    return values.to(dtype)


@settings(max_examples=60, deadline=None)
@given(dtype=st.sampled_from(DTYPES), shape=st.lists(st.integers(1, 5), min_size=1, max_size=3),
       seed=st.integers(0, 2**16), transposed=st.booleans(), own=st.booleans())
def test_every_element_differs_and_matches_the_general_path(dtype, shape, seed, transposed,
                                                              own):
    avoid = source(dtype, tuple(shape), seed)
    target = avoid.clone() if own else torch.empty_like(avoid)
    if transposed and target.dim() > 1:  # a non-contiguous target takes the general path
        target = target.transpose(0, -1)
        avoid = avoid.transpose(0, -1)
    expected = poisoned_value(avoid)
    poison_(target, avoid=None if own else avoid)
    assert expected is not None and bitwise_equal(target, expected)
    assert not bool((bits(target) == bits(avoid)).any())


def test_a_parameter_is_poisoned_in_place_without_autograd_complaining():
    layer = torch.nn.Linear(4, 4)
    before = layer.weight.detach().clone()
    storage = layer.weight.data_ptr()
    poison_(layer.weight)
    assert layer.weight.data_ptr() == storage and layer.weight.requires_grad
    assert not bool((bits(layer.weight) == bits(before)).any())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_an_empty_tensor_is_left_alone(dtype):
    empty = torch.empty(0, dtype=dtype)
    poison_(empty)
    assert empty.numel() == 0
