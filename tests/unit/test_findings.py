"""Key folding and failure rendering (pure)."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from pytest_ckpt.checkpoint.keys import (
    _render_segments,
    _segment,
    expand_folded,
    fold_by_position,
    fold_keys,
    natural_key,
)
from pytest_ckpt.diagnosis.findings import Finding, render_failure

segment = st.one_of(st.sampled_from(["layers", "attn", "q_proj", "weight", "bias", "blocks"]),
                    st.integers(0, 40).map(str))
dotted = st.lists(segment, min_size=1, max_size=5).map(".".join)


@given(st.lists(dotted, max_size=60))
def test_folding_is_exact(keys):
    folded = fold_keys(keys)
    expanded = [key for line in folded for key in expand_folded(line)]
    assert sorted(expanded) == sorted(set(keys))
    assert len(folded) <= len(set(keys))


# a small alphabet, so keys often differ in one segment only; and segments that are not
# integers although they hold digits
few = st.sampled_from(["a", "0", "1", "2", "01", "", "\0", "\u0661"])


@given(st.lists(st.lists(few, min_size=1, max_size=3).map(".".join), max_size=40))
@example(["a.1.0", "a.1.1", "a.2.0"])  # two integers: they fold at the second
@example(["x\0.1", "x\0.2", "x.1"])  # a key holding the mask character
def test_keys_with_one_integer_fold_as_the_position_by_position_fold_does(keys):
    general = fold_by_position({tuple(_segment(part) for part in key.split("."))
                                for key in keys})
    expected = sorted((_render_segments(item) for item in general),
                      key=lambda text: (natural_key(text), text))
    assert fold_keys(keys) == expected


def test_layers_fold_into_ranges_and_nested_indices_fold_too():
    keys = [f"decoder.layers.{i}.attn.q_proj.weight" for i in range(12)]
    keys += [f"enc.blocks.{b}.convs.{c}.weight" for b in range(4) for c in range(3)]
    keys += ["head.0.weight", "head.2.weight", "head.3.weight", "head.4.weight"]
    assert fold_keys(keys) == [
        "decoder.layers.{0..11}.attn.q_proj.weight",
        "enc.blocks.{0..3}.convs.{0..2}.weight",
        "head.{0,2..4}.weight",
    ]


@given(st.integers(0, 10**40), st.integers(0, 10**40))
def test_natural_order_is_the_order_of_the_numbers(a, b):
    assert (natural_key(f"layers.{a}.w") < natural_key(f"layers.{b}.w")) == (a < b)


def test_a_segment_of_thousands_of_digits_is_a_name_and_folds_exactly():
    long = "1" * 5000  # int() refuses more than 4300 digits
    keys = [f"a.{long}.w", f"a.{long}.b", "a.2.w", "a.3.w"]

    folded = fold_keys(keys)

    assert folded == [f"a.{long}.b", f"a.{long}.w", "a.{2,3}.w"]
    assert sorted(key for line in folded for key in expand_folded(line)) == sorted(keys)


def test_leading_zeros_are_not_folded_so_folding_stays_exact():
    assert fold_keys(["a.01", "a.1"]) == ["a.01", "a.1"]


@given(st.lists(st.text(), max_size=20))
def test_folding_never_raises_on_arbitrary_keys(keys):
    fold_keys(keys)


def test_failure_message_has_what_broke_first_and_the_fix_last():
    findings = [
        Finding("value", ("b",), "differs", ("b: 3 of 4 elements differ",)),
        Finding("missing", tuple(f"layers.{i}.w" for i in range(30)), "not in the checkpoint"),
    ]
    text = render_failure("round-trip failed", findings, "fix: do the thing")
    assert text.splitlines() == [
        "round-trip failed",
        "  [missing] 30 keys: not in the checkpoint",
        "      layers.{0..29}.w",
        "  [value] 1 key: differs",
        "      b",
        "      b: 3 of 4 elements differ",
        "fix: do the thing",
    ]


def test_long_key_lists_are_cut_with_a_count():
    finding = Finding("unexpected", tuple(f"k{i}" for i in range(20)), "extra")
    lines = render_failure("x", [finding], "fix").splitlines()
    assert lines[-2] == "      ... and 12 more folded groups"
    assert len(lines) == 1 + 1 + 9 + 1


def test_colour_is_added_only_when_asked():
    finding = Finding("missing", ("a",), "gone")
    assert "\x1b[" not in render_failure("x", [finding], "fix")
    assert "\x1b[31m[missing]" in render_failure("x", [finding], "fix", color=True)


def test_finding_kinds_are_checked_against_the_vocabulary():
    with pytest.raises(ValueError, match="unknown finding kind 'oops'"):
        Finding("oops", (), "")


def test_findings_serialise_with_their_folded_keys():
    finding = Finding("missing", ("l.0.w", "l.1.w"), "gone")
    assert finding.to_json() == {"kind": "missing", "keys": ["l.0.w", "l.1.w"],
                                 "folded": ["l.{0,1}.w"], "hint": "gone", "details": [],
                                 "related": [], "fix": None}
    fixed = Finding("missing", (), "gone", fix="fix: put it back")
    assert fixed.to_json()["fix"] == "fix: put it back"
