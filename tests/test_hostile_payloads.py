"""Crafted pickles through every entry point: nothing a file carries is ever executed.

Every payload kind of ``tests/hostile/payloads.py`` (each proven live below: an unsafe
unpickler in a subprocess creates its canary) is put in every container (torch zip, legacy
file, bare pickle, DCP ``.metadata``; DCP data slices; goldens with an honest and a forged
sidecar; a model's extra state for round-trips) and handed to every entry point (``show``,
``diff``, ``assert_manifest``, ``assert_loads``, ``assert_schema``, ``assert_resumes``,
``golden``, ``roundtrip``). Each must answer with one paragraph naming the file, and no canary
may appear, nor may ``tests.hostile.evil_module`` be imported.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from pytest_ckpt import cli
from pytest_ckpt.record.goldens import torch_minor
from tests.conftest import lines
from tests.hostile.payloads import (
    DCP_CANARY_WRITERS,
    EVIL_MODULE_KINDS,
    PAYLOAD_KINDS,
    canary_path,
    dcp_load_detonates,
    detonates,
    evil_module_imported,
    golden_with_payload,
    model_with_payload_extra_state,
    torch_load_detonates,
    torch_zip_with_payload,
)
from tests.hostile.payloads import (
    ENTRY_CONTAINERS as CONTAINERS,
)

KINDS = sorted(PAYLOAD_KINDS)
CURRENT = f"torch-{torch_minor()}"  # the golden an update of this torch writes
FILE_CONTAINERS = ("torch_zip", "legacy", "bare_pickle", "dcp_metadata")
ENTRY_POINTS = ("show", "diff", "assert_manifest", "assert_loads", "assert_schema",
                "assert_resumes")


class _CopyingTrainer:
    """A training harness whose save copies the hostile file (or directory) into place and
    whose resume raises: assert_resumes then reads the checkpoint for its hints."""

    def __init__(self, source: Path) -> None:
        self.source = source

    def build(self) -> torch.nn.Module:
        return torch.nn.Linear(2, 2)

    def step(self, model: torch.nn.Module) -> torch.Tensor:
        return model(torch.ones(1, 2)).sum()

    def save(self, model: torch.nn.Module, path: Path) -> None:
        if self.source.is_dir():
            shutil.copytree(self.source, path)
        else:
            shutil.copyfile(self.source, path)

    def resume(self, path: Path) -> Any:
        raise KeyError("global_step")


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert code == cli.EXIT_USAGE, err
    return err


def _fixture(call: Callable[[], Any]) -> str:
    with pytest.raises(pytest.fail.Exception) as failed:
        call()
    return str(failed.value)


def enter(entry: str, ckpt: Any, path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """Hand ``path`` to one entry point; the message a user reads."""
    if entry == "show":
        return _cli(["show", str(path)], capsys)
    if entry == "diff":
        return _cli(["diff", str(path), "torch.nn:Identity"], capsys)
    if entry == "assert_manifest":
        return _fixture(lambda: ckpt.assert_manifest(path))
    if entry == "assert_loads":
        return _fixture(lambda: ckpt.assert_loads(torch.nn.Linear(2, 2), path))
    if entry == "assert_schema":
        return _fixture(lambda: ckpt.assert_schema(path))
    return _fixture(lambda: ckpt.assert_resumes(_CopyingTrainer(path), steps=2, at=1))


def assert_one_paragraph(message: str, names: Path | str) -> None:
    assert message.strip(), "no message"
    assert "\n\n" not in message.strip(), message
    assert "Traceback" not in message and "weights_only=False" not in message, message
    assert str(names) in message, message


@pytest.fixture
def canaries(tmp_path: Path) -> Path:
    """Where payloads would create their canaries; empty, and the evil module not imported,
    when the test ends."""
    directory = tmp_path / "canaries"
    directory.mkdir()
    assert not evil_module_imported()
    yield directory
    assert sorted(path.name for path in directory.iterdir()) == []
    assert not evil_module_imported()


@pytest.mark.parametrize("kind", KINDS)
def test_every_payload_kind_is_live(kind, tmp_path):
    """The table's payloads really run under an unsafe unpickler: what the other tests show
    not running would run."""
    assert detonates(kind, tmp_path)


@pytest.mark.parametrize("container", ["torch_zip", "legacy"])
def test_a_payload_in_each_torch_container_runs_under_an_unsafe_torch_load(container,
                                                                           tmp_path):
    canary = canary_path(tmp_path, container)
    path = CONTAINERS[container](tmp_path, PAYLOAD_KINDS["reduce_os_system"](str(canary)))
    assert torch_load_detonates(path, canary)[0]


@pytest.mark.parametrize("writer", ["dcp_bytes_entry", "dcp_bytes_entry_disguised_as_tensor"])
def test_dcp_directories_with_payload_data_run_under_dcp_s_own_load(writer, tmp_path):
    canary = canary_path(tmp_path, writer)
    directory = DCP_CANARY_WRITERS[writer](tmp_path, str(canary))
    assert dcp_load_detonates(directory, canary)[0]


@pytest.mark.parametrize("container", FILE_CONTAINERS)
@pytest.mark.parametrize("kind", KINDS)
def test_no_entry_point_runs_a_payload(kind, container, ckpt, canaries, capsys):
    canary = canary_path(canaries, f"{kind}-{container}")
    path = CONTAINERS[container](canaries.parent, PAYLOAD_KINDS[kind](str(canary)))
    for entry in ENTRY_POINTS:
        message = enter(entry, ckpt, path, capsys)
        assert_one_paragraph(message, path if entry != "assert_resumes" else "resume.ckpt")
        assert not canary.exists(), f"{entry} ran the payload"


@pytest.mark.parametrize("writer", sorted(DCP_CANARY_WRITERS))
def test_no_entry_point_runs_a_payload_in_dcp_data(writer, ckpt, canaries, capsys,
                                                   monkeypatch):
    """With clean metadata, show and diff read only ``.metadata`` (and may succeed; so would
    assert_manifest, which is left out so that an update run writes no snapshot for it); the
    entry points that read data must refuse the slice that holds the payload."""
    canary = canary_path(canaries, writer)
    directory = DCP_CANARY_WRITERS[writer](canaries.parent, str(canary))
    monkeypatch.setattr(cli, "EXIT_USAGE", None)  # any exit: only what runs matters here
    clean = writer != "dcp_bytes_entry_disguised_as_tensor"
    for entry in [e for e in ENTRY_POINTS if not (clean and e == "assert_manifest")]:
        try:
            message = enter(entry, ckpt, directory, capsys)
        except AssertionError as outcome:  # an exit status, or a check that passed
            message = str(outcome)
        assert not canary.exists(), f"{entry} ran the payload"
        if entry in ("assert_loads", "assert_schema"):
            assert_one_paragraph(message, directory)


def test_a_bytes_entry_disguised_as_a_tensor_is_refused_by_name(ckpt, canaries, capsys):
    canary = canary_path(canaries, "disguised")
    directory = DCP_CANARY_WRITERS["dcp_bytes_entry_disguised_as_tensor"](canaries.parent,
                                                                           str(canary))
    message = enter("assert_loads", ckpt, directory, capsys)
    assert message.splitlines()[0] == (
        f"checkpoint {directory}/.metadata is malformed: entry 'step' (BytesStorageMetadata) "
        "has unexpected attributes chunks, properties, size; refused, nothing was read from "
        "the directory")


def test_a_payload_in_a_dcp_value_is_an_unsafe_pickle_finding_naming_the_key(ckpt, canaries,
                                                                           capsys):
    canary = canary_path(canaries, "value")
    directory = DCP_CANARY_WRITERS["dcp_bytes_entry"](canaries.parent, str(canary))
    message = enter("assert_schema", ckpt, directory, capsys)
    assert message.splitlines()[:2] == [
        f"checkpoint {directory} cannot be loaded with weights_only=True",
        "  [unsafe_pickle] 1 entry: torch.load(weights_only=True) refuses the globals these "
        "entries need; nothing from the file was executed"]
    assert "      ['step']: os.system" in message.splitlines()


@pytest.mark.parametrize("fmt", ["torch", "dcp"])
def test_a_round_trip_of_a_model_whose_extra_state_is_a_payload_runs_nothing(fmt, ckpt,
                                                                            canaries):
    canary = canary_path(canaries, "extra-state")
    model = model_with_payload_extra_state(str(canary))
    message = _fixture(lambda: ckpt.roundtrip(model, formats=(fmt,), snapshot=False))
    assert not canary.exists()
    if fmt == "torch":
        assert "[unsafe_pickle]" in message and "nothing from the file was executed" in message


GOLDEN_TEST = '''
import pytest
import torch

KINDS = {kinds!r}


@pytest.mark.parametrize("sidecar", ["honest", "forged"])
@pytest.mark.parametrize("kind", KINDS)
def test_golden(ckpt, kind, sidecar):
    torch.manual_seed(0)
    ckpt.golden(torch.nn.Linear(2, 2))
'''

GOLDEN_CONFTEST = '''
import json, sys

def pytest_sessionfinish(session):
    imported = "tests.hostile.evil_module" in sys.modules
    with open("imported.json", "w") as stream:
        json.dump(imported, stream)
'''


def test_goldens_carrying_payloads_run_nothing(project, tmp_path):
    """Every payload as a golden whose sidecar matches it (an attacker who edits both in a
    pull request) and as one whose sidecar is the honest file's; update runs included."""
    canaries = tmp_path / "canaries"
    canaries.mkdir()
    for kind in KINDS:
        for sidecar in ("honest", "forged"):
            golden_with_payload(project.path / "__goldens__" / "test_g" /
                                f"test_golden[{kind}-{sidecar}]",
                                PAYLOAD_KINDS[kind](str(canary_path(canaries, kind))),
                                forge_sidecar=sidecar == "forged", test="test_g.py",
                                label=CURRENT)
    project.makepyfile(test_g=GOLDEN_TEST.format(kinds=KINDS))
    project.makeconftest(GOLDEN_CONFTEST)
    for options in ((), ("--ckpt-snapshot-update",)):
        result = project.runpytest_subprocess(*options, "--ckpt-report=r.json")
        result.assert_outcomes(failed=2 * len(KINDS) if not options else 0,
                               passed=2 * len(KINDS) if options else 0)
        assert sorted(path.name for path in canaries.iterdir()) == []
        assert json.loads((project.path / "imported.json").read_text()) is False
        if not options:
            checks = json.loads((project.path / "r.json").read_text())["checks"]
            assert {check["outcome"] for check in checks} == {"failed"}
    first = "test_golden[reduce_os_system-honest]"
    assert (project.path / "__goldens__" / "test_g" / first / f"{CURRENT}.pt").is_file()


