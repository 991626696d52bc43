"""torch_header.py: a torch zip file's manifest and container read from the pickle and the zip
directory agree with ``torch.load(weights_only=True)``, and anything else is left to torch."""

from __future__ import annotations

import argparse
import collections
import io
import pickle
import subprocess
import sys
import tempfile
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_ckpt.checkpoint.container import container_layout
from pytest_ckpt.checkpoint.manifest import Manifest
from pytest_ckpt.errors import CheckpointReadError
from pytest_ckpt.formats.torch_header import is_record, read_container, read_manifest
from pytest_ckpt.formats.torch_zip import TorchZipFormat, state_dict_of


def _savable(dtype: torch.dtype) -> bool:
    """torch.save of this dtype works here (float8 exists but cannot be saved on torch 2.1)."""
    try:
        torch.save(torch.zeros(1, dtype=dtype), io.BytesIO())
    except (KeyError, RuntimeError, TypeError):
        return False
    return True


DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32,
          torch.int16, torch.int8, torch.uint8, torch.bool, torch.complex64,
          *(dtype for name in ("float8_e4m3fn", "float8_e5m2", "uint16", "uint32")
            if (dtype := getattr(torch, name, None)) is not None and _savable(dtype))]
WRAPPERS = ("bare", "state_dict", "model", "training")


def _tensor(draw: st.DrawFn) -> torch.Tensor:
    dtype = draw(st.sampled_from(DTYPES))
    shape = tuple(draw(st.lists(st.integers(0, 4), max_size=3)))
    base = torch.zeros(shape, dtype=torch.float32).to(dtype)
    view = draw(st.sampled_from(["whole", "transposed", "sliced"]))
    if view == "transposed" and base.dim() >= 2:
        return base.transpose(0, 1)
    if view == "sliced" and base.dim() >= 1 and base.shape[0] > 1:
        return base[1:]
    return base


@st.composite
def checkpoints(draw: st.DrawFn) -> object:
    """A state_dict (some entries views or ties of others, some Parameters) in a container."""
    keys = draw(st.lists(st.from_regex(r"[a-z]{1,3}(\.[a-z0-9]{1,3}){0,2}", fullmatch=True),
                         min_size=1, max_size=6, unique=True))
    state: dict[str, torch.Tensor] = collections.OrderedDict()
    for key in keys:
        if state and draw(st.booleans()):
            state[key] = state[draw(st.sampled_from(list(state)))]  # tied
        else:
            tensor = _tensor(draw)
            state[key] = torch.nn.Parameter(tensor, requires_grad=False) \
                if draw(st.booleans()) and tensor.is_contiguous() else tensor
    wrapper = draw(st.sampled_from(WRAPPERS))
    if wrapper == "bare":
        return state
    if wrapper == "training":
        return {"model": state, "epoch": draw(st.integers(0, 9)), "config": {"lr": 0.1},
                "optimizer": {"state": {0: {"step": torch.tensor(3.0)}},
                              "param_groups": [{"lr": 0.1, "params": [0]}]}}
    return {wrapper: state}


@settings(max_examples=60, deadline=None)
@given(checkpoints())
def test_the_header_manifest_and_container_are_what_a_weights_only_load_gives(obj):
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "ckpt.pt"
        torch.save(obj, path)
        loaded = torch.load(str(path), weights_only=True, mmap=True)

        assert read_manifest(path) == Manifest.from_state_dict(state_dict_of(loaded, path))
        assert container_layout(read_container(path), is_record) == container_layout(loaded)


def _saved(tmp_path: Path, obj: object, **kwargs: object) -> Path:
    path = tmp_path / "ckpt.pt"
    torch.save(obj, path, **kwargs)  # type: ignore[arg-type]
    return path


@pytest.mark.parametrize("case", ["custom global", "legacy file", "quantized", "no state_dict"])
def test_a_file_beyond_plain_tensors_is_left_to_torch_load(tmp_path, case):
    obj: object = {"model": {"w": torch.ones(2)}, "args": argparse.Namespace(lr=0.1)}
    kwargs = {}
    if case == "legacy file":
        obj, kwargs = {"w": torch.ones(2)}, {"_use_new_zipfile_serialization": False}
    elif case == "quantized":
        with warnings.catch_warnings():  # deprecated in newer torch, which still saves it
            warnings.simplefilter("ignore")
            obj = {"w": torch.quantize_per_tensor(torch.ones(2), 0.1, 0, torch.qint8)}
    elif case == "no state_dict":
        obj = {"epoch": 3}
    path = _saved(tmp_path, obj, **kwargs)

    assert read_manifest(path) is None
    # what show and assert_manifest(path) then give is torch.load(weights_only=True)'s answer
    try:
        expected = Manifest.from_state_dict(
            state_dict_of(torch.load(str(path), weights_only=True), path))
    except (pickle.UnpicklingError, CheckpointReadError):  # refused (quantized on torch 2.1)
        with pytest.raises(CheckpointReadError) as refused:
            TorchZipFormat().read_manifest(path)
        assert case != "custom global" or refused.value.unsafe  # names argparse.Namespace
    else:
        assert case not in ("custom global", "no state_dict")
        assert TorchZipFormat().read_manifest(path) == expected


def test_a_container_that_holds_itself_is_refused_before_anything_walks_it(tmp_path):
    history: list[object] = []
    history.append(history)
    path = _saved(tmp_path, {"model": {"w": torch.ones(2)}, "history": history})

    for read in (read_manifest, TorchZipFormat().read_manifest):
        with pytest.raises(CheckpointReadError, match="holds a container that contains "
                                                      "itself: refused"):
            read(path)


def test_a_storage_shorter_than_the_pickle_says_is_a_corrupt_file(tmp_path):
    path = _saved(tmp_path, {"w": torch.ones(4)})
    tampered = tmp_path / "tampered.pt"
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(tampered, "w") as target:
        for info in source.infolist():
            data = source.read(info)
            target.writestr(info, data[:8] if info.filename.endswith("/data/0") else data)

    assert read_container(path) is not None
    with pytest.raises(CheckpointReadError) as raised:
        TorchZipFormat().read_manifest(tampered)

    assert str(raised.value) == (f"checkpoint {tampered} is corrupt: its storage data/0 holds "
                                 "8 bytes where its tensors need 16")


def test_show_of_a_torch_zip_file_does_not_import_torch(tmp_path):
    path = _saved(tmp_path, {"model": {"w": torch.ones(2, 3), "b": torch.zeros(3)}, "epoch": 1})
    code = ("import sys\nfrom pytest_ckpt.cli import main\ncode = main(['show', sys.argv[1]])\n"
            "print(code, 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                          text=True, check=True, cwd=tmp_path)

    lines = done.stdout.splitlines()
    assert lines[:2] == [f"{path}: torch, 2 entries, 9 elements (header read; tensor data "
                         "not read or CRC-checked)",
                         "container: {'model': state_dict}; also epoch (int)"]
    assert "w float32 [2,3] tensor" in lines
    assert lines[-1] == "0 False"
