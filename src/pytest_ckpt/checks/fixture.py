"""The ``ckpt`` fixture object: one small class that holds a :class:`CheckContext` and hands
each public method to the check module that implements it."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, final

from pytest_ckpt.checks import golden, loads, manifests, markers, roundtrip, schema
from pytest_ckpt.checks.context import CheckContext, CkptSessionState
from pytest_ckpt.checks.resume import assert_resumes
from pytest_ckpt.record.snapshots import SchemaSnapshotExtension, manifest_assertion

if TYPE_CHECKING:
    import torch
    from syrupy.assertion import SnapshotAssertion

    from pytest_ckpt.checkpoint.manifest import Manifest
    from pytest_ckpt.checkpoint.schema import Schema
    from pytest_ckpt.checks.golden import GoldenOutcome
    from pytest_ckpt.checks.roundtrip_format import FormatOutcome


@final
class CheckpointChecks:
    """The ``ckpt`` fixture: ``roundtrip``, ``assert_manifest``, ``assert_loads``,
    ``assert_schema``, ``assert_resumes`` and ``golden``."""

    def __init__(self, *, nodeid: str, snapshot: SnapshotAssertion, tmp_path: Path,
                 state: CkptSessionState, color: bool = False,
                 record: Callable[[dict[str, Any]], None] | None = None) -> None:
        update = state.update or bool(
            getattr(snapshot.session.pytest_session.config.option, "update_snapshots", False))
        self._context = CheckContext(
            nodeid=nodeid, update=update,
            assertion=manifest_assertion(snapshot, update=update),
            schema_assertion=manifest_assertion(snapshot, update=update,
                                                extension=SchemaSnapshotExtension),
            tmp_path=tmp_path, state=state, color=color, recorder=record)

    def hold_snapshots(self) -> None:
        """After a failed test: keep the snapshots it did not get to compare (syrupy would
        call them unused and delete them on an update)."""
        from pytest_ckpt.record.snapshots import hold_unused

        hold_unused(self._context.assertion)
        hold_unused(self._context.schema_assertion)

    @property
    def update_command(self) -> str:
        """The command that writes this test's snapshots and goldens."""
        return self._context.update_command

    def roundtrip(self, model: torch.nn.Module, *,
                  factory: Callable[[], torch.nn.Module] | None = None,
                  formats: Any = ("torch",), inputs: Any = None,
                  load: Callable[..., Any] | None = None, snapshot: bool = True,
                  name: str | None = None, weight_norm: Any = "auto",
                  loaders: Any = ("load_state_dict",),
                  save_to: Callable[..., Any] | None = None,
                  load_from: Callable[..., Any] | None = None) -> list[FormatOutcome]:
        """Run the round-trip contract; fail with the findings of every failing format.
        ``save_to(model, path)`` and ``load_from(target, path)`` are the project's own saver
        and loader (``load(target, state_dict)`` a state_dict loader)."""
        __tracebackhide__ = True
        return roundtrip.roundtrip(self._context, model, factory=factory, formats=formats,
                                   inputs=inputs, load=load, snapshot=snapshot, name=name,
                                   weight_norm=weight_norm, loaders=loaders, save_to=save_to,
                                   load_from=load_from)

    def assert_manifest(self, obj: torch.nn.Module | Mapping[str, Any] | str | Path, *,
                        name: str | None = None, safe_globals: Sequence[Any] = ()) -> Manifest:
        """Compare the manifest of a module, state_dict or file with its stored snapshot;
        ``safe_globals`` are allowed in the weights_only load of a file, nothing else."""
        __tracebackhide__ = True
        return manifests.assert_manifest(self._context, obj, name=name,
                                         safe_globals=safe_globals)

    def assert_loads(self, model: torch.nn.Module, checkpoint: Mapping[str, Any] | str | Path,
                     *, allow_missing: Any = (), allow_unexpected: Any = (),
                     load: Callable[..., Any] | None = None,
                     load_from: Callable[..., Any] | None = None,
                     safe_globals: Sequence[Any] = ()) -> None:
        """Load ``checkpoint`` into ``model`` through ``load(model, state_dict)``,
        ``load_from(model, path)`` (the project's loader) or ``load_state_dict(strict=False)``
        and fail on anything not declared, judged on values (see
        :func:`pytest_ckpt.checks.loads.assert_loads`)."""
        __tracebackhide__ = True
        loads.assert_loads(self._context, model, checkpoint, allow_missing=allow_missing,
                           allow_unexpected=allow_unexpected, load=load, load_from=load_from,
                           safe_globals=safe_globals)

    def assert_schema(self, checkpoint: Mapping[str, Any] | str | Path, *,
                      name: str | None = None, safe_globals: Sequence[Any] = ()) -> Schema:
        """Compare a checkpoint's container schema (keys and types, never values) with its
        stored snapshot; drift is reported as ``training_state`` findings."""
        __tracebackhide__ = True
        return schema.assert_schema(self._context, checkpoint, name=name,
                                    safe_globals=safe_globals)

    def assert_resumes(self, harness: Any = None, *, build: Callable[[], Any] | None = None,
                       step: Callable[[Any], Any] | None = None,
                       save: Callable[[Any, Path], None] | None = None,
                       resume: Callable[[Path], Any] | None = None,
                       steps: int = 6, at: int = 3) -> None:
        """Run ``steps`` training steps uninterrupted, and ``at`` steps + save + resume + the
        rest; require identical losses, LRs, parameters, optimizer state and RNG draws."""
        __tracebackhide__ = True
        assert_resumes(self._context, harness, build=build, step=step, save=save,
                       resume=resume, steps=steps, at=at)

    def golden(self, model: torch.nn.Module, *, name: str | None = None,
               inputs: Any = None, load: Callable[..., Any] | None = None,
               factory: Callable[[], torch.nn.Module] | None = None,
               max_bytes: int | str | None = None,
               save_to: Callable[..., Any] | None = None,
               load_from: Callable[..., Any] | None = None) -> list[GoldenOutcome]:
        """Load every golden checkpoint of this test (one per torch minor version) into a
        fresh ``factory()`` (default: a poisoned copy of ``model``) through ``load`` and
        require keys, values and the output fingerprint on ``inputs`` to match; with
        --ckpt-snapshot-update, first write this torch version's golden of ``model``."""
        __tracebackhide__ = True
        return golden.golden(self._context, model, name=name, inputs=inputs, load=load,
                             factory=factory, max_bytes=max_bytes, save_to=save_to,
                             load_from=load_from)

    def run_marked_test(self, function: Callable[..., Any], arguments: dict[str, Any],
                        options: dict[str, Any]) -> None:
        """What ``@pytest.mark.ckpt_roundtrip`` does with the test (plugin hook)."""
        __tracebackhide__ = True
        markers.run_marked_test(self._context, function, arguments, options)

    def run_marked_resume(self, function: Callable[..., Any], arguments: dict[str, Any],
                          options: dict[str, Any]) -> None:
        """What ``@pytest.mark.ckpt_resume`` does with the test (plugin hook)."""
        __tracebackhide__ = True
        markers.run_marked_resume(self._context, function, arguments, options)
