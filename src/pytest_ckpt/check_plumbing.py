"""What the ``ckpt`` fixture's check mixins (``golden_checks``, ``training_checks``) use of
:class:`~pytest_ckpt.checks.CheckpointChecks`: declared here for the type checker, defined
there."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from syrupy.assertion import SnapshotAssertion

    from pytest_ckpt.checks import CkptSessionState
    from pytest_ckpt.snapshots import SnapshotComparison


class CheckPlumbing:
    """The state and helpers every check shares (``_fail``, ``_record``, ``_usage``, snapshot
    claims, checkpoint loading); ``CheckpointChecks`` provides them."""

    if TYPE_CHECKING:
        _nodeid: str
        _update: bool
        _color: bool
        _state: CkptSessionState
        _roundtrips: int
        _tmp_path: Path
        _assertion: SnapshotAssertion
        _schema_assertion: SnapshotAssertion

        @property
        def update_command(self) -> str: ...

        def _fail(self, message: str, *, check: str | None = None,
                  findings: Any = ()) -> None: ...

        def _record(self, check: str, findings: Any = (), error: str | None = None,
                    note: str | None = None) -> None: ...

        def _usage(self, function: Callable[..., Any], *args: Any, label: str = "ckpt",
                   check: str | None = None) -> Any: ...

        def _claim(self, name: str | None,
                   assertion: SnapshotAssertion | None = None) -> Path: ...

        def _claim_path(self, location: Path, name: str | None, *,
                        folder: Path | None = None) -> Path: ...

        def compared(self, assertion: SnapshotAssertion, text: str, name: str | None,
                     check: str) -> SnapshotComparison: ...

        def _loaded(self, checkpoint: Any, check: str, safe_globals: Sequence[Any], *,
                    tensors_only: bool = False) -> Any: ...