def test_a_golden_with_a_payload_fails_with_its_unsafe_pickle_finding(project, tmp_path):
    canary = canary_path(tmp_path, "golden")
    golden = golden_with_payload(project.path / "__goldens__" / "test_g" / "test_golden",
                                 PAYLOAD_KINDS["reduce_os_system"](str(canary)),
                                 forge_sidecar=False, label=CURRENT)
    project.makepyfile(test_g='''
        import torch

        def test_golden(ckpt):
            ckpt.golden(torch.nn.Linear(2, 2))
    ''')
    result = project.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(lines(
        f"golden checkpoint {CURRENT} (__goldens__/test_g/test_golden/{CURRENT}.pt) cannot "
        f"be read: checkpoint {golden} was refused by torch.load(weights_only=True); nothing "
        "from it was executed. *",
        "  [unsafe_pickle] 1 entry: *",
        "      ['x']: os.system",
        f"fix: restore {CURRENT}.pt and {CURRENT}.json from version control, or rewrite both "
        f"under {CURRENT.replace('-', ' ')} with: pytest --ckpt-snapshot-update "
        "'test_g.py::test_golden'"))
    assert not canary.exists()


def test_the_evil_module_kinds_name_the_module_without_importing_it(ckpt, canaries, capsys):
    """The kinds whose global is the hostile module: refusing them imports nothing."""
    for kind in sorted(EVIL_MODULE_KINDS):
        path = torch_zip_with_payload(canaries.parent, PAYLOAD_KINDS[kind](
            str(canary_path(canaries, kind))), name=f"{kind}.pt")
        message = enter("assert_loads", ckpt, path, capsys)
        assert "tests.hostile.evil_module" in message
