"""Format adapters: weights-only loads, header-only manifests, and bad files named clearly."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from pytest_ckpt.checkpoint.manifest import Manifest
from pytest_ckpt.errors import CheckpointReadError
from pytest_ckpt.formats import detect_format, get_format, read_checkpoint_manifest
from pytest_ckpt.record.snapshots import SnapshotWriteError, atomic_write_text


class CreatesAFile:
    """A pickle payload that would create a file when unpickled."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.touch, (self.target,))


def test_malicious_pickle_is_refused_and_executes_nothing(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"weight": torch.zeros(2), "payload": CreatesAFile(marker)}, path)
    with pytest.raises(CheckpointReadError) as error:
        get_format("torch").load(path)
    assert str(error.value).startswith(f"checkpoint {path} was refused by "
                                       "torch.load(weights_only=True)")
    assert "nothing from it was executed" in str(error.value)
    assert not marker.exists()


def test_plain_pickle_that_is_not_a_checkpoint_is_refused(tmp_path):
    path = tmp_path / "list.pkl"
    path.write_bytes(pickle.dumps(CreatesAFile(tmp_path / "pwned")))
    with pytest.raises(CheckpointReadError, match=r"list\.pkl"):
        read_checkpoint_manifest(path)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("cut", [10, 200, -20])
def test_truncated_torch_files_are_reported_as_corrupt(tmp_path, cut):
    path = tmp_path / "cut.pt"
    torch.save(nn.Linear(50, 50).state_dict(), path)
    path.write_bytes(path.read_bytes()[:cut])
    with pytest.raises(CheckpointReadError, match=r"cut\.pt (is corrupt or truncated|is not a)"):
        read_checkpoint_manifest(path)


def test_truncated_safetensors_file_says_where_the_data_ends(tmp_path):
    path = tmp_path / "cut.safetensors"
    save_file({"w": torch.zeros(100)}, str(path))
    path.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(CheckpointReadError, match=r"cut\.safetensors is truncated or corrupt: "
                                                  r"its tensors need 400 bytes of data, the "
                                                  r"file holds 392"):
        read_checkpoint_manifest(path)


def test_safetensors_manifest_comes_from_the_header_alone(tmp_path):
    path = tmp_path / "m.safetensors"
    save_file({"a.w": torch.zeros(3, 4, dtype=torch.bfloat16), "b": torch.ones(2)}, str(path))
    fmt = detect_format(path)
    assert fmt.name == "safetensors"
    manifest = fmt.read_manifest(path)
    assert [(row.key, row.dtype, row.shape) for row in manifest] == [
        ("a.w", "bfloat16", (3, 4)), ("b", "float32", (2,))]


def test_torch_file_manifest_keeps_ties_and_finds_nested_state_dicts(tmp_path):
    model = nn.ModuleDict({"a": nn.Linear(3, 3), "b": nn.Linear(3, 3)})
    model["b"].weight = model["a"].weight
    path = tmp_path / "ckpt.pt"
    torch.save({"model": model.state_dict(), "step": 7}, path)
    manifest = read_checkpoint_manifest(path)
    assert manifest.tie_groups() == {"a.weight": ("a.weight", "b.weight")}
    assert manifest.keys() == Manifest.from_module(model).keys()


def test_legacy_non_zip_torch_files_load_weights_only(tmp_path):
    path = tmp_path / "legacy.pt"
    torch.save(nn.Linear(2, 2).state_dict(), path, _use_new_zipfile_serialization=False)
    assert read_checkpoint_manifest(path).keys() == ["bias", "weight"]


def test_a_checkpoint_without_a_state_dict_says_what_it_holds(tmp_path):
    path = tmp_path / "list.pt"
    torch.save([1, 2, 3], path)
    with pytest.raises(CheckpointReadError, match=r"holds no state_dict \(a list"):
        read_checkpoint_manifest(path)


def test_unknown_format_names_the_known_ones():
    with pytest.raises(ValueError, match="unknown checkpoint format 'onnx'; known formats: "
                                         "torch, safetensors"):
        get_format("onnx")


