"""Snapshots and goldens stay whole: a kill between a golden's two files is repaired by the
next update, killed writers' temporary files are swept, a write that fails says so (path and
OS error), two names that sanitise to one file collide loudly, and the strict-load guard puts
back exactly what was there."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from pathlib import Path

import pytest

from pytest_ckpt.record.goldens import torch_minor

CURRENT = f"torch-{torch_minor()}"
GOLDENS = Path("__goldens__/test_a/test_golden")

GOLDEN_TEST = '''
import torch
from nets import Net

def test_golden(ckpt):
    torch.manual_seed(0)
    ckpt.golden(Net().eval(), inputs=lambda: torch.randn(3, 4))
'''

# Kill the update run the way a CI timeout or Ctrl-C would, at one point of the writing.
KILLING_CONFTEST = '''
import os

import pytest_ckpt.record.goldens
import pytest_ckpt.record.snapshots

WHERE = os.environ.get("CKPT_TEST_KILL")
real_write = pytest_ckpt.record.snapshots.atomic_write_bytes


def dying_write(path, data):
    if WHERE == "between" and path.suffix == ".json":
        os._exit(3)  # the golden's .pt is written, its sidecar is not
    return real_write(path, data)


pytest_ckpt.record.goldens.atomic_write_bytes = dying_write
if WHERE == "temporary":
    os.fsync = lambda descriptor: os._exit(3)  # mid-write: the temporary file stays behind
'''


def _update_killed(project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch,
                   where: str) -> None:
    monkeypatch.setenv("CKPT_TEST_KILL", where)
    result = project.runpytest_subprocess("--ckpt-snapshot-update")
    assert result.ret == 3
    monkeypatch.delenv("CKPT_TEST_KILL")


@pytest.fixture
def golden_project(project: pytest.Pytester) -> pytest.Pytester:
    project.makepyfile(test_a=GOLDEN_TEST)
    project.makeconftest(KILLING_CONFTEST)
    return project


def test_a_golden_pair_torn_by_a_killed_update_is_repaired_by_the_next(golden_project,
                                                                      monkeypatch):
    project = golden_project
    project.runpytest_subprocess("--ckpt-snapshot-update").assert_outcomes(passed=1)
    sidecar = project.path / GOLDENS / f"{CURRENT}.json"
    old_sidecar = sidecar.read_text()
    project.makepyfile(test_a=GOLDEN_TEST.replace("Net()", "Net(hidden=6)"))
    _update_killed(project, monkeypatch, "between")
    assert sidecar.read_text() == old_sidecar  # the new .pt beside the old sidecar

    result = project.runpytest_subprocess()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([f"*{CURRENT}.pt does not match the sha256 in {CURRENT}.json: "
                                 "it changed after it was written (or an update was "
                                 "interrupted between the two files)"])
    project.runpytest_subprocess("--ckpt-snapshot-update").assert_outcomes(passed=1)
    assert sidecar.read_text() != old_sidecar
    project.runpytest_subprocess().assert_outcomes(passed=1)


def test_temporary_files_of_a_killed_update_are_swept_by_the_next(golden_project,
                                                                  monkeypatch):
    project = golden_project
    _update_killed(project, monkeypatch, "temporary")
    leftovers = sorted((project.path / GOLDENS).glob(".*.tmp"))
    assert len(leftovers) == 1
    project.runpytest_subprocess("--ckpt-snapshot-update").assert_outcomes(passed=1)
    assert sorted((project.path / GOLDENS).glob(".*.tmp")) == []
    assert sorted(path.name for path in (project.path / GOLDENS).iterdir()) == [
        f"{CURRENT}.json", f"{CURRENT}.pt"]


@contextlib.contextmanager
def read_only(folder: Path):
    """``folder`` made unwritable for real: immutable (``chattr +i``, which binds root too),
    or mode 0555 for a user that is not root."""
    folder.mkdir(parents=True, exist_ok=True)
    chattr = shutil.which("chattr")
    immutable = chattr is not None and subprocess.run(
        [chattr, "+i", str(folder)], capture_output=True, check=False).returncode == 0
    if not immutable:
        import os

        if os.geteuid() == 0:
            pytest.skip("no way to make a folder read-only for root here (chattr +i failed)")
        folder.chmod(0o555)
    try:
        yield
    finally:
        if immutable:
            subprocess.run([chattr, "-i", str(folder)], check=True)
        else:
            folder.chmod(0o755)


def test_an_update_that_cannot_write_a_snapshot_says_so(project, mode):
    project.makepyfile(test_a='''
        from nets import Net

        def test_keys(ckpt):
            ckpt.assert_manifest(Net())
    ''')
    folder = project.path / "__snapshots__" / "test_a"
    with read_only(folder):
        result = project.runpytest("--ckpt-snapshot-update", *mode)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        f"could not write {folder}/test_keys.manifest.txt: Operation not permitted "
        "(PermissionError)",
        f"fix: make {folder} writable by the user running the tests, then run the update "
        "again"])
    assert "no manifest snapshot for this test yet" not in result.stdout.str()


def test_an_update_that_cannot_write_a_golden_says_so(golden_project):
    folder = golden_project.path / GOLDENS
    with read_only(folder):
        result = golden_project.runpytest("--ckpt-snapshot-update")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([f"could not write {folder}/{CURRENT}.pt: *"])


def test_a_name_as_long_as_the_file_system_allows_is_written_and_read(project, mode):
    project.makepyfile(test_a='''
        from nets import Net

        def test_keys(ckpt):
            ckpt.assert_manifest(Net(), name="k" * 300)
    ''')
    project.runpytest("--ckpt-snapshot-update", *mode).assert_outcomes(passed=1)
    project.runpytest(*mode).assert_outcomes(passed=1)
    written = list((project.path / "__snapshots__" / "test_a").iterdir())
    # 255 bytes less ".lock": syrupy's lock file beside it under xdist must fit too
    assert [len(path.name.encode()) for path in written] == [250]


def test_two_names_that_share_a_snapshot_file_collide(project, mode):
    project.makepyfile(test_a='''
        from nets import Net

        def test_keys(ckpt):
            ckpt.assert_manifest(Net(), name="x/y")
            ckpt.assert_manifest(Net(hidden=3), name="xy")
    ''')
    result = project.runpytest("--ckpt-snapshot-update", *mode)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "snapshot name collision in test_a.py::test_keys: name='x/y' and name='xy' would "
        "share __snapshots__/test_a/test_keys[[]xy].manifest.txt (a snapshot name keeps only "
        "letters, digits, '_', '-' and '.')",
        "fix: pass names that differ in those characters"])


def test_the_strict_load_guard_leaves_load_state_dict_as_it_found_it(project):
    project.makeconftest('''
        import torch

        ORIGINAL = torch.nn.Module.load_state_dict
    ''')
    project.makepyfile(test_a='''
        import torch
        import conftest

        def test_patches_load_state_dict(monkeypatch):
            def patched(self, state_dict, strict=True, assign=False):
                return conftest.ORIGINAL(self, state_dict, strict=strict, assign=assign)

            monkeypatch.setattr(torch.nn.Module, "load_state_dict", patched)
            torch.nn.Linear(2, 2).load_state_dict(torch.nn.Linear(2, 2).state_dict())

        import pytest

        @pytest.fixture
        def found():  # set up before the guard of this test is installed
            return torch.nn.Module.load_state_dict

        def test_finds_the_original(found):
            assert found is conftest.ORIGINAL
    ''')
    project.runpytest("--ckpt-strict-loads").assert_outcomes(passed=2)
