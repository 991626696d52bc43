"""Manifest snapshots stored through syrupy: one readable text file per snapshot.

The plugin builds its own :class:`~syrupy.assertion.SnapshotAssertion` with
:class:`ManifestSnapshotExtension` so that ``--ckpt-snapshot-update`` updates only these
snapshots while syrupy's global ``--snapshot-update`` keeps working for both. Writes are
atomic (temporary file + ``os.replace``), so a snapshot is never half-written.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from syrupy.assertion import SnapshotAssertion
from syrupy.data import SnapshotCollection, SnapshotCollections
from syrupy.extensions.single_file import SingleFileSnapshotExtension, WriteMode
from syrupy.location import PyTestLocation


class ManifestSnapshotExtension(SingleFileSnapshotExtension):
    """``__snapshots__/<test file>/<test name>.manifest.txt``, written atomically."""

    _write_mode = WriteMode.TEXT
    file_extension = "manifest.txt"

    @classmethod
    def _max_stem_length(cls) -> int:
        """syrupy's longest name, less room for the ``.lock`` file it puts beside a snapshot
        under pytest-xdist (a 255-byte name leaves its controller failing to remove that
        file: 'File name too long')."""
        return int(super()._max_stem_length()) - len(".lock")

    @classmethod
    def write_snapshot_collection(cls, *, snapshot_collection: SnapshotCollection,
                                  name_order: dict[str, int] | None = None) -> None:
        data = next(iter(snapshot_collection)).data
        if not isinstance(data, str):
            raise TypeError(f"manifest snapshots are text, got {type(data).__name__}")
        atomic_write_text(Path(snapshot_collection.location), data)


class FactorySnapshotExtension(ManifestSnapshotExtension):
    """``<rootdir>/__ckpt_models__/<package.module.factory>.manifest.txt``: the snapshot of a
    ``--ckpt-model`` factory. Outside every ``__snapshots__`` folder, so that syrupy never
    counts it among a test file's snapshots (it knows test functions alone, and would delete
    the snapshots of factories a session did not check on an update); each belongs to its
    own factory only, for the same reason."""

    @classmethod
    def dirname(cls, *, test_location: PyTestLocation) -> str:
        return str(Path(test_location.filepath).parent / FACTORY_SNAPSHOTS)

    def owns_snapshot_collection(self, *, filepath: str,
                                 test_location: PyTestLocation) -> bool:
        return Path(filepath) == Path(self.get_location(test_location=test_location, index=0))

    def discover_snapshots(self, *, test_location: PyTestLocation,
                           ignore_extensions: list[str] | None = None) -> SnapshotCollections:
        """This factory's snapshot only: the other files of the folder are other factories',
        never this one's to call unused."""
        found = super().discover_snapshots(test_location=test_location,
                                           ignore_extensions=ignore_extensions)
        own = SnapshotCollections()
        for collection in found:
            if self.owns_snapshot_collection(filepath=collection.location,
                                             test_location=test_location):
                own.add(collection)
        return own

    @classmethod
    def matches_test_location(cls, *, test_location: PyTestLocation,
                              snapshot_location: str) -> bool:
        return Path(snapshot_location) == Path(cls.get_location(test_location=test_location,
                                                                index=0))


FACTORY_SNAPSHOTS = "__ckpt_models__"  # <rootdir>/__ckpt_models__/<module>.<factory>...


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8, ``\\n`` line ends) atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


