"""``--ckpt-snapshot-update`` writes this plugin's snapshots only; syrupy's flag still works."""

from __future__ import annotations

from tests.conftest import snapshot_files

TESTS = '''
from nets import Net

def test_keys(ckpt):
    ckpt.assert_manifest(Net(hidden=HIDDEN))

def test_other_keys(ckpt):
    ckpt.assert_manifest(Net(hidden=3))

def test_user_snapshot(snapshot):
    assert snapshot == {"answer": ANSWER}
'''


def _write(project, hidden: int = 8, answer: int = 42) -> None:
    project.makepyfile(test_a=TESTS.replace("HIDDEN", str(hidden)).replace("ANSWER", str(answer)))


def _amber(project) -> str:
    return (project.path / "__snapshots__" / "test_a.ambr").read_text()


def test_ckpt_update_leaves_the_users_syrupy_snapshots_alone(project, mode):
    _write(project)
    project.runpytest("--snapshot-update", *mode).assert_outcomes(passed=3)
    amber = _amber(project)
    _write(project, hidden=5, answer=43)

    result = project.runpytest("--ckpt-snapshot-update", *mode)
    result.assert_outcomes(passed=2, failed=1)  # the user's own snapshot still fails
    assert _amber(project) == amber
    assert "[5]" in snapshot_files(project.path)["__snapshots__/test_a/test_keys.manifest.txt"]


def test_syrupys_own_update_flag_updates_manifest_snapshots_too(project, mode):
    _write(project)
    project.runpytest("--snapshot-update", *mode).assert_outcomes(passed=3)
    _write(project, hidden=5, answer=43)
    project.runpytest(*mode).assert_outcomes(failed=2, passed=1)
    project.runpytest("--snapshot-update", *mode).assert_outcomes(passed=3)
    assert "43" in _amber(project)
    assert "[5]" in snapshot_files(project.path)["__snapshots__/test_a/test_keys.manifest.txt"]
    project.runpytest(*mode).assert_outcomes(passed=3)


def test_narrowed_update_runs_never_delete_other_tests_snapshots(project, mode):
    _write(project)
    project.runpytest("--snapshot-update", *mode).assert_outcomes(passed=3)
    before = snapshot_files(project.path)
    assert len(before) == 2
    for narrowing in (["-k", "test_keys"], ["test_a.py::test_other_keys"]):
        for flag in ("--ckpt-snapshot-update", "--snapshot-update"):
            project.runpytest(flag, *narrowing, *mode).assert_outcomes(passed=1)
            assert snapshot_files(project.path) == before
    project.runpytest(*mode).assert_outcomes(passed=3)


def test_update_creates_snapshots_for_many_tests_under_xdist(project):
    project.makepyfile(test_many='''
        import pytest
        from nets import Net

        @pytest.mark.parametrize("hidden", range(1, 13))
        def test_keys(ckpt, hidden):
            ckpt.assert_manifest(Net(hidden=hidden))
    ''')
    project.runpytest("--ckpt-snapshot-update", "-n", "2").assert_outcomes(passed=12)
    stored = snapshot_files(project.path)
    assert len(stored) == 12
    assert all(f"[{hidden},4] param" in stored[f"__snapshots__/test_many/test_keys[{hidden}]"
                                                ".manifest.txt"] for hidden in range(1, 13))
    assert not list(project.path.rglob("*.tmp"))  # no half-written temporary file is left
    project.runpytest("-n", "2").assert_outcomes(passed=12)