def test_atomic_write_keeps_the_old_file_when_the_write_fails(tmp_path, monkeypatch):
    path = tmp_path / "snap.manifest.txt"
    atomic_write_text(path, "old\n")

    def fail(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(SnapshotWriteError, match=f"could not write {path}: disk full"):
        atomic_write_text(path, "new\n")
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["snap.manifest.txt"]


class TrainerConfig:
    """A project's own class pickled into a checkpoint."""

    def __init__(self) -> None:
        self.lr = 1e-3


def test_refused_checkpoint_names_each_global_and_where_it_sits(tmp_path):
    import argparse

    import numpy as np

    from pytest_ckpt.formats.torch_zip import read_failure

    path = tmp_path / "train.pt"
    torch.save({"model": nn.Linear(2, 2).state_dict(), "curr_ap": np.float64(0.5),
                "args": argparse.Namespace(lr=1e-3), "config": TrainerConfig(),
                "history": [1.0, np.float32(2.0)]}, path)
    with pytest.raises(CheckpointReadError) as error:
        get_format("torch").load(path)
    assert "nothing from it was executed" in str(error.value)
    scalar = type(np.float64(0.5)).__reduce__(np.float64(0.5))[0]
    scalar_name = f"{scalar.__module__}.{scalar.__name__}"
    expected = {("['curr_ap']", scalar_name), ("['curr_ap']", "numpy.dtype"),
                ("['curr_ap']", "numpy.dtypes.Float64DType"), ("['args']", "argparse.Namespace"),
                ("['config']", f"{__name__}.TrainerConfig"), ("['history'][1]", scalar_name),
                ("['history'][1]", "numpy.dtypes.Float32DType")}
    assert expected <= set(error.value.unsafe)
    message, findings = read_failure(error.value)
    assert [finding.kind for finding in findings] == ["unsafe_pickle"]
    assert set(findings[0].keys) == {"['curr_ap']", "['args']", "['config']", "['history'][1]"}
    first, *_, fix = message.splitlines()
    assert first == f"checkpoint {path} cannot be loaded with weights_only=True"
    assert fix.startswith("fix: store plain Python values there (float(x), dict(vars(args)), "
                          "dataclasses.asdict(config)), or allow exactly these globals: "
                          "safe_globals=[")
    allowed = fix.split("safe_globals=[")[1].split("]")[0].split(", ")
    assert sorted(allowed) == sorted({name for _, name in expected})


def test_safe_globals_allow_exactly_the_named_globals(tmp_path):
    import argparse

    import numpy as np

    from pytest_ckpt.formats.torch_zip import allowed_globals, load_weights_only

    if not hasattr(torch.serialization, "add_safe_globals"):
        pytest.skip("this torch has no weights_only allow-list")
    path = tmp_path / "train.pt"
    torch.save({"w": torch.ones(2), "curr_ap": np.float64(0.5),
                "args": argparse.Namespace(lr=1e-3)}, path)
    numpy_scalar = [type(np.float64(0.5)).__reduce__(np.float64(0.5))[0], np.dtype,
                    type(np.dtype("float64"))]
    with pytest.raises(CheckpointReadError) as error:
        load_weights_only(path, numpy_scalar)
    assert error.value.unsafe == (("['args']", "argparse.Namespace"),)
    loaded = load_weights_only(path, [*numpy_scalar, argparse.Namespace])
    assert loaded["args"].lr == 1e-3 and float(loaded["curr_ap"]) == 0.5
    before = torch.serialization.get_safe_globals()
    with allowed_globals([argparse.Namespace]):
        pass
    assert torch.serialization.get_safe_globals() == before  # nothing stays allowed


def test_the_scan_of_a_malicious_pickle_runs_nothing(tmp_path):
    from pytest_ckpt.formats.pickle_scan import unsafe_globals
    from pytest_ckpt.formats.torch_file import scan

    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"w": torch.zeros(1), "payload": CreatesAFile(marker)}, path)
    assert unsafe_globals(scan(path)) == [("['payload']", "pathlib.Path.touch"),
                                    ("['payload']", "pathlib.PosixPath")]
    assert not marker.exists()
