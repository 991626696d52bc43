"""Shared helpers for pytester runs of real test files that use pytest-ckpt."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import textwrap
from pathlib import Path

import pytest
import torch


def _import_lazy_torch_modules() -> None:
    """pytester's in-process runs drop modules first imported inside them, and torch cannot
    import some twice (operator libraries register once). Building on the meta device and a
    torch.distributed.checkpoint round-trip import those lazily, so do both here, once."""
    import tempfile
    import warnings

    import torch.distributed.checkpoint as dcp

    steps = [
        lambda: torch.nn.utils.weight_norm(torch.nn.Linear(2, 2))(torch.zeros(1, 2)),
        lambda: torch.nn.utils.parametrizations.weight_norm(torch.nn.Linear(2, 2))(
            torch.zeros(1, 2)),
        lambda: torch.nn.utils.parametrizations.spectral_norm(torch.nn.Linear(2, 2)),
    ]
    for step in steps:  # some have no meta kernel on older torch (2.1): nothing to import then
        with torch.device("meta"), warnings.catch_warnings(), contextlib.suppress(Exception):
            warnings.simplefilter("ignore")
            step()
    with tempfile.TemporaryDirectory() as directory, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        state = {"w": torch.zeros(2)}
        if hasattr(dcp, "save"):
            dcp.save(state, checkpoint_id=directory)
            dcp.load(state, checkpoint_id=directory)


_import_lazy_torch_modules()

ROOT = Path(__file__).resolve().parent.parent

# A small model project as a user has it: a module with the model, tests beside it.
NETS = '''
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, hidden=8, head_name="head"):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(4, hidden), nn.ReLU(), nn.Linear(hidden, hidden))
        self.norm = nn.BatchNorm1d(hidden)
        setattr(self, head_name, nn.Linear(hidden, 2))
        self.head_name = head_name

    def forward(self, x):
        return getattr(self, self.head_name)(self.norm(self.encoder(x)))
'''


@pytest.fixture(autouse=True)
def _inner_runs_are_not_xdist_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    """pytester's in-process runs inherit this process's environment: under ``-n 2`` it says
    "xdist worker" to syrupy, which then prints no snapshot summary and keeps no account of
    unused snapshots, so the scenarios about them would pass without testing anything."""
    for name in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID"):
        monkeypatch.delenv(name, raising=False)


def _import_transformers_models() -> None:
    """transformers loads its model modules lazily; one first loaded inside a pytester run is
    dropped after it while its base classes stay, and the next build fails its isinstance
    checks. Load the ones the tests build here, once, where transformers is installed."""
    try:
        import transformers
    except ImportError:
        return
    for name in ("BertConfig", "BertModel", "BertForMaskedLM", "BertForSequenceClassification",
                 "GPT2Config", "GPT2LMHeadModel", "LlamaConfig", "LlamaForCausalLM",
                 "Wav2Vec2Config", "Wav2Vec2Model", "EncodecConfig", "EncodecModel"):
        getattr(transformers, name)


_import_transformers_models()


# CI's torch 2.1 lane sets PYTEST_CKPT_TEST_MODES=serial: the -n 2 variants test the plugin's
# xdist wiring, which the torch 2.13 lane covers; the 2.1 lane is for torch-version behaviour
MODES = os.environ.get("PYTEST_CKPT_TEST_MODES", "serial,xdist").split(",")


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> list[str]:
    """Run each pytester scenario twice: in one process and under ``-n 2``."""
    return [] if request.param == "serial" else ["-n", "2"]


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    """A pytester directory holding ``nets.py`` and a strict pytest configuration."""
    pytester.makepyfile(nets=NETS)
    pytester.makeini(textwrap.dedent("""
        [pytest]
        addopts = --strict-markers -p no:cacheprovider
        filterwarnings =
            error
            ignore:TypedStorage is deprecated:UserWarning
    """))
    return pytester


@pytest.fixture
def example_project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """A copy of ``example_models/`` (models, tests and snapshots) in a pytester directory.

    This process may have imported the repository's own ``example_models`` (when the outer
    run collected it); the in-process runs must import the copy instead.
    """
    for name in [name for name in sys.modules if name.split(".")[0] == "example_models"]:
        monkeypatch.delitem(sys.modules, name)
    shutil.copytree(ROOT / "example_models", pytester.path / "example_models",
                    ignore=shutil.ignore_patterns("__pycache__"))
    pytester.makeini("[pytest]\naddopts = --strict-markers -p no:cacheprovider\n"
                     "filterwarnings =\n    error\n"
                     "    ignore:TypedStorage is deprecated:UserWarning\n")
    return pytester


def snapshot_files(root: Path) -> dict[str, str]:
    """Every manifest snapshot under ``root``: relative path -> text."""
    return {str(path.relative_to(root)): path.read_text()
            for path in sorted(root.rglob("*.manifest.txt"))}


def lines(*patterns: str) -> list[str]:
    """fnmatch patterns in which ``[`` is literal (finding labels look like ``[missing]``)."""
    return [pattern.replace("[", "[[]") for pattern in patterns]
