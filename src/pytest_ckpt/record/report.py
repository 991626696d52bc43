"""``--ckpt-report`` JSON and the ``pytest-ckpt matrix`` Markdown table (pure, no torch).

Checks record one entry each in the test item's ``user_properties`` (which pytest-xdist sends
from the workers to the controller with every report); the controller collects them from the
``call`` reports and writes one file at the end of the session.
"""

from __future__ import annotations

import json
import platform
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from pytest_ckpt.diagnosis.findings import Finding

PROPERTY = "pytest_ckpt"
REPORT_SCHEMA = "pytest-ckpt report v1"


def check_entry(check: str, findings: Iterable[Finding] = (), error: str | None = None,
                note: str | None = None) -> dict[str, Any]:
    """One check's result as stored in ``user_properties`` (JSON-ready, xdist-serialisable);
    the report adds the test's own outcome (``passed``, ``failed``, ``xfailed``...)."""
    found = [finding.to_json() for finding in findings]
    return {"check": check, "outcome": "failed" if found or error else "passed",
            "findings": found, "error": error, "note": note}


def environment() -> dict[str, str]:
    """Versions of this run, read from package metadata (torch is not imported)."""
    def version(package: str) -> str:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return "not installed"

    return {"torch": version("torch"), "python": platform.python_version(),
            "implementation": sys.implementation.name,
            "platform": f"{platform.system()}-{platform.machine()}",
            "pytest": version("pytest"), "pytest_ckpt": version("pytest-ckpt")}


def build_report(entries: Sequence[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """The report: the environment and each (test node id, check entry), in run order."""
    checks = [{"test": nodeid, **entry} for nodeid, entry in entries]
    checks.sort(key=lambda check: (check["test"], check["check"]))
    return {"schema": REPORT_SCHEMA, "environment": environment(), "checks": checks}


class ReportError(Exception):
    """A report file could not be read; the message names it."""


def read_report(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ReportError(f"report {path} cannot be read: {error.strerror}") from None
    except ValueError as error:
        raise ReportError(f"report {path} is not JSON ({error})") from None
    if not isinstance(data, dict) or data.get("schema") != REPORT_SCHEMA \
            or not isinstance(data.get("checks"), list):
        raise ReportError(f"report {path} is not a {REPORT_SCHEMA} file "
                          "(write one with pytest --ckpt-report=PATH)")
    return data


# -- the matrix ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Column:
    label: str
    cells: dict[tuple[str, str], str]  # (test, check) -> cell text


def column_label(environment: dict[str, Any]) -> str:
    return (f"torch {environment.get('torch', '?')} · py{environment.get('python', '?')} · "
            f"{environment.get('platform', '?')}")


def column_labels(environments: Sequence[dict[str, Any]], names: Sequence[str] = ()) -> list[str]:
    """One header per report; reports whose environments read the same also show their file
    name (their path as given, when the file names are the same too)."""
    labels = [column_label(environment) for environment in environments]
    shown = []
    for label, name in zip(labels, names or [""] * len(labels), strict=True):
        twins = [other for other, twin in zip(names, labels, strict=False) if twin == label]
        if len(twins) > 1:
            files = [Path(twin).name for twin in twins]
            label += f" · {Path(name).name if len(set(files)) == len(files) else name}"
        shown.append(label.replace("|", "\\|"))
    return shown


PASSED, XFAIL, CAUGHT = "✅", "☑️ xfail", "☑️ caught"


def _cell(check: dict[str, Any]) -> str:
    """A failed check is red unless its test said it would fail: marked xfail, or the test
    caught the failure (``pytest.raises``) and passed."""
    if check.get("outcome") == "passed":
        return PASSED
    kinds = list(dict.fromkeys(finding.get("kind", "?") for finding in check["findings"]))
    if check.get("error") and not kinds:
        kinds = ["error"]
    shown = ", ".join(f"`{kind}`" for kind in kinds)
    expected = {"xfailed": XFAIL, "passed": CAUGHT}.get(check.get("test_outcome", ""))
    return f"{expected} {shown}" if expected else f"❌ {shown}"


def _expected(cell: str) -> bool:
    return cell.startswith((XFAIL, CAUGHT))


def failed_checks(report: dict[str, Any]) -> int:
    """Checks that failed in a test that did not expect them to fail."""
    return sum(1 for check in report["checks"] if _cell(check).startswith("❌"))


def _natural(text: str) -> list[Any]:
    return [(0, int(part), "") if part.isdigit() else (1, 0, part)
            for part in re.split(r"(\d+)", text)]


def render_matrix(reports: Sequence[dict[str, Any]], names: Sequence[str] = ()) -> str:
    """Checks x environments, one Markdown table; failing cells list their finding kinds.
    ``names`` (the reports' paths) tell apart columns whose environments read the same."""
    columns = []
    labels = column_labels([report.get("environment", {}) for report in reports], names)
    for report, label in zip(reports, labels, strict=True):
        cells: dict[tuple[str, str], str] = {}
        for check in report["checks"]:
            key = (check["test"], check["check"])
            previous = cells.get(key)  # a check run twice keeps its worst outcome
            cells[key] = _cell(check) if previous in (None, PASSED) else previous
        columns.append(Column(label, cells))
    rows = sorted({key for column in columns for key in column.cells},
                  key=lambda key: (key[0], _natural(key[1])))
    outcomes = [cell for column in columns for cell in column.cells.values()]
    passed = outcomes.count(PASSED)
    expected = sum(1 for cell in outcomes if _expected(cell))
    lines = [
        "## Checkpoint compatibility",
        "",
        f"{passed} of {len(outcomes)} checks passed across {len(columns)} environment(s)"
        + (f"; {expected} failed as their tests expected (xfail, or caught by a passing "
           "test)." if expected else "."),
        "",
        "| test | check | " + " | ".join(column.label for column in columns) + " |",
        "| --- | --- | " + " | ".join("---" for _ in columns) + " |",
    ]
    for test, check in rows:
        shown = [column.cells.get((test, check), "—") for column in columns]
        name = test.replace("|", "\\|")
        lines.append(f"| `{name}` | {check} | " + " | ".join(shown) + " |")
    return "\n".join(lines) + "\n"
