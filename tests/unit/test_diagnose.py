"""The manifest diff that every snapshot and round-trip failure is rendered from."""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from pytest_ckpt.checkpoint.manifest import Manifest, ManifestRow
from pytest_ckpt.diagnosis.engine import diagnose

rows = st.lists(st.builds(ManifestRow, key=st.text(max_size=12), dtype=st.just("float32"),
                          shape=st.lists(st.integers(0, 9), max_size=3).map(tuple)),
                max_size=15, unique_by=lambda row: row.key)


@given(rows)
def test_identical_manifests_have_no_findings(items):
    manifest = Manifest(tuple(items))
    assert diagnose(manifest, Manifest(tuple(items))) == []


@given(rows, rows)
def test_every_key_difference_is_explained(left, right):
    findings = diagnose(Manifest(tuple(left)), Manifest(tuple(right)))
    explained = {key for finding in findings for key in (*finding.keys, *finding.related)}
    differing = {row.key for row in left} ^ {row.key for row in right}
    assert differing <= explained


def test_vocab_resize_is_a_shape_finding_naming_the_dimension():
    old = Manifest.from_module(nn.Embedding(36, 8))
    new = Manifest.from_module(nn.Embedding(32, 8))
    (finding,) = diagnose(old, new)
    assert finding.kind == "shape"
    assert finding.details == ("weight: [36, 8] in the checkpoint, [32, 8] in the model "
                               "(dim 0: 36 -> 32)",)


def test_half_precision_checkpoint_is_a_lossy_dtype_finding():
    old = Manifest.from_module(nn.Linear(2, 2))
    new = Manifest.from_module(nn.Linear(2, 2).to(dtype=torch.bfloat16))
    (finding,) = diagnose(old, new)
    assert finding.kind == "dtype"
    assert finding.keys == ("bias", "weight")
    assert finding.details[0] == (
        "bias: float32 in the checkpoint, bfloat16 in the model (lossy cast: 8 of 24 "
        "significand bits kept, about 2.4 significant digits)")


def test_untied_weights_are_a_tied_weights_finding():
    tied = nn.ModuleDict({"a": nn.Linear(2, 2), "b": nn.Linear(2, 2)})
    tied["b"].weight = tied["a"].weight
    untied = nn.ModuleDict({"a": nn.Linear(2, 2), "b": nn.Linear(2, 2)})
    (finding,) = diagnose(Manifest.from_module(tied), Manifest.from_module(untied))
    assert finding.kind == "tied_weights"
    assert finding.keys == ("a.weight", "b.weight")


def test_missing_and_unexpected_follow_load_state_dict_orientation():
    checkpoint = Manifest((ManifestRow("old.w", "float32", (1,)),))
    model = Manifest((ManifestRow("new.w", "float32", (2,)),))  # not a rename: shapes differ
    kinds = {finding.kind: finding.keys for finding in diagnose(checkpoint, model)}
    assert kinds == {"missing": ("new.w",), "unexpected": ("old.w",)}