class SnapshotWriteError(Exception):
    """A snapshot or golden could not be written; the message names the path and the OS
    error, and says what to change."""

    def __init__(self, path: Path, error: OSError) -> None:
        self.path, self.error = path, error
        reason = error.strerror or str(error)
        if error.errno == errno.ENAMETOOLONG:
            advice = "give the test (or its name=...) a shorter name"
        elif isinstance(error, PermissionError) or error.errno == errno.EROFS:
            advice = f"make {path.parent} writable by the user running the tests"
        else:
            advice = f"check that {path.parent} can be written"
        super().__init__(f"could not write {path}: {reason} ({type(error).__name__})\n"
                         f"fix: {advice}, then run the update again")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path`` (named after this process, so a
    killed writer's leftovers are recognised), then rename it into place; an OS error is a
    :class:`SnapshotWriteError` naming ``path``."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # the name fits the file system whatever the target's (syrupy allows 255 bytes)
        stem = path.name.encode("utf-8")[:TMP_STEM].decode("utf-8", "ignore")
        handle, temporary = tempfile.mkstemp(prefix=f".{stem}.{os.getpid()}.",
                                             suffix=TMP_SUFFIX, dir=path.parent)
    except OSError as error:
        raise SnapshotWriteError(path, error) from None
    try:
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes it 0600; files are shared
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        Path(temporary).unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise SnapshotWriteError(path, error) from None
        raise


TMP_SUFFIX = ".tmp"
TMP_STEM = 200  # bytes of the target's name a temporary file keeps
_TMP = re.compile(r"^\..+\.(\d+)\.[^.]+\.tmp$")
_OLD_TMP_AGE = 3600  # seconds; leftovers named without a process id (before 0.1.1)


def sweep_orphans(directory: Path) -> list[Path]:
    """Remove the temporary files killed writers left in ``directory``: those whose process
    is gone (and unnamed ones older than an hour); the paths removed."""
    removed: list[Path] = []
    try:
        candidates = [entry for entry in directory.iterdir()
                      if entry.name.startswith(".") and entry.name.endswith(TMP_SUFFIX)]
    except OSError:
        return removed
    for entry in candidates:
        if _orphaned(entry):
            with contextlib.suppress(OSError):
                entry.unlink()
                removed.append(entry)
    return removed


def _orphaned(entry: Path) -> bool:
    match = _TMP.match(entry.name)
    if match is None:
        try:
            return time.time() - entry.stat().st_mtime > _OLD_TMP_AGE
        except OSError:
            return False
    pid = int(match.group(1))
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # alive, owned by another user
        return False
    return False


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@dataclass(frozen=True)
class SnapshotComparison:
    """The outcome of comparing a rendered text with its stored snapshot."""

    location: Path
    stored: str | None  # the text on disk before this comparison; None when absent
    matched: bool  # equal, or (re)written because an update was requested
    written: bool


class SchemaSnapshotExtension(ManifestSnapshotExtension):
    """``__snapshots__/<test file>/<test name>.schema.txt``: checkpoint container schemas."""

    file_extension = "schema.txt"


def manifest_assertion(base: SnapshotAssertion, *, update: bool,
                       extension: type[ManifestSnapshotExtension] = ManifestSnapshotExtension,
                       ) -> SnapshotAssertion:
    """A syrupy assertion for this plugin's snapshots, sharing the test's syrupy session."""
    return SnapshotAssertion(
        update_snapshots=update,
        extension_class=extension,
        test_location=base.test_location,
        session=base.session,
    )


def snapshot_location(assertion: SnapshotAssertion, name: str | None) -> Path:
    index: Any = name if name else assertion.num_executions
    return Path(assertion.extension.get_location(test_location=assertion.test_location,
                                                 index=index))


def golden_manifest_location(assertion: SnapshotAssertion, name: str | None) -> Path:
    """The manifest location a test's goldens are named after (index 0 when unnamed)."""
    return Path(assertion.extension.get_location(test_location=assertion.test_location,
                                                 index=name or 0))


def default_snapshot_location(item: Any) -> Path:
    """Where the first unnamed manifest snapshot of a collected test item is stored."""
    return Path(ManifestSnapshotExtension.get_location(test_location=PyTestLocation(item),
                                                       index=0))


def compare_with_snapshot(assertion: SnapshotAssertion, text: str,
                          name: str | None) -> SnapshotComparison:
    """Compare through syrupy (which records and, when updating, writes the snapshot)."""
    location = snapshot_location(assertion, name)
    stored = location.read_text(encoding="utf-8") if location.is_file() else None
    target = assertion(name=name) if name else assertion
    matched = bool(target == text)
    if not matched:  # syrupy keeps what its write raised in the assertion's result
        results = target.executions
        raised = results[max(results)].exception if results else None
        if isinstance(raised, SnapshotWriteError):
            raise raised
    return SnapshotComparison(location, stored, matched, written=matched and stored != text)


def hold_unused(assertion: SnapshotAssertion) -> list[Path]:
    """Record this test's stored snapshots that it did not compare (it failed before the
    comparison) as used, so that syrupy does not report them unused, nor delete them on an
    update; the paths held. Each is recorded as a failed comparison (what it is: the test did
    not get to compare it), with the stored data unchanged."""
    from syrupy.assertion import AssertionResult

    used = {result.snapshot_location for result in assertion.executions.values()}
    location = assertion.test_location
    held: list[Path] = []
    for collection in assertion.extension.discover_snapshots(test_location=location):
        if collection.location in used or not Path(collection.location).is_file():
            continue
        for snapshot in collection:
            if not location.matches_snapshot_name(snapshot.name):
                continue
            assertion.executions[assertion.num_executions] = AssertionResult(
                snapshot_location=collection.location, snapshot_name=snapshot.name,
                asserted_data=None, recalled_data=None, created=False, updated=False,
                success=False, exception=None, test_location=location)
            assertion._executions += 1  # syrupy's own counter of the results it keeps
            held.append(Path(collection.location))
    return held


def relative(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)
