"""pytest11 entry point: options, markers, the ``ckpt`` fixture and the marker hook.

Wiring only: this module imports nothing but the standard library and pytest, so
``pytest --version`` and runs that use no ckpt feature never import torch.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from pytest_ckpt.checks.context import CkptSessionState
    from pytest_ckpt.checks.fixture import CheckpointChecks

_STATE = pytest.StashKey["CkptSessionState"]()
_CHECKS = pytest.StashKey["CheckpointChecks"]()
_COLLISIONS = pytest.StashKey["dict[str, list[str]]"]()
_FACTORIES = pytest.StashKey["list[str]"]()  # --ckpt-model and ini ckpt_models specs
REPORT_PROPERTY = "pytest_ckpt"  # the user_properties name of check results (report.py)

MARKER = "ckpt_roundtrip"
MARKER_OPTIONS = ("formats", "inputs", "load", "snapshot", "name", "weight_norm", "loaders",
                  "golden", "save_to", "load_from")
RESUME_MARKER = "ckpt_resume"
RESUME_OPTIONS = ("steps", "at")
STRICT_MARKER = "ckpt_strict_loads"
STRICT_OPTIONS = ("allow_missing", "allow_unexpected")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("ckpt", "checkpoint compatibility (pytest-ckpt)")
    group.addoption(
        "--ckpt-snapshot-update", action="store_true", default=False,
        dest="ckpt_snapshot_update",
        help="create and update pytest-ckpt's files only: manifest and schema snapshots and "
             "golden checkpoints (syrupy's --snapshot-update updates every snapshot, these "
             "included)")
    group.addoption(
        "--ckpt-strict-loads", action="store_true", default=False, dest="ckpt_strict_loads",
        help="fail tests in which a load_state_dict(strict=False) silently dropped keys")
    group.addoption(
        "--ckpt-report", action="store", default=None, dest="ckpt_report", metavar="PATH",
        help="write every pytest-ckpt check's outcome and findings as JSON to PATH (one file "
             "under xdist); render several with: pytest-ckpt matrix PATH...")
    group.addoption(
        "--ckpt-model", action="append", default=[], dest="ckpt_model",
        metavar="MODULE:FACTORY",
        help="check the model FACTORY() returns with no test file: round-trip through torch "
             "and safetensors (and the weight_norm layouts), build on the meta device, compare "
             "the manifest snapshot; repeatable, adds to the ini list ckpt_models")
    parser.addini("ckpt_models", type="linelist", default=[],
                  help="module:factory specs to check as --ckpt-model does, one a line")
    parser.addini("ckpt_strict_loads", type="bool", default=False,
                  help="like --ckpt-strict-loads, for every run")
    parser.addini("ckpt_golden_max_bytes", default="1MiB",
                  help="largest golden checkpoint ckpt.golden writes (bytes, or 512KiB, 2MiB)")


def pytest_configure(config: pytest.Config) -> None:
    if config.getini("ckpt_models") or config.option.ckpt_model:
        from pytest_ckpt.checks.model_battery import factory_specs

        config.stash[_FACTORIES] = factory_specs(config.getini("ckpt_models"),
                                                 config.option.ckpt_model)
    if not hasattr(config, "workerinput"):
        path = config.option.ckpt_report
        config.pluginmanager.register(CkptResults(
            str(config.invocation_params.dir / path) if path else None), "ckpt-results")
    config.addinivalue_line(
        "markers",
        f"{MARKER}(formats=('torch',), inputs=None, load=None, snapshot=True, name=None, "
        "weight_norm='auto', loaders=('load_state_dict',), golden=False, save_to=None, "
        "load_from=None): "
        "the test returns a model; pytest-ckpt saves it, loads it into a fresh instance "
        "(the test called again) and requires identical keys, values and outputs")
    config.addinivalue_line(
        "markers",
        f"{RESUME_MARKER}(steps=6, at=3): the test returns a training harness (build, step, "
        "save, resume); pytest-ckpt requires a run resumed after `at` steps to continue "
        "exactly like the uninterrupted one")
    config.addinivalue_line(
        "markers",
        f"{STRICT_MARKER}(allow_missing=(), allow_unexpected=()): fail the test when a "
        "load_state_dict(strict=False) in it drops keys the allow-lists do not cover")


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Any:
    """Collect the ``--ckpt-model`` factories beside the session's own collectors."""
    report = yield
    specs = collector.config.stash.get(_FACTORIES, [])
    if specs and isinstance(collector, pytest.Session) and report.passed:
        from pytest_ckpt.checks.model_battery import FactoryCollector

        config = collector.config
        report.result.append(FactoryCollector.for_specs(
            collector, specs, state=lambda: _session_state(config),
            report_property=REPORT_PROPERTY))
    return report


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Find tests whose default manifest snapshots would share one file."""
    users = [item for item in items if _uses_ckpt(item)]
    if not users:
        return
    from pytest_ckpt.record.snapshots import default_snapshot_location

    by_location: dict[Any, list[str]] = {}
    for item in users:
        by_location.setdefault(default_snapshot_location(item), []).append(item.nodeid)
    config.stash[_COLLISIONS] = {
        nodeid: [other for other in nodeids if other != nodeid]
        for nodeids in by_location.values() if len(nodeids) > 1 for nodeid in nodeids
    }


def _uses_ckpt(item: pytest.Item) -> bool:
    return _marked(item) is not None or "ckpt" in getattr(item, "fixturenames", ())


def _marked(item: pytest.Item) -> pytest.Mark | None:
    return item.get_closest_marker(MARKER) or item.get_closest_marker(RESUME_MARKER)


def _session_state(config: pytest.Config) -> CkptSessionState:
    if _STATE not in config.stash:
        from pytest_ckpt.checks.context import CkptSessionState

        config.stash[_STATE] = CkptSessionState(
            update=bool(config.option.ckpt_snapshot_update),
            collisions=config.stash.get(_COLLISIONS, {}),
            golden_max_bytes=str(config.getini("ckpt_golden_max_bytes")))
        _share_cores_between_workers(config)
    return config.stash[_STATE]


def _share_cores_between_workers(config: pytest.Config) -> None:
    """In an xdist worker, give torch its share of the CPU (cores // workers intra-op
    threads) unless the user chose (OMP_NUM_THREADS): N workers each running torch's default
    one thread per core oversubscribe the machine and run slower than one process."""
    import os

    workers = getattr(config, "workerinput", {}).get("workercount")
    if not workers or "OMP_NUM_THREADS" in os.environ:
        return
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
        os.cpu_count() or 1)
    torch.set_num_threads(max(1, cores // int(workers)))


@pytest.fixture
def ckpt(request: pytest.FixtureRequest, snapshot: Any, tmp_path: Any,
         ) -> Iterator[CheckpointChecks]:
    """Checkpoint checks for this test: ``roundtrip``, ``assert_manifest``, ``assert_schema``."""
    from pytest_ckpt.checks.fixture import CheckpointChecks

    color = request.config.get_terminal_writer().hasmarkup
    properties = request.node.user_properties

    def record(entry: dict[str, Any]) -> None:
        properties.append((REPORT_PROPERTY, entry))

    checks = CheckpointChecks(nodeid=request.node.nodeid, snapshot=snapshot, tmp_path=tmp_path,
                              state=_session_state(request.config), color=color, record=record)
    yield checks
    if request.node.stash.get(_CALL_FAILED, False):
        checks.hold_snapshots()


_CALL_FAILED = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Remember a failed call, for the ``ckpt`` fixture's teardown (``hold_snapshots``)."""
    report = yield
    if report.when == "call" and report.failed:
        item.stash[_CALL_FAILED] = True
    return report


