"""The readers on damaged and crafted bytes: nothing a file does outlives its scan, a cache
never answers for other content, CRCs are checked where data is read, and any mutation of a
real file is a manifest or one :class:`CheckpointReadError`, never another exception."""

from __future__ import annotations

import argparse
import io
import os
import shutil
import struct
import subprocess
import sys
import zipfile
from collections import OrderedDict

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from pytest_ckpt.errors import CheckpointReadError
from pytest_ckpt.formats import load_checkpoint, read_checkpoint_manifest
from pytest_ckpt.formats.torch_file import scan
from tests.hostile.payloads import replace_zip_entry


def _torch_bytes(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


# GLOBAL collections.OrderedDict, then BUILD with slot state {"items": None}: a reader whose
# stand-in for OrderedDict is shared would keep that attribute for every later file.
MUTATES_THE_STAND_IN = (b"\x80\x02ccollections\nOrderedDict\nq\x00N}q\x01X\x05\x00\x00\x00"
                        b"itemsq\x02Nsq\x03\x86q\x04b0}q\x05.")


def test_a_file_that_rebuilds_a_stand_in_class_changes_nothing_for_the_next_file(tmp_path):
    hostile = tmp_path / "hostile.pt"
    hostile.write_bytes(replace_zip_entry(_torch_bytes({"w": torch.zeros(1)}), "/data.pkl",
                                          MUTATES_THE_STAND_IN))
    scan(hostile)  # it may build whatever it likes from its own stand-ins
    refused = tmp_path / "refused.pt"
    torch.save(OrderedDict(w=torch.zeros(2, 3), args=argparse.Namespace(lr=0.1)), refused)
    with pytest.raises(CheckpointReadError) as error:
        read_checkpoint_manifest(refused)
    assert error.value.unsafe == (("['args']", "argparse.Namespace"),)


def test_a_file_swapped_for_one_of_the_same_size_and_mtime_is_read_again(tmp_path):
    path = tmp_path / "ckpt.pt"
    torch.save({"w": torch.zeros(128)}, path)
    first = read_checkpoint_manifest(path)
    stat = path.stat()
    (tmp_path / "other").mkdir()
    other = tmp_path / "other" / "ckpt.pt"  # the same name: torch names the archive after it
    torch.save({"v": torch.zeros(128)}, other)  # same size: one key letter differs
    assert other.stat().st_size == stat.st_size
    shutil.copyfile(other, path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # as `cp -p` or tar leave it
    assert path.stat().st_mtime_ns == stat.st_mtime_ns and path.stat().st_ino == stat.st_ino
    second = read_checkpoint_manifest(path)
    assert first.keys() == ["w"] and second.keys() == ["v"]


def test_a_storage_whose_crc_fails_is_reported_where_its_data_is_read(tmp_path):
    path = tmp_path / "ckpt.pt"
    torch.save({"w": torch.zeros(64)}, path)
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith("/data/0"))
    start = info.header_offset + 30 + struct.unpack(
        "<HH", data[info.header_offset + 26:info.header_offset + 30])[0] + struct.unpack(
        "<HH", data[info.header_offset + 26:info.header_offset + 30])[1]
    data[start + 5] ^= 0xFF  # one byte of the tensor data, CRC left as it was
    path.write_bytes(bytes(data))
    assert read_checkpoint_manifest(path).keys() == ["w"]  # header only: data not read
    with pytest.raises(CheckpointReadError, match="its storage ckpt/data/0 fails its "
                                                  "CRC-32 check"):
        load_checkpoint(path)


def test_a_dcp_value_is_read_with_weights_only(tmp_path):
    import warnings

    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if hasattr(dcp, "save"):
            dcp.save({"w": torch.ones(3), "step": 7, "meta": {"lr": 0.1}},
                     checkpoint_id=str(tmp_path))
        else:  # torch < 2.2
            dcp.save_state_dict({"w": torch.ones(3), "step": 7, "meta": {"lr": 0.1}},
                                dcp.FileSystemWriter(str(tmp_path)), no_dist=True)
    state = load_checkpoint(tmp_path)
    assert state["step"] == 7 and torch.equal(state["w"], torch.ones(3))
    assert state["meta.lr"] == 0.1 if "meta.lr" in state else state["meta"] == {"lr": 0.1}
    assert set(load_checkpoint(tmp_path, tensors_only=True)) == {"w"}


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="reads as another user through setpriv, which needs root")
def test_an_unreadable_file_is_named_with_the_cause(tmp_path):
    path = tmp_path / "secret.pt"
    torch.save({"w": torch.zeros(1)}, path)
    path.chmod(0o600)
    tmp_path.chmod(0o755)
    for parent in tmp_path.parents:  # pytest's temporary folders are private to root
        if parent.stat().st_mode & 0o005 != 0o005 and str(parent).startswith("/tmp/"):
            parent.chmod(parent.stat().st_mode | 0o005)
    child = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                            sys.executable, "-m", "pytest_ckpt.cli", "show", str(path)],
                           capture_output=True, text=True, check=False, timeout=120,
                           env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert child.returncode == 2, child.stderr
    assert child.stderr.splitlines() == [
        f"pytest-ckpt: checkpoint {path} cannot be read: permission denied",
        "fix: make the file readable by the user running the tests (chmod a+r)"]


def _mutated(data: bytes, edits: list[tuple[int, int]], cut: int | None) -> bytes:
    mutated = bytearray(data)
    for position, value in edits:
        mutated[position % len(mutated)] = value
    return bytes(mutated[:cut] if cut is not None else mutated)


EDITS = st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), max_size=8)
CUTS = st.none() | st.integers(0, 4000)
FUZZ = settings(max_examples=80, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
@FUZZ
@given(edits=EDITS, cut=CUTS)
@example(edits=[(585, 92)], cut=None)  # a backslash in a legacy pickle's string: genops warned
def test_any_mutation_of_a_torch_file_is_a_manifest_or_a_read_error(tmp_path, zip_format,
                                                                     edits, cut):
    path = tmp_path / "m.pt"
    buffer = io.BytesIO()
    torch.save({"state_dict": {"w": torch.ones(2, 3)}, "epoch": 3}, buffer,
               _use_new_zipfile_serialization=zip_format)
    path.write_bytes(_mutated(buffer.getvalue(), edits, cut))
    for read in (read_checkpoint_manifest, load_checkpoint):
        try:
            read(path)
        except CheckpointReadError as error:
            assert str(path) in str(error)


@FUZZ
@given(edits=EDITS, cut=CUTS)
def test_any_mutation_of_a_safetensors_file_is_a_manifest_or_a_read_error(tmp_path, edits,
                                                                          cut):
    path = tmp_path / "m.safetensors"
    save_file({"a": torch.zeros(2, 3), "b": torch.ones(4)}, str(path))
    path.write_bytes(_mutated(path.read_bytes(), edits, cut))
    for read in (read_checkpoint_manifest, load_checkpoint):
        try:
            read(path)
        except CheckpointReadError as error:
            assert str(path) in str(error)
