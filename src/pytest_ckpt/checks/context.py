"""What every check of one test shares: the test's node id, its snapshot assertions, its
temporary folder, the session's state, colour, the report recorder, and the helpers that fail
the test, record a check and read a checkpoint with the message a user reads."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import pytest

from pytest_ckpt.errors import CheckpointReadError, CkptUsageError

if TYPE_CHECKING:
    from syrupy.assertion import SnapshotAssertion

    from pytest_ckpt.record.snapshots import SnapshotComparison

UPDATE_FLAG = "--ckpt-snapshot-update"


@dataclass
class CkptSessionState:
    """Per-process run state kept in ``config.stash``."""

    update: bool
    collisions: dict[str, list[str]] = field(default_factory=dict)  # nodeid -> colliding ids
    # snapshot path -> (nodeid, name=) of the first check that used it
    claimed: dict[Path, tuple[str, str | None]] = field(default_factory=dict)
    swept: set[Path] = field(default_factory=set)  # folders cleared of killed writers' files
    golden_max_bytes: str = "1MiB"  # ini ckpt_golden_max_bytes


@dataclass
class CheckContext:
    """One test's view of the checks (built by the ``ckpt`` fixture)."""

    nodeid: str
    update: bool
    assertion: SnapshotAssertion  # manifest snapshots
    schema_assertion: SnapshotAssertion
    tmp_path: Path
    state: CkptSessionState
    color: bool = False
    recorder: Callable[[dict[str, Any]], None] | None = None
    folders: int = 0  # check folders made under tmp_path

    @property
    def update_command(self) -> str:
        return f"pytest {UPDATE_FLAG} '{self.nodeid}'"

    def folder(self, prefix: str) -> Path:
        """A fresh folder for one check's files (``ckpt-roundtrip-1``, ...)."""
        self.folders += 1
        path = self.tmp_path / f"{prefix}-{self.folders}"
        path.mkdir()
        return path

    def fail(self, message: str, *, check: str | None = None, findings: Any = ()) -> NoReturn:
        """Fail the test with ``message``; recorded for --ckpt-report when ``check`` is set."""
        __tracebackhide__ = True
        if check is not None:
            self.record(check, findings, None if findings else message.splitlines()[0])
        pytest.fail(message, pytrace=False)

    def record(self, check: str, findings: Any = (), error: str | None = None,
               note: str | None = None) -> None:
        if self.recorder is not None:
            from pytest_ckpt.record.report import check_entry

            self.recorder(check_entry(check, findings, error, note))

    def usage(self, function: Callable[..., Any], *args: Any, label: str = "ckpt",
              check: str | None = None) -> Any:
        """``function(*args)``; a usage error fails the test naming it (not chained)."""
        __tracebackhide__ = True
        try:
            return function(*args)
        except CkptUsageError as error:
            failure = error
        self.fail(f"{label} used wrongly in {self.nodeid}: {failure}", check=check)

    def reading(self, check: str, read: Callable[[], Any]) -> Any:
        """``read()``; a file that cannot be read fails the test with its findings (outside
        the ``except``, so the message is not chained to the read error)."""
        __tracebackhide__ = True
        from pytest_ckpt.formats.torch_zip import read_failure

        try:
            return self.usage(read)
        except CheckpointReadError as error:
            failure = error
        message, findings = read_failure(failure, color=self.color)
        self.fail(message, check=check, findings=findings)

    def loaded(self, checkpoint: Any, check: str, safe_globals: Sequence[Any], *,
               tensors_only: bool = False) -> Any:
        """What a checkpoint path holds (a mapping is taken as it is)."""
        __tracebackhide__ = True
        if isinstance(checkpoint, (str, Path)):
            from pytest_ckpt.formats import load_checkpoint

            loaded = self.reading(check, lambda: load_checkpoint(
                Path(checkpoint), safe_globals, tensors_only=tensors_only))
            self.flag(Path(checkpoint))
            return loaded
        return checkpoint

    def flag(self, path: Path) -> None:
        """Warn (naming the file) about a file that loads but is not fit for release."""
        import warnings

        from pytest_ckpt.errors import CheckpointFileWarning
        from pytest_ckpt.formats import file_notes

        for note in file_notes(path):
            warnings.warn(CheckpointFileWarning(f"checkpoint {path}: {note}"), stacklevel=5)

    def claim(self, name: str | None, assertion: SnapshotAssertion | None = None) -> Path:
        """The snapshot location of this check, claimed for this test."""
        __tracebackhide__ = True
        from pytest_ckpt.record.snapshots import snapshot_location

        return self.claim_path(snapshot_location(assertion or self.assertion, name), name)

    def claim_path(self, location: Path, name: str | None, *,
                   folder: Path | None = None) -> Path:
        """Claim ``location`` for this test (``folder``: where its files go, by default the
        location's parent); another test's claim, or another name that sanitises to the same
        file, fails the test."""
        __tracebackhide__ = True
        from pytest_ckpt.record.snapshots import relative

        others = self.state.collisions.get(self.nodeid, []) if name is None else []
        owner, owner_name = self.state.claimed.setdefault(location, (self.nodeid, name))
        if owner != self.nodeid:
            others = [owner]
        if others:
            self.fail(f"snapshot name collision: {self.nodeid} and {', '.join(others)} "
                      f"would share {relative(location)}\n"
                      "fix: give the tests distinct names or pass name=... to assert_manifest")
        if owner_name != name:
            self.fail(f"snapshot name collision in {self.nodeid}: name={owner_name!r} and "
                      f"name={name!r} would share {relative(location)} (a snapshot name "
                      "keeps only letters, digits, '_', '-' and '.')\n"
                      "fix: pass names that differ in those characters")
        if self.update:
            self.sweep(folder or location.parent)
        return location

    def sweep(self, folder: Path) -> None:
        """On an update, remove what killed writers left in ``folder`` (once a session)."""
        from pytest_ckpt.record.snapshots import sweep_orphans

        if folder not in self.state.swept:
            self.state.swept.add(folder)
            sweep_orphans(folder)

    def compared(self, assertion: SnapshotAssertion, text: str, name: str | None,
                 check: str) -> SnapshotComparison:
        """The comparison with the stored snapshot; a snapshot the update could not write
        fails the test naming the path and the OS error."""
        __tracebackhide__ = True
        from pytest_ckpt.record.snapshots import SnapshotWriteError, compare_with_snapshot

        try:
            return compare_with_snapshot(assertion, text, name)
        except SnapshotWriteError as error:
            failure = error
        self.fail(str(failure), check=check)
