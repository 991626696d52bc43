"""Manifest rendering and parsing (pure), and building manifests from real modules."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from pytest_ckpt.checkpoint.manifest import (
    BUFFER,
    KINDS,
    PARAM,
    Manifest,
    ManifestParseError,
    ManifestRow,
    escape_key,
    unescape_key,
)

keys = st.text(min_size=0, max_size=30)
rows = st.builds(
    ManifestRow,
    key=keys,
    dtype=st.sampled_from(["float32", "bfloat16", "int64", "bool", "object:int"]),
    shape=st.lists(st.integers(0, 10**6), max_size=4).map(tuple),
    kind=st.sampled_from(KINDS),
    tie=st.none() | keys,
)
manifests = st.lists(rows, max_size=20, unique_by=lambda row: row.key).map(
    lambda items: Manifest(tuple(items)))


@given(manifests)
def test_rendered_manifest_parses_back_to_the_same_manifest(manifest):
    text = manifest.render()
    assert Manifest.parse(text) == manifest
    assert Manifest.parse(text).render() == text


@given(keys)
def test_escaped_keys_are_one_token_and_round_trip(key):
    escaped = escape_key(key)
    assert escaped.isprintable() and not any(char.isspace() for char in escaped)
    assert not escaped.startswith("#")
    assert unescape_key(escaped) == key


@given(st.lists(rows, max_size=10, unique_by=lambda row: row.key))
def test_rendering_is_sorted_and_independent_of_insertion_order(items):
    assert Manifest(tuple(items)).render() == Manifest(tuple(reversed(items))).render()


def test_module_manifest_tells_parameters_buffers_and_ties_apart():
    model = nn.ModuleDict({"embed": nn.Embedding(5, 3), "norm": nn.BatchNorm1d(3),
                           "out": nn.Linear(3, 5, bias=False)})
    model["out"].weight = model["embed"].weight
    manifest = Manifest.from_module(model)
    assert manifest["embed.weight"] == ManifestRow("embed.weight", "float32", (5, 3), PARAM,
                                                   "embed.weight")
    assert manifest["out.weight"].tie == "embed.weight"
    assert manifest["norm.num_batches_tracked"] == ManifestRow(
        "norm.num_batches_tracked", "int64", (), BUFFER)
    assert manifest.tie_groups() == {"embed.weight": ("embed.weight", "out.weight")}


def test_meta_models_get_manifests_with_ties_by_identity():
    with torch.device("meta"):
        model = nn.ModuleDict({"a": nn.Linear(4, 4), "b": nn.Linear(4, 4)})
    model["b"].weight = model["a"].weight
    manifest = Manifest.from_module(model)
    assert manifest.tie_groups() == {"a.weight": ("a.weight", "b.weight")}
    assert manifest["a.bias"].tie is None  # meta storages all have data_ptr 0


def test_non_persistent_buffers_are_not_in_the_manifest():
    model = nn.Module()
    model.register_buffer("saved", torch.zeros(2))
    model.register_buffer("position_ids", torch.arange(4), persistent=False)
    assert Manifest.from_module(model).keys() == ["saved"]


@pytest.mark.parametrize(("text", "message"), [
    ("a float32 [1] param\n", "not a pytest-ckpt manifest"),
    ("# pytest-ckpt manifest v1\na float32 [1]\n", "line 2: expected 'key dtype [shape] kind'"),
    ("# pytest-ckpt manifest v1\na float32 [x] param\n", "line 2: bad shape '[x]'"),
    ("# pytest-ckpt manifest v1\na float32 [1] weird\n", "line 2: bad kind or shape"),
])
def test_malformed_manifest_text_names_the_line(text, message):
    with pytest.raises(ManifestParseError, match=message.replace("[", r"\[")):
        Manifest.parse(text)


def test_duplicate_keys_are_rejected():
    with pytest.raises(ValueError, match="same key twice"):
        Manifest((ManifestRow("a", "float32", ()), ManifestRow("a", "int64", ())))
