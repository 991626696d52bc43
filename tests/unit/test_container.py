"""Where the weights sit in a container: found by content, several state_dicts told apart by
the model's keys, else by a usual name, else by size, and the choice said. Pure: tensors are
stand-ins with a shape."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_ckpt.checkpoint.container import container_layout, key_match


@dataclass(frozen=True)
class Tensor:
    shape: tuple[int, ...]


def is_tensor(value: Any) -> bool:
    return isinstance(value, Tensor)


def state(*keys: str, shape: tuple[int, ...] = (2,)) -> dict[str, Tensor]:
    return {key: Tensor(shape) for key in keys}


GENERATOR = state("conv_pre.weight", "ups.0.weight", "conv_post.weight")
DISCRIMINATOR = state("discriminators.0.convs.0.weight", "discriminators.0.conv_post.weight",
                      shape=(64, 64))


def layout_of(loaded: Any, model_keys: Any = None) -> Any:
    return container_layout(loaded, is_tensor, model_keys=model_keys)


@pytest.mark.parametrize("entry", ["net", "ema", "generator", "state_dict"])
def test_a_state_dict_under_any_entry_name_holds_the_weights(entry):
    layout = layout_of({entry: GENERATOR, "epoch": 3, "optimizer": {"state": {}}})
    assert (layout.layout, layout.weights_entry) == (f"{{{entry!r}: state_dict}}", entry)
    assert layout.others == (("epoch", "int"), ("optimizer", "dict"))
    assert layout.choice() is None


def test_the_entry_matching_the_model_wins_and_the_choice_is_said():
    layout = layout_of({"discriminator": DISCRIMINATOR, "generator": GENERATOR, "steps": 1},
                       model_keys=GENERATOR.keys())
    assert layout.weights_entry == "generator"
    assert layout.choice() == ("weights read from ['generator'] (matches the model; also a "
                               "state_dict: 'discriminator')")
    assert layout.others == (("discriminator", "dict"), ("steps", "int"))


def test_without_a_model_a_usual_name_wins_over_a_larger_entry():
    layout = layout_of({"ema": DISCRIMINATOR, "model": GENERATOR})
    assert layout.choice() == ("weights read from ['model'] (the usual name; also a "
                               "state_dict: 'ema')")


def test_without_a_model_or_a_usual_name_the_largest_wins():
    layout = layout_of({"generator": GENERATOR, "discriminator": DISCRIMINATOR})
    assert layout.choice() == ("weights read from ['discriminator'] (the largest; also a "
                               "state_dict: 'generator')")


def test_entries_that_match_the_model_equally_fall_back_to_the_usual_name():
    layout = layout_of({"ema": GENERATOR, "model": dict(GENERATOR), "disc": DISCRIMINATOR},
                       model_keys=GENERATOR.keys())
    assert layout.choice() == ("weights read from ['model'] (the usual name, of those "
                               "matching the model equally; also state_dicts: 'ema', 'disc')")


def test_a_model_that_matches_no_entry_says_so():
    layout = layout_of({"generator": GENERATOR, "discriminator": DISCRIMINATOR},
                       model_keys=["encoder.weight"])
    assert layout.choice() == ("weights read from ['discriminator'] (the largest; none matches "
                               "the model's keys; also a state_dict: 'generator')")


def test_keys_off_by_a_leading_segment_still_match_the_model():
    wrapped = {f"module.{key}": value for key, value in GENERATOR.items()}
    assert key_match(wrapped, GENERATOR.keys()) == (0, 3)
    assert key_match(GENERATOR, [f"model.{key}" for key in GENERATOR]) == (0, 3)
    layout = layout_of({"discriminator": DISCRIMINATOR, "generator": wrapped},
                       model_keys=GENERATOR.keys())
    assert layout.weights_entry == "generator"


@pytest.mark.parametrize("loaded", [[GENERATOR], {"epoch": 3}, {}, {"model": {}},
                                    {"model": {"w": Tensor((1,)), "step": 3}}])
def test_a_container_without_a_state_dict_has_no_layout(loaded):
    assert layout_of(loaded) is None


def test_a_bare_state_dict_is_its_own_weights():
    layout = layout_of(GENERATOR)
    assert (layout.layout, layout.weights_entry, layout.choice()) == (
        "bare state_dict", None, None)


entry_names = st.text(st.sampled_from("abcdefgh_"), min_size=1, max_size=6)
key_names = st.text(st.sampled_from("abcxyz.0123"), min_size=1, max_size=8)
state_dicts = st.dictionaries(key_names, st.tuples(st.integers(0, 5)).map(Tensor),
                              min_size=1, max_size=5)


@given(st.dictionaries(entry_names, state_dicts, min_size=1, max_size=5),
       st.dictionaries(entry_names, st.integers(), max_size=3))
def test_the_weights_entry_is_one_of_the_state_dicts_and_the_rest_are_listed(entries, extra):
    loaded = {**{key: value for key, value in extra.items() if key not in entries}, **entries}
    layout = layout_of(loaded)
    assert layout.weights_entry in entries
    assert set(layout.state_dicts) == set(entries)
    assert {key for key, _ in layout.others} == set(loaded) - {layout.weights_entry}
    assert (layout.choice() is None) == (len(entries) == 1)


@given(st.dictionaries(entry_names, state_dicts, min_size=2, max_size=5), st.data())
def test_a_model_whose_keys_are_one_entrys_own_picks_that_entry(entries, data):
    wanted = data.draw(st.sampled_from(sorted(entries)))
    keys = {f"only_in_{wanted}.{key}" for key in entries[wanted]}
    entries[wanted] = {key: Tensor((1,)) for key in keys}
    layout = layout_of(entries, model_keys=keys)
    assert layout.weights_entry == wanted
    assert layout.choice() == (
        f"weights read from [{wanted!r}] (matches the model; also "
        f"{'a state_dict' if len(entries) == 2 else 'state_dicts'}: "
        f"{', '.join(repr(entry) for entry in entries if entry != wanted)})")