@pytest.fixture(autouse=True)
def _ckpt_roundtrip_marker(request: pytest.FixtureRequest) -> Iterator[None]:
    """Give tests marked ``ckpt_roundtrip`` a ``ckpt`` fixture without naming it."""
    if _marked(request.node) is not None:
        request.node.stash[_CHECKS] = request.getfixturevalue("ckpt")
    yield


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run a ``ckpt_roundtrip`` test: call it for the model, then round-trip the model."""
    marker = _marked(pyfuncitem)
    if marker is None:
        return None
    options = _marker_options(pyfuncitem, marker)
    function = pyfuncitem.obj
    names = inspect.signature(function).parameters
    arguments = {name: pyfuncitem.funcargs[name] for name in names if name in pyfuncitem.funcargs}
    checks = pyfuncitem.stash[_CHECKS]
    if marker.name == RESUME_MARKER:
        checks.run_marked_resume(function, arguments, options)
    else:
        checks.run_marked_test(function, arguments, options)
    return True


def _marker_options(item: pytest.Item, marker: pytest.Mark) -> dict[str, Any]:
    __tracebackhide__ = True
    known = {RESUME_MARKER: RESUME_OPTIONS, STRICT_MARKER: STRICT_OPTIONS}.get(
        marker.name, MARKER_OPTIONS)
    unknown = sorted(set(marker.kwargs) - set(known))
    if marker.args or unknown:
        bad = ", ".join([*(repr(arg) for arg in marker.args), *unknown])
        pytest.fail(
            f"@pytest.mark.{marker.name} on {item.nodeid} has unknown options: {bad}\n"
            f"known options (keywords only): {', '.join(known)}", pytrace=False)
    return dict(marker.kwargs)


_GUARD = pytest.StashKey["Any"]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Any:
    """Watch non-strict load_state_dict calls in tests that asked for it."""
    marker = item.get_closest_marker(STRICT_MARKER)
    enabled = bool(item.config.option.ckpt_strict_loads or item.config.getini(
        "ckpt_strict_loads"))
    if marker is None and not enabled:
        return (yield)
    options = _marker_options(item, marker) if marker is not None else {}
    from pytest_ckpt.checks.strict_loads import StrictLoadGuard

    guard = StrictLoadGuard(_globs(options.get("allow_missing", ())),
                            _globs(options.get("allow_unexpected", ())))
    item.stash[_GUARD] = guard
    guard.install()
    try:
        result = yield
    finally:
        guard.stop()
    if guard.silent_loads:
        from pytest_ckpt.record.report import check_entry

        findings = [finding for load in guard.silent_loads for finding in load.findings]
        item.user_properties.append((REPORT_PROPERTY, check_entry("strict_loads", findings)))
        pytest.fail(guard.report(item.nodeid, color=item.config.get_terminal_writer().hasmarkup),
                    pytrace=False)
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Any:
    """Remove the strict-load guard once the test's fixtures (``monkeypatch`` among them)
    have put back what they changed."""
    try:
        return (yield)
    finally:
        guard = item.stash.get(_GUARD, None)
        if guard is not None:
            guard.uninstall()
            del item.stash[_GUARD]


class CkptResults:
    """Collects check results from the ``call`` reports (xdist workers send them to the
    controller with each report); writes --ckpt-report and lists the checks' notes (what a
    passing check did not cover) in the terminal summary."""

    def __init__(self, report_path: str | None) -> None:
        self.report_path = report_path
        self.entries: list[tuple[str, dict[str, Any]]] = []

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when != "call":
            return
        outcome = "xfailed" if hasattr(report, "wasxfail") else report.outcome
        self.entries.extend((report.nodeid, {**entry, "test_outcome": outcome})
                            for name, entry in report.user_properties
                            if name == REPORT_PROPERTY and isinstance(entry, dict))

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        notes = sorted(((nodeid, entry) for nodeid, entry in self.entries if entry.get("note")),
                       key=lambda item: (item[0], item[1]["check"]))
        if notes:
            terminalreporter.section("pytest-ckpt notes")
            for nodeid, entry in notes:
                terminalreporter.line(f"{nodeid} {entry['check']}: {entry['note']}")

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if not self.report_path or hasattr(session.config, "workerinput"):
            return
        import json
        from pathlib import Path

        from pytest_ckpt.record.report import build_report
        from pytest_ckpt.record.snapshots import SnapshotWriteError, atomic_write_text

        report = build_report(self.entries)
        try:
            atomic_write_text(Path(self.report_path), json.dumps(report, indent=1) + "\n")
        except SnapshotWriteError as error:
            session.config.get_terminal_writer().line(f"pytest-ckpt: --ckpt-report: {error}",
                                                      red=True)
            session.exitstatus = pytest.ExitCode.TESTS_FAILED


def _globs(value: Any) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value)
