"""The --ckpt-report file and the matrix table (pure)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_ckpt.diagnosis.findings import Finding
from pytest_ckpt.record.report import (
    REPORT_SCHEMA,
    ReportError,
    build_report,
    check_entry,
    failed_checks,
    read_report,
    render_matrix,
)


def _report(torch_version: str, *entries: tuple[str, dict]) -> dict:
    report = build_report(list(entries))
    report["environment"]["torch"] = torch_version
    return report


def test_a_failing_cell_lists_its_finding_kinds_and_a_missing_check_is_a_dash():
    rename = Finding("rename", ("head.weight",), "renamed")
    value = Finding("value", ("head.bias",), "differs")
    new = _report("2.13.0", ("t.py::test_a", check_entry("golden[torch-2.1]", [rename, value])),
                  ("t.py::test_a", check_entry("manifest")))
    old = _report("2.1.2", ("t.py::test_a", check_entry("golden[torch-2.1]")))
    table = render_matrix([old, new]).splitlines()
    assert table[2] == "2 of 3 checks passed across 2 environment(s)."
    assert table[4].startswith("| test | check | torch 2.1.2 · py")
    assert table[6] == "| `t.py::test_a` | golden[torch-2.1] | ✅ | ❌ `rename`, `value` |"
    assert table[7] == "| `t.py::test_a` | manifest | — | ✅ |"


def test_an_error_without_findings_is_shown_as_error_and_pipes_are_escaped():
    report = _report("2.13.0", ("t.py::test[a|b]", check_entry("roundtrip[torch]", [], "boom")))
    assert render_matrix([report]).splitlines()[-1] == (
        "| `t.py::test[a\\|b]` | roundtrip[torch] | ❌ `error` |")


names = st.text(alphabet="abcdefgh_[]:.", min_size=1, max_size=12)


@given(st.lists(st.tuples(names, names, st.booleans()), max_size=20))
def test_the_matrix_has_one_row_per_distinct_check_and_counts_failures(checks):
    entries = [(test, check_entry(check, [Finding("value", (), "x")] if bad else []))
               for test, check, bad in checks]
    table = render_matrix([_report("2.13.0", *entries)]).splitlines()
    distinct = {(test, check) for test, check, _ in checks}
    assert len(table) == 6 + len(distinct)
    worst = {key: any(bad for t, c, bad in checks if (t, c) == key) for key in distinct}
    passed = sum(1 for bad in worst.values() if not bad)
    assert table[2] == f"{passed} of {len(distinct)} checks passed across 1 environment(s)."


def test_a_report_records_versions_without_importing_torch_and_round_trips(tmp_path):
    report = build_report([("t.py::a", check_entry("manifest"))])
    assert report["schema"] == REPORT_SCHEMA
    assert set(report["environment"]) >= {"torch", "python", "platform", "pytest_ckpt"}
    path = tmp_path / "r.json"
    path.write_text(json.dumps(report))
    assert read_report(path) == report


@pytest.mark.parametrize(("text", "why"), [("{", "is not JSON"),
                                           ('{"schema": "other"}', "is not a pytest-ckpt report")])
def test_an_unreadable_report_is_named(tmp_path, text, why):
    path = tmp_path / "r.json"
    path.write_text(text)
    with pytest.raises(ReportError, match=f"report {path} {why}"):
        read_report(path)


def test_a_check_its_test_expected_to_fail_is_not_red(tmp_path):
    rename = Finding("rename", ("head.weight",), "renamed")
    failed = check_entry("manifest", [rename])
    report = _report("2.13.0",
                     ("t.py::test_caught", {**failed, "test_outcome": "passed"}),
                     ("t.py::test_xfail", {**failed, "test_outcome": "xfailed"}),
                     ("t.py::test_red", {**failed, "test_outcome": "failed"}))
    table = render_matrix([report]).splitlines()
    assert table[2] == ("0 of 3 checks passed across 1 environment(s); 2 failed as their tests "
                        "expected (xfail, or caught by a passing test).")
    assert table[6:] == ["| `t.py::test_caught` | manifest | ☑️ caught `rename` |",
                         "| `t.py::test_red` | manifest | ❌ `rename` |",
                         "| `t.py::test_xfail` | manifest | ☑️ xfail `rename` |"]
    assert failed_checks(report) == 1
    report["checks"] = [c for c in report["checks"] if c["test_outcome"] != "failed"]
    assert failed_checks(report) == 0


def _environment(report: dict, **values: str) -> dict:
    report["environment"].update(values)
    return report


def test_matrix_columns_of_environments_sharing_torch_and_python_name_the_platform():
    linux = _environment(_report("2.13.0", ("t.py::a", check_entry("manifest"))),
                         python="3.11.9", platform="Linux-x86_64")
    mac = _environment(_report("2.13.0", ("t.py::a", check_entry("manifest"))),
                       python="3.11.9", platform="Darwin-arm64")
    assert render_matrix([linux, mac]).splitlines()[4] == (
        "| test | check | torch 2.13.0 · py3.11.9 · Linux-x86_64 "
        "| torch 2.13.0 · py3.11.9 · Darwin-arm64 |")


def test_matrix_columns_of_identical_environments_name_their_report_files():
    same = [_environment(_report("2.13.0", ("t.py::a", check_entry("manifest"))),
                         python="3.11.9", platform="Linux-x86_64") for _ in range(3)]
    header = render_matrix(same, ["ci/cuda.json", "ci/cpu.json", "other.json"]).splitlines()[4]
    label = "torch 2.13.0 · py3.11.9 · Linux-x86_64"
    assert header == (f"| test | check | {label} · cuda.json | {label} · cpu.json "
                      f"| {label} · other.json |")


def test_matrix_columns_with_the_same_file_name_name_the_paths_and_only_where_needed():
    reports = [_environment(_report("2.13.0", ("t.py::a", check_entry("manifest"))),
                            python="3.11.9", platform="Linux-x86_64") for _ in range(3)]
    reports[2]["environment"]["torch"] = "2.1.2"
    names = ["lane-a/report.json", "lane|b/report.json", "lane-c/report.json"]
    label = "torch 2.13.0 · py3.11.9 · Linux-x86_64"
    assert render_matrix(reports, names).splitlines()[4] == (
        f"| test | check | {label} · lane-a/report.json | {label} · lane\\|b/report.json "
        "| torch 2.1.2 · py3.11.9 · Linux-x86_64 |")
