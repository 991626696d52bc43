"""Building a load target without the value initialisers the load overwrites: used where every
tensor the state_dict leaves out comes out as the source has it, built again with its
initialisers where not, and torch.nn.init always restored."""

from __future__ import annotations

import math

import pytest
import torch

from pytest_ckpt.checkpoint.values import bitwise_equal
from pytest_ckpt.checks.targets import build_target

ORIGINAL_INITIALISERS = {name: getattr(torch.nn.init, name)
                         for name in ("kaiming_uniform_", "uniform_", "normal_", "ones_")}


class Rotary(torch.nn.Module):
    """What LLM code keeps out of its checkpoints: rotary ``inv_freq`` and BERT-style
    ``position_ids``, computed in ``__init__`` and registered non-persistent."""

    def __init__(self, dim: int = 8, positions: int = 16) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(dim, dim)
        self.embed = torch.nn.Embedding(positions, dim)
        self.norm = torch.nn.LayerNorm(dim)
        inv_freq = 1.0 / (10000 ** (torch.arange(0, dim, 2).float() / dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.register_buffer("position_ids", torch.arange(positions).expand((1, -1)),
                             persistent=False)
        self.scale = torch.tensor(math.sqrt(dim))  # a plain tensor attribute

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        angles = self.position_ids[0, : x.shape[0], None].float() * self.inv_freq
        return self.norm(self.proj(x) + self.embed.weight[: x.shape[0]]) * angles.cos().sum() \
            / self.scale


class InitialisedBuffer(torch.nn.Module):
    """A non-persistent buffer whose value comes from torch.nn.init (seeded)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.proj = torch.nn.Linear(4, 4)
        self.register_buffer("noise", torch.nn.init.normal_(torch.empty(64)), persistent=False)


class RandomBuffer(torch.nn.Module):
    """A non-persistent buffer drawn at random on every build (unseeded)."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(4, 4)
        self.register_buffer("noise", torch.randn(64), persistent=False)


def counted(factory):
    calls = []

    def make():
        calls.append(1)
        return factory()
    return make, calls


def assert_initialisers_restored():
    for name, function in ORIGINAL_INITIALISERS.items():
        assert getattr(torch.nn.init, name) is function


def test_a_model_with_computed_non_persistent_buffers_is_built_once_without_initialisers():
    source = Rotary()
    make, calls = counted(Rotary)
    rng = torch.random.get_rng_state()
    target = build_target(make, source)
    # kaiming_uniform_, uniform_ and normal_ draw from the generator; skipped, none of them ran
    assert torch.equal(torch.random.get_rng_state(), rng)
    assert len(calls) == 1
    for name in ("inv_freq", "position_ids", "scale"):
        assert bitwise_equal(getattr(target, name), getattr(source, name))
    target.load_state_dict(source.state_dict())
    x = torch.randn(5, 8)
    assert torch.equal(target(x), source(x))
    assert_initialisers_restored()


def test_a_buffer_set_by_an_initialiser_sends_the_build_back_to_the_initialised_path():
    source = InitialisedBuffer()
    make, calls = counted(InitialisedBuffer)
    target = build_target(make, source)
    assert len(calls) == 2
    assert bitwise_equal(target.noise, source.noise)
    assert_initialisers_restored()


def test_a_random_buffer_that_differs_from_the_source_is_built_again_with_initialisers():
    source = RandomBuffer()
    make, calls = counted(RandomBuffer)
    rng = torch.random.get_rng_state()
    build_target(make, source)
    assert len(calls) == 2
    assert not torch.equal(torch.random.get_rng_state(), rng)  # the second build initialised


def test_a_factory_that_raises_without_initialisers_is_built_again_normally():
    def fussy() -> torch.nn.Module:
        layer = torch.nn.Linear(4, 4)
        if torch.nn.init.kaiming_uniform_ is not ORIGINAL_INITIALISERS["kaiming_uniform_"]:
            raise RuntimeError("built while torch.nn.init is patched")
        return layer

    make, calls = counted(fussy)
    target = build_target(make, torch.nn.Linear(4, 4))
    assert len(calls) == 2 and isinstance(target, torch.nn.Linear)
    assert_initialisers_restored()


def test_a_factory_that_raises_on_every_build_raises_its_own_error():
    def broken() -> torch.nn.Module:
        raise ValueError("config has no hidden_size")

    with pytest.raises(ValueError, match="hidden_size"):
        build_target(broken, torch.nn.Linear(4, 4))
    assert_initialisers_restored()


def test_a_factory_that_returns_something_else_is_returned_as_is_for_the_caller_to_name():
    make, calls = counted(lambda: {"weight": torch.zeros(2)})
    built = build_target(make, torch.nn.Linear(2, 2))
    assert isinstance(built, dict) and torch.equal(built["weight"], torch.zeros(2))
    assert len(calls) == 1
