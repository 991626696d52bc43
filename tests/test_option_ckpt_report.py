"""``--ckpt-report=PATH``: one JSON file per run (merged from xdist workers), rendered by
``pytest-ckpt matrix``."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

TORCH = metadata.version("torch")  # what the report records (torch itself is not imported)

REPORTED = '''
import pytest
import torch
from torch import nn
from nets import Net


@pytest.mark.ckpt_roundtrip(formats=("torch", "safetensors"), snapshot=False)
def test_roundtrip():
    return Net()


def test_manifest(ckpt):
    ckpt.assert_manifest(Net(head_name=HEAD))


@pytest.mark.ckpt_strict_loads
def test_silent_load():
    Net().load_state_dict({"head.weight": torch.zeros(2, 8)}, strict=False)


def test_without_ckpt():
    assert True
'''


def _write(project, head="head"):
    project.makepyfile(test_r=REPORTED.replace("HEAD", repr(head)))


def test_report_holds_every_check_with_outcome_and_findings(project, mode):
    _write(project)
    project.runpytest("--ckpt-snapshot-update", "-k", "manifest").assert_outcomes(passed=1)
    _write(project, head="classifier")
    project.runpytest("--ckpt-report=out/report.json", *mode).assert_outcomes(passed=2, failed=2)
    report = json.loads((project.path / "out/report.json").read_text())
    assert report["schema"] == "pytest-ckpt report v1"
    assert report["environment"]["torch"] == TORCH
    checks = {(check["test"], check["check"]): check for check in report["checks"]}
    assert sorted(checks) == [
        ("test_r.py::test_manifest", "manifest"),
        ("test_r.py::test_roundtrip", "roundtrip[safetensors]"),
        ("test_r.py::test_roundtrip", "roundtrip[torch]"),
        ("test_r.py::test_silent_load", "strict_loads"),
    ]
    manifest = checks[("test_r.py::test_manifest", "manifest")]
    assert manifest["outcome"] == "failed"
    assert [finding["kind"] for finding in manifest["findings"]] == ["rename"]
    assert manifest["findings"][0]["keys"] == ["head.bias", "head.weight"]
    assert checks[("test_r.py::test_roundtrip", "roundtrip[torch]")]["outcome"] == "passed"
    silent = checks[("test_r.py::test_silent_load", "strict_loads")]
    assert silent["outcome"] == "failed"
    assert {finding["kind"] for finding in silent["findings"]} == {"missing_component",
                                                               "not_loaded"}


def test_no_report_file_without_the_option(project):
    _write(project)
    project.runpytest("-k", "roundtrip").assert_outcomes(passed=1)
    assert not list(project.path.rglob("*.json"))


def test_matrix_renders_reports_of_two_environments(project, tmp_path):
    _write(project)
    project.runpytest("--ckpt-snapshot-update", "-k", "manifest").assert_outcomes(passed=1)
    project.runpytest("--ckpt-report=a.json", "-k", "not silent").assert_outcomes(passed=3)
    _write(project, head="classifier")
    project.runpytest("--ckpt-report=b.json", "-k", "not silent").assert_outcomes(
        passed=2, failed=1)
    other = json.loads((project.path / "b.json").read_text())
    other["environment"]["torch"] = "1.99.0"  # as if written by another lane of the matrix
    (project.path / "b.json").write_text(json.dumps(other))

    command = shutil.which("pytest-ckpt", path=str(Path(sys.executable).parent))
    assert command is not None
    result = subprocess.run([command, "matrix", "a.json", "b.json"], capture_output=True,
                            text=True, cwd=project.path)
    assert result.returncode == 1, result.stderr
    python = ".".join(map(str, sys.version_info[:3]))
    where = other["environment"]["platform"]  # the platform the report recorded
    assert result.stdout.splitlines() == [
        "## Checkpoint compatibility",
        "",
        "5 of 6 checks passed across 2 environment(s).",
        "",
        f"| test | check | torch {TORCH} · py{python} · {where} "
        f"| torch 1.99.0 · py{python} · {where} |",
        "| --- | --- | --- | --- |",
        "| `test_r.py::test_manifest` | manifest | ✅ | ❌ `rename` |",
        "| `test_r.py::test_roundtrip` | roundtrip[safetensors] | ✅ | ✅ |",
        "| `test_r.py::test_roundtrip` | roundtrip[torch] | ✅ | ✅ |",
    ]
    bad = subprocess.run([command, "matrix", "missing.json"], capture_output=True, text=True,
                         cwd=project.path)
    assert bad.returncode == 2
    assert bad.stderr.strip() == ("pytest-ckpt: report missing.json cannot be read: "
                                  "No such file or directory")



CAUGHT = '''
import pytest
from nets import Net


def test_manifest(ckpt):
    with pytest.raises(pytest.fail.Exception, match="rename"):
        ckpt.assert_manifest(Net(head_name="classifier"))
'''


def test_a_failure_a_passing_test_caught_does_not_turn_the_matrix_red(project, mode):
    _write(project)
    project.runpytest("--ckpt-snapshot-update", "-k", "manifest").assert_outcomes(passed=1)
    project.makepyfile(test_r=CAUGHT)
    project.runpytest("--ckpt-report=c.json", *mode).assert_outcomes(passed=1)
    command = shutil.which("pytest-ckpt", path=str(Path(sys.executable).parent))
    assert command is not None
    result = subprocess.run([command, "matrix", "c.json"], capture_output=True, text=True,
                            cwd=project.path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1] == (
        "| `test_r.py::test_manifest` | manifest | ☑️ caught `rename` |")
