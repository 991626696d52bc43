"""Golden files: naming, sizes, fingerprints and writes (no pytest session involved)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from pytest_ckpt.checks.golden import check_golden
from pytest_ckpt.checks.targets import poisoned_copy
from pytest_ckpt.record.goldens import (
    GoldenFile,
    GoldenTooLarge,
    fingerprint_difference,
    fingerprint_of,
    golden_directory,
    goldens_in,
    parse_size,
    serialise,
    torch_minor,
    write_golden,
)


def test_goldens_live_beside_the_snapshot_directory_not_in_it():
    location = Path("/p/tests/__snapshots__/test_voc/test_x[tiny].manifest.txt")
    assert golden_directory(location) == Path("/p/tests/__goldens__/test_voc/test_x[tiny]")


def test_goldens_are_listed_oldest_torch_first_and_other_files_ignored(tmp_path):
    for name in ("torch-2.13.pt", "torch-2.1.pt", "torch-2.4.pt", "torch-2.4.json", "notes.pt",
                 ".torch-2.5.pt.123.tmp"):
        (tmp_path / name).write_bytes(b"")
    assert [golden.label for golden in goldens_in(tmp_path)] == [
        "torch-2.1", "torch-2.4", "torch-2.13"]
    assert goldens_in(tmp_path / "absent") == []


@given(st.integers(min_value=0, max_value=2**40),
       st.sampled_from([("", 1), ("B", 1), ("KiB", 1024), ("MiB", 2**20), ("GiB", 2**30)]))
def test_sizes_parse_with_binary_units(number, unit):
    suffix, factor = unit
    assert parse_size(f"{number}{suffix}") == number * factor
    assert parse_size(number) == number


@pytest.mark.parametrize("text", ["", "1 MiBs", "-1", "ten", "1e6"])
def test_a_bad_size_names_the_value(text):
    with pytest.raises(ValueError, match="not a size"):
        parse_size(text)


finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, width=32)


@given(st.lists(finite, min_size=1, max_size=300))
def test_a_fingerprint_matches_itself_and_not_a_changed_value(values):
    tensor = torch.tensor(values)
    assert fingerprint_difference(fingerprint_of(tensor), fingerprint_of(tensor.clone())) is None
    changed = tensor.clone()  # a change the size of the largest value: never rounding
    changed[0] = changed[0] + 1.0 + float(tensor.abs().max())
    assert fingerprint_difference(fingerprint_of(tensor), fingerprint_of(changed)) is not None


def test_a_fingerprint_tolerates_rounding_but_not_a_shape_change():
    tensor = torch.linspace(-3, 3, 1000)
    nudged = tensor * (1 + 1e-7)
    assert fingerprint_of(tensor)["sha256"] != fingerprint_of(nudged)["sha256"]
    assert fingerprint_difference(fingerprint_of(tensor), fingerprint_of(nudged)) is None
    why = fingerprint_difference(fingerprint_of(tensor), fingerprint_of(tensor[:999]))
    assert why == "float32[999] where the golden had float32[1000]"


def _golden(tmp_path: Path, model: nn.Module, *, limit: int = 1 << 20) -> Path | None:
    inputs = torch.ones(2, 4)
    outputs = {"output": model.eval()(inputs).detach()}
    data, sidecar = serialise(model, inputs, test="t.py::t", seed=3, outputs=outputs)
    return write_golden(tmp_path, data, sidecar, max_bytes=limit)


def test_a_write_replaces_only_the_current_torch_version_and_skips_identical_bytes(tmp_path):
    other = tmp_path / "torch-1.0.pt"
    other.write_bytes(b"an older golden")
    model = nn.Linear(4, 2)
    path = _golden(tmp_path, model)
    assert path == tmp_path / f"torch-{torch_minor()}.pt"
    assert _golden(tmp_path, model) is None  # same bytes: nothing rewritten
    assert other.read_bytes() == b"an older golden"
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar["seed"] == 3 and sidecar["bytes"] == path.stat().st_size


def test_a_golden_over_the_limit_writes_nothing(tmp_path):
    with pytest.raises(GoldenTooLarge, match="over the limit of"):
        _golden(tmp_path, nn.Linear(4, 256), limit=1024)
    assert list(tmp_path.iterdir()) == []


def test_check_finds_a_tensor_the_load_path_never_wrote(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    _golden(tmp_path, model)
    golden = GoldenFile(tmp_path / f"torch-{torch_minor()}.pt")

    def skip_first_layer(target: nn.Module, state: dict) -> None:
        target.load_state_dict({k: v for k, v in state.items() if not k.startswith("0.")},
                               strict=False)

    outcome = check_golden(golden, poisoned_copy(model), torch.ones(2, 4), skip_first_layer)
    kinds = {finding.kind: finding.keys for finding in outcome.findings}
    assert set(kinds["not_loaded"]) == {"0.bias", "0.weight"}
    assert "output" in kinds
    assert check_golden(golden, poisoned_copy(model), torch.ones(2, 4), None).ok
