"""Files users hand to the checks: weights_only refusals as ``unsafe_pickle`` findings, the
``safe_globals=`` allow-list, a malicious pickle, legacy and CUDA-tagged torch files."""

from __future__ import annotations

import pytest
import torch

# imported here, before pytester's in-process runs, so that each run's -W filter and the
# plugin's warning refer to one class
from pytest_ckpt.errors import CheckpointFileWarning
from tests.conftest import lines

WRITE_FILES = '''
import argparse
import pathlib

import numpy as np
import torch
import torch.serialization
from torch import nn


class Payload:
    """Creates a file when unpickled."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.target),))


def write(directory):
    weights = nn.Linear(2, 2).state_dict()
    torch.save({"model": weights, "curr_ap": np.float64(0.5),
                "args": argparse.Namespace(lr=1e-3)}, directory / "train.pt")
    torch.save({"model": weights, "payload": Payload(directory / "pwned")},
               directory / "evil.pt")
    torch.save(weights, directory / "legacy.pt", _use_new_zipfile_serialization=False)
    tag = torch.serialization.location_tag
    torch.serialization.location_tag = lambda storage: "cuda:0"
    try:
        torch.save(weights, directory / "gpu.pt")
    finally:
        torch.serialization.location_tag = tag
'''


@pytest.fixture
def files(project):
    project.makepyfile(files=WRITE_FILES)
    project.makeconftest('''
        import pathlib
        import files

        def pytest_configure(config):
            files.write(pathlib.Path(config.rootpath))
    ''')
    return project


def test_refused_file_is_an_unsafe_pickle_finding_with_both_fixes(files, mode):
    files.makepyfile(test_f='''
        def test_schema(ckpt):
            ckpt.assert_schema("train.pt")
    ''')
    result = files.runpytest(*mode)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(lines(
        "checkpoint train.pt cannot be loaded with weights_only=True",
        "  [unsafe_pickle] 2 entries: torch.load(weights_only=True) refuses the globals these "
        "entries need; nothing from the file was executed",
        "      ['args']: argparse.Namespace",
        "      ['curr_ap']: numpy.*.multiarray.scalar",
        "      ['curr_ap']: numpy.dtype",
        "      ['curr_ap']: numpy.dtypes.Float64DType",
        "fix: store plain Python values there (float(x), dict(vars(args)), "
        "dataclasses.asdict(config)), or allow exactly these globals: safe_globals=["
        "argparse.Namespace, numpy.*.multiarray.scalar, numpy.dtype, "
        "numpy.dtypes.Float64DType] (torch.serialization.add_safe_globals in your own load "
        "path)",
    ))


@pytest.mark.skipif(not hasattr(torch.serialization, "add_safe_globals"),
                    reason="this torch has no weights_only allow-list")
def test_safe_globals_lets_exactly_those_globals_through(files):
    files.makepyfile(test_f='''
        import argparse

        import numpy as np

        SCALAR = type(np.float64(0)).__reduce__(np.float64(0))[0]
        NUMPY = [SCALAR, np.dtype, type(np.dtype("float64"))]

        def test_loads(ckpt):
            ckpt.assert_schema("train.pt", safe_globals=[*NUMPY, argparse.Namespace])

        def test_one_missing(ckpt):
            ckpt.assert_schema("train.pt", name="partial", safe_globals=NUMPY)
    ''')
    files.runpytest("--ckpt-snapshot-update", "-k", "loads").assert_outcomes(passed=1)
    result = files.runpytest()
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(lines(
        "      ['args']: argparse.Namespace",
        "fix: * safe_globals=[argparse.Namespace] *"))


def test_a_malicious_pickle_is_refused_and_runs_nothing(files, mode):
    files.makepyfile(test_f='''
        def test_manifest(ckpt):
            ckpt.assert_manifest("evil.pt")
    ''')
    result = files.runpytest(*mode)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(lines(
        "checkpoint evil.pt cannot be loaded with weights_only=True",
        "      ['payload']: pathlib.Path.touch",
        "fix: never allow pathlib.Path.touch, pathlib.PosixPath*: they run code or reach the "
        "system when unpickled, so this file may carry a payload; re-create the checkpoint "
        "from trusted code, saving tensors and plain values only",
    ))
    assert "safe_globals=[" not in result.stdout.str()  # no advice to allow the payload
    assert not (files.path / "pwned").exists()


@pytest.mark.parametrize(("name", "note"), [
    ("legacy.pt", "legacy (non-zip) torch file: it cannot be memory-mapped (torch.load(mmap=True) "
                  "needs the zip format), so every load reads it whole; re-save it with "
                  "torch.save for release"),
    ("gpu.pt", "storages tagged for cuda:0 (2): it loads on a CPU-only machine only through "
               "map_location='cpu'; save release artifacts from CPU tensors "
               "(model.cpu().state_dict())"),
])
def test_legacy_and_cuda_tagged_files_load_and_are_flagged(files, name, note):
    files.makepyfile(test_f=f'''
        def test_manifest(ckpt):
            ckpt.assert_manifest({name!r})
    ''')
    files.runpytest("--ckpt-snapshot-update", "-W", "ignore::UserWarning").assert_outcomes(
        passed=1)
    assert "weight float32 [2,2] tensor" in (
        files.path / "__snapshots__/test_f/test_manifest.manifest.txt").read_text()
    warning = f"{CheckpointFileWarning.__module__}.{CheckpointFileWarning.__name__}"
    result = files.runpytest("-W", f"default::{warning}")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(lines(
        f"*CheckpointFileWarning: checkpoint {name}: {note}"))
