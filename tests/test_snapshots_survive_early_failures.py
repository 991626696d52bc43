"""A test that fails before it compares its snapshot keeps that snapshot: syrupy must not
call it unused, nor delete it when ``--snapshot-update`` is run as its summary advises."""

from __future__ import annotations

import pytest

TESTS = '''
import os

import pytest
from nets import Net

BROKEN = os.environ.get("BROKEN") == "1"

def load(model, state):
    if BROKEN:
        raise RuntimeError("the loader broke")
    model.load_state_dict(state)

@pytest.mark.ckpt_roundtrip(load=load)
def test_marked():
    return Net()

def test_fixture(ckpt):
    ckpt.roundtrip(Net(), load=load)

def test_fixture_named_and_schema(ckpt, tmp_path):
    import torch
    torch.save({"model": Net().state_dict(), "epoch": 1}, tmp_path / "last.pt")
    ckpt.assert_schema(tmp_path / "last.pt")
    ckpt.assert_manifest(Net(), name="encoder")
    ckpt.roundtrip(Net(), load=load)
'''


def _snapshots(project: pytest.Pytester) -> list[str]:
    return sorted(str(path.relative_to(project.path))
                  for path in project.path.rglob("__snapshots__/**/*.txt"))


@pytest.mark.parametrize("update", ["--snapshot-update", "--ckpt-snapshot-update"])
def test_snapshots_of_tests_that_fail_before_comparing_are_kept_by_an_update(
        project, mode, update, monkeypatch):
    project.makepyfile(test_a=TESTS)
    project.runpytest("--ckpt-snapshot-update").assert_outcomes(passed=3)
    written = _snapshots(project)
    assert len(written) == 5  # marked, fixture, fixture_named_and_schema x3

    monkeypatch.setenv("BROKEN", "1")
    result = project.runpytest(*mode, update)
    result.assert_outcomes(failed=3)
    assert _snapshots(project) == written
    assert "deleted" not in result.stdout.str()


def test_a_test_that_fails_before_comparing_does_not_report_its_snapshot_unused(
        project, mode, monkeypatch):
    project.makepyfile(test_a=TESTS)
    project.runpytest("--ckpt-snapshot-update").assert_outcomes(passed=3)
    monkeypatch.setenv("BROKEN", "1")
    result = project.runpytest(*mode)
    result.assert_outcomes(failed=3)
    output = result.stdout.str()
    assert " unused" not in output
    assert "to delete unused snapshots" not in output
    result.stdout.fnmatch_lines(["3 snapshots failed. 2 snapshots passed."])
    assert "the loader broke" in output


def test_a_snapshot_a_passing_test_no_longer_compares_is_still_reported_unused(project):
    project.makepyfile(test_a=TESTS)
    project.runpytest("--ckpt-snapshot-update").assert_outcomes(passed=3)
    project.makepyfile(test_a=TESTS.replace('    ckpt.assert_schema(tmp_path / "last.pt")\n',
                                            ""))
    result = project.runpytest()
    result.stdout.fnmatch_lines(["*1 snapshot unused*"])
