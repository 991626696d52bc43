"""``import pytest_ckpt``, ``pytest --version`` and runs that use no ckpt feature never import
torch (checked in fresh processes, where nothing imported it before)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def _python(code: str, cwd: Path) -> str:
    """Run ``code`` in a fresh interpreter, outside this repository (no conftest.py applies)."""
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                               check=True, cwd=cwd)
    return completed.stdout.strip()


def test_importing_the_package_does_not_import_torch(tmp_path):
    assert _python("import sys, pytest_ckpt; print('torch' in sys.modules)", tmp_path) == "False"


@pytest.mark.parametrize("flags", [["--version"], ["--version", "--version"]])
def test_pytest_version_does_not_import_torch(tmp_path, flags):
    out = _python(
        "import sys, pytest\n"
        f"code = pytest.main({flags!r})\n"
        "print(int(code), 'torch' in sys.modules)", tmp_path)
    assert out.splitlines()[-1] == "0 False"


def test_plugin_listing_loads_the_plugin_but_not_torch(tmp_path):
    out = _python(
        "import sys, pytest\n"
        "code = pytest.main(['--version', '--version'])\n"
        "print(int(code), 'torch' in sys.modules, 'pytest_ckpt.plugin' in sys.modules)",
        tmp_path)
    assert out.splitlines()[-1] == "0 False True"  # the plugin loaded, torch did not


def test_a_run_without_ckpt_features_does_not_import_torch(pytester: pytest.Pytester):
    pytester.makepyfile(test_plain='''
        import sys

        def test_plain(snapshot):
            assert snapshot == 1

        def test_torch_is_not_imported():
            assert "torch" not in sys.modules
    ''')
    result = pytester.runpytest_subprocess("--snapshot-update", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
    assert "ckpt" in result.stdout.str()  # the plugin was loaded (listed in the header)


def test_public_names_load_on_first_use_and_match_all():
    import pytest_ckpt

    assert {name: getattr(pytest_ckpt, name).__name__ for name in pytest_ckpt.__all__} == {
        name: name for name in pytest_ckpt.__all__}
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        pytest_ckpt.nope  # noqa: B018
