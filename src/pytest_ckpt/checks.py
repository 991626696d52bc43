"""The ``ckpt`` fixture object: checks a test calls, each failing with a rendered message."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, final

import pytest

from pytest_ckpt.diagnose import diagnose
from pytest_ckpt.errors import CheckpointReadError, CkptUsageError
from pytest_ckpt.facts import ModelFacts
from pytest_ckpt.findings import Finding, fix_for, render_failure
from pytest_ckpt.formats import read_checkpoint_manifest
from pytest_ckpt.golden_checks import GoldenChecks
from pytest_ckpt.manifest import Manifest, ManifestParseError
from pytest_ckpt.roundtrip import FormatOutcome, RoundtripSpec, formats_option, run_roundtrip
from pytest_ckpt.snapshots import (
    SchemaSnapshotExtension,
    SnapshotComparison,
    compare_with_snapshot,
    manifest_assertion,
    relative,
)
from pytest_ckpt.training_checks import TrainingChecks

if TYPE_CHECKING:
    import torch
    from syrupy.assertion import SnapshotAssertion

UPDATE_FLAG = "--ckpt-snapshot-update"
TARGET_SEED = 0x5EED  # the second call of a marked test builds its target under this seed
GOLDEN_SEED = 0  # with golden=True, the first call of a marked test runs under this seed


@dataclass
class CkptSessionState:
    """Per-process run state kept in ``config.stash``."""

    update: bool
    collisions: dict[str, list[str]] = field(default_factory=dict)  # nodeid -> colliding ids
    # snapshot path -> (nodeid, name=) of the first check that used it
    claimed: dict[Path, tuple[str, str | None]] = field(default_factory=dict)
    swept: set[Path] = field(default_factory=set)  # folders cleared of killed writers' files
    golden_max_bytes: str = "1MiB"  # ini ckpt_golden_max_bytes


@final
class CheckpointChecks(GoldenChecks, TrainingChecks):
    """The ``ckpt`` fixture: ``roundtrip``, ``assert_manifest``, ``assert_loads``, and the
    golden and training checks of its mixins."""

    def __init__(self, *, nodeid: str, snapshot: SnapshotAssertion, tmp_path: Path,
                 state: CkptSessionState, color: bool = False,
                 record: Callable[[dict[str, Any]], None] | None = None) -> None:
        self._nodeid = nodeid
        update = state.update or bool(
            getattr(snapshot.session.pytest_session.config.option, "update_snapshots", False))
        self._update = update
        self._record_entry = record
        self._assertion = manifest_assertion(snapshot, update=update)
        self._schema_assertion = manifest_assertion(snapshot, update=update,
                                                    extension=SchemaSnapshotExtension)
        self._tmp_path = tmp_path
        self._state = state
        self._color = color
        self._roundtrips = 0

    @property
    def update_command(self) -> str:
        return f"pytest {UPDATE_FLAG} '{self._nodeid}'"

    def assert_manifest(self, obj: torch.nn.Module | Mapping[str, Any] | str | Path, *,
                        name: str | None = None, safe_globals: Sequence[Any] = ()) -> Manifest:
        """Compare the manifest of a module, state_dict or file with its stored snapshot;
        ``safe_globals`` are allowed in the weights_only load of a file, nothing else."""
        __tracebackhide__ = True
        check = f"manifest[{name}]" if name else "manifest"
        manifest = self._manifest_of(obj, check, safe_globals)
        location = self._claim(name)
        result = self.compared(self._assertion, manifest.render(), name, check)
        if result.matched:
            self._record(check)
            return manifest
        facts = _facts_of(obj)
        if result.stored is None:
            self._fail(render_failure(
                f"no manifest snapshot for this test yet ({relative(location)})",
                [], f"create it with: {self.update_command}", color=self._color), check=check)
        message, findings = self._snapshot_message(result.stored or "", manifest, location,
                                                   facts)
        self._fail(message, check=check, findings=findings)
        raise AssertionError("unreachable")  # pragma: no cover

    def assert_loads(self, model: torch.nn.Module, checkpoint: Mapping[str, Any] | str | Path,
                     *, allow_missing: Any = (), allow_unexpected: Any = (),
                     load: Callable[..., Any] | None = None,
                     safe_globals: Sequence[Any] = ()) -> None:
        """Load ``checkpoint`` into ``model`` through ``load`` (default
        ``load_state_dict(strict=False)``) and fail on anything not declared: a tensor left
        out that ``allow_missing`` does not cover, an extra key ``allow_unexpected`` does not
        cover, a declaration that matches nothing (stale) or hides provided keys (over-broad),
        a provided tensor whose value did not reach the model."""
        __tracebackhide__ = True
        from pytest_ckpt.partial import declared_findings, load_and_classify, matched

        missing_patterns = _patterns(allow_missing)
        unexpected_patterns = _patterns(allow_unexpected)
        state = self._state_dict_of(checkpoint, safe_globals)
        before = Manifest.from_module(model)
        facts = ModelFacts.from_module(model)
        result = load_and_classify(model, state, load)
        gaps = set(result.not_written) - set(state) - matched(missing_patterns,
                                                              result.not_written)
        extra = set(result.unexpected) - matched(unexpected_patterns, result.unexpected)
        findings = diagnose(
            Manifest.from_state_dict({k: state[k] for k in extra}),
            Manifest(tuple(row for row in before if row.key in gaps)), facts=facts)
        findings += declared_findings(result, state, allow_missing=missing_patterns,
                                      allow_unexpected=unexpected_patterns)
        self._record("loads", findings)
        if findings:
            name = checkpoint if isinstance(checkpoint, (str, Path)) else "the state_dict"
            self._fail(render_failure(
                f"checkpoint {name} does not load into {type(model).__name__} as declared",
                findings, "fix: declare expected gaps with allow_missing=[...] / "
                "allow_unexpected=[...], or fix the key mapping in the load path",
                color=self._color))

    def _state_dict_of(self, checkpoint: Any, safe_globals: Sequence[Any]) -> dict[str, Any]:
        __tracebackhide__ = True
        from pytest_ckpt.formats.torch_zip import state_dict_of

        loaded = self._loaded(checkpoint, "loads", safe_globals, tensors_only=True)
        path = Path(str(checkpoint)) if isinstance(checkpoint, (str, Path)) else None
        state: dict[str, Any] = self._reading(check="loads", read=lambda: state_dict_of(
            loaded, path or Path("<state_dict>")))
        return state

    def _loaded(self, checkpoint: Any, check: str, safe_globals: Sequence[Any], *,
                tensors_only: bool = False) -> Any:
        __tracebackhide__ = True
        if isinstance(checkpoint, (str, Path)):
            from pytest_ckpt.formats import load_checkpoint

            loaded = self._reading(check, lambda: load_checkpoint(
                Path(checkpoint), safe_globals, tensors_only=tensors_only))
            self._flag(Path(checkpoint))
            return loaded
        return checkpoint

    def _flag(self, path: Path) -> None:
        """Warn (naming the file) about a file that loads but is not fit for release."""
        import warnings

        from pytest_ckpt.errors import CheckpointFileWarning
        from pytest_ckpt.formats import file_notes

        for note in file_notes(path):
            warnings.warn(CheckpointFileWarning(f"checkpoint {path}: {note}"), stacklevel=4)

    def _reading(self, check: str, read: Callable[[], Any]) -> Any:
        """``read()``; a file that cannot be read fails the test with its findings (outside
        the ``except``, so the message is not chained to the read error)."""
        __tracebackhide__ = True
        from pytest_ckpt.formats.torch_zip import read_failure

        try:
            return self._usage(read)
        except CheckpointReadError as error:
            failure = error
        message, findings = read_failure(failure, color=self._color)
        self._fail(message, check=check, findings=findings)

    def roundtrip(self, model: torch.nn.Module, *,
                  factory: Callable[[], torch.nn.Module] | None = None,
                  formats: Any = ("torch",), inputs: Callable[[], Any] | None = None,
                  load: Callable[..., Any] | None = None, snapshot: bool = True,
                  name: str | None = None, weight_norm: Any = "auto",
                  loaders: Any = ("load_state_dict",)) -> list[FormatOutcome]:
        """Run the round-trip contract; fail with the findings of every failing format."""
        __tracebackhide__ = True
        spec = RoundtripSpec(formats=self._usage(formats_option, formats), inputs=inputs,
                             load=load, weight_norm=weight_norm, loaders=loaders)
        self._roundtrips += 1
        directory = self._tmp_path / f"ckpt-roundtrip-{self._roundtrips}"
        directory.mkdir()
        outcomes: list[FormatOutcome] = self._usage(
            lambda: run_roundtrip(model, factory, spec, directory), label="ckpt_roundtrip",
            check="roundtrip")
        for outcome in outcomes:
            self._record(f"roundtrip[{outcome.format}]", outcome.findings, outcome.error,
                         outcome.note)
        failed = [outcome for outcome in outcomes if not outcome.ok]
        if failed:
            self._fail("\n\n".join(self._roundtrip_message(model, outcome) for outcome in failed))
        if snapshot:
            self.assert_manifest(model, name=name)
        return outcomes

    def run_marked_test(self, function: Callable[..., Any], arguments: dict[str, Any],
                        options: dict[str, Any]) -> None:
        """Call a ``ckpt_roundtrip`` test for its model; call it again (other seed) as target;
        with ``golden=True`` the first call runs under ``GOLDEN_SEED`` and the model is also
        checked against its golden checkpoints."""
        __tracebackhide__ = True
        import torch

        golden = options.pop("golden", False)
        if golden not in (True, False):
            self._fail(f"ckpt_roundtrip used wrongly in {self._nodeid}: golden= takes True or "
                       f"False, got {golden!r}")
        with torch.random.fork_rng(devices=[], enabled=golden):
            if golden:
                torch.manual_seed(GOLDEN_SEED)
            model = function(**arguments)
        if not isinstance(model, torch.nn.Module):
            self._fail(f"{self._nodeid} is marked ckpt_roundtrip but returned "
                       f"{type(model).__name__}, not a torch.nn.Module\n"
                       "fix: end the test with `return model`")

        def fresh_instance() -> torch.nn.Module:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(TARGET_SEED)
                target: torch.nn.Module = function(**arguments)
                return target

        failures = []
        try:
            self.roundtrip(model, factory=fresh_instance, **options)
        except pytest.fail.Exception as failure:  # still check the goldens: report both
            failures.append(str(failure.msg))
        if golden:
            try:
                self._golden(model, name=options.get("name"), inputs=options.get("inputs"),
                             load=options.get("load"), factory=fresh_instance,
                             max_bytes=None, seed=GOLDEN_SEED)
            except pytest.fail.Exception as failure:
                failures.append(str(failure.msg))
        if failures:
            self._fail("\n\n".join(failures))

    def _roundtrip_message(self, model: torch.nn.Module, outcome: FormatOutcome) -> str:
        kinds = ", ".join(dict.fromkeys(finding.kind for finding in outcome.findings))
        headline = outcome.headline or (f"checkpoint round-trip of {type(model).__name__} "
                                        f"through '{outcome.format}' failed: "
                                        f"{outcome.error or kinds}")
        fix = fix_for(list(outcome.findings), self.update_command)
        return render_failure(headline, outcome.findings, fix, color=self._color)

    def _snapshot_message(self, stored: str, manifest: Manifest, location: Path,
                          facts: ModelFacts | None) -> tuple[str, list[Finding]]:
        try:
            reference = Manifest.parse(stored)
        except ManifestParseError as error:
            return (f"manifest snapshot {relative(location)} is corrupt: {error}\n"
                    f"rewrite it with: {self.update_command}"), []
        findings = diagnose(reference, manifest, facts=facts, reference_name="snapshot")
        counts = f"{len(reference)} entries in the snapshot, {len(manifest)} in the model"
        headline = f"manifest differs from snapshot {relative(location)} ({counts})"
        fix = fix_for(findings, self.update_command)
        if not findings:
            findings = [Finding("value", (), "snapshot text differs (formatting only)")]
        return render_failure(headline, findings, fix, color=self._color), findings

    def _manifest_of(self, obj: Any, check: str, safe_globals: Sequence[Any]) -> Manifest:
        __tracebackhide__ = True
        import torch

        from pytest_ckpt.formats.torch_zip import allowed_globals

        if isinstance(obj, torch.nn.Module):
            return Manifest.from_module(obj)
        if isinstance(obj, (str, Path)):
            manifest: Manifest = self._reading(check, lambda: _within(
                allowed_globals(safe_globals), read_checkpoint_manifest, Path(obj)))
            self._flag(Path(obj))
            return manifest
        if isinstance(obj, Mapping):
            return Manifest.from_state_dict(obj)
        self._fail(f"assert_manifest in {self._nodeid} needs an nn.Module, a state_dict or a "
                   f"checkpoint path, got {type(obj).__name__}")
        raise AssertionError("unreachable")  # pragma: no cover

    def _claim(self, name: str | None, assertion: SnapshotAssertion | None = None) -> Path:
        __tracebackhide__ = True
        from pytest_ckpt.snapshots import snapshot_location

        return self._claim_path(snapshot_location(assertion or self._assertion, name), name)

    def _claim_path(self, location: Path, name: str | None, *,
                    folder: Path | None = None) -> Path:
        """Claim ``location`` for this test (``folder``: where its files go, by default the
        location's parent)."""
        __tracebackhide__ = True
        others = self._state.collisions.get(self._nodeid, []) if name is None else []
        owner, owner_name = self._state.claimed.setdefault(location, (self._nodeid, name))
        if owner != self._nodeid:
            others = [owner]
        if others:
            self._fail(f"snapshot name collision: {self._nodeid} and {', '.join(others)} "
                       f"would share {relative(location)}\n"
                       "fix: give the tests distinct names or pass name=... to assert_manifest")
        if owner_name != name:
            self._fail(f"snapshot name collision in {self._nodeid}: name={owner_name!r} and "
                       f"name={name!r} would share {relative(location)} (a snapshot name "
                       "keeps only letters, digits, '_', '-' and '.')\n"
                       "fix: pass names that differ in those characters")
        if self._update:
            self.sweep(folder or location.parent)
        return location

    def sweep(self, folder: Path) -> None:
        """On an update, remove what killed writers left in ``folder`` (once a session)."""
        from pytest_ckpt.snapshots import sweep_orphans

        if folder not in self._state.swept:
            self._state.swept.add(folder)
            sweep_orphans(folder)

    def compared(self, assertion: SnapshotAssertion, text: str, name: str | None,
                 check: str) -> SnapshotComparison:
        """:func:`compare_with_snapshot`; a snapshot the update could not write fails the
        test naming the path and the OS error."""
        __tracebackhide__ = True
        from pytest_ckpt.snapshots import SnapshotWriteError

        try:
            return compare_with_snapshot(assertion, text, name)
        except SnapshotWriteError as error:
            failure = error
        self._fail(str(failure), check=check)
        raise AssertionError("unreachable")  # pragma: no cover

    def _usage(self, function: Callable[..., Any], *args: Any, label: str = "ckpt",
               check: str | None = None) -> Any:
        """``function(*args)``; a usage error fails the test naming it (not chained)."""
        __tracebackhide__ = True
        try:
            return function(*args)
        except CkptUsageError as error:
            failure = error
        self._fail(f"{label} used wrongly in {self._nodeid}: {failure}", check=check)

    def _record(self, check: str, findings: Any = (), error: str | None = None,
                note: str | None = None) -> None:
        if self._record_entry is not None:
            from pytest_ckpt.report import check_entry

            self._record_entry(check_entry(check, findings, error, note))

    def _fail(self, message: str, *, check: str | None = None,
              findings: Any = ()) -> None:
        """Fail the test with ``message``; recorded for --ckpt-report when ``check`` is set."""
        __tracebackhide__ = True
        if check is not None:
            self._record(check, findings, None if findings else message.splitlines()[0])
        pytest.fail(message, pytrace=False)


def _within(context: AbstractContextManager[Any], function: Callable[..., Any],
            *args: Any) -> Any:
    with context:
        return function(*args)


def _patterns(value: Any) -> tuple[str, ...]:
    patterns = (value,) if isinstance(value, str) else tuple(value)
    if not all(isinstance(pattern, str) for pattern in patterns):
        raise TypeError(f"allow_missing/allow_unexpected take key globs, got {value!r}")
    return patterns


def _facts_of(obj: object) -> ModelFacts | None:
    import torch

    return ModelFacts.from_module(obj) if isinstance(obj, torch.nn.Module) else None
