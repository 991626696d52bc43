"""The training-checkpoint checks of the ``ckpt`` fixture (a part of
:class:`~pytest_ckpt.checks.CheckpointChecks`): ``assert_schema`` (container schema
snapshots) and ``assert_resumes`` / ``@pytest.mark.ckpt_resume`` (resume equivalence)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_ckpt.check_plumbing import CheckPlumbing
from pytest_ckpt.findings import Finding, fix_for, render_failure
from pytest_ckpt.manifest import ManifestParseError
from pytest_ckpt.snapshots import relative

if TYPE_CHECKING:
    from pytest_ckpt.schema import Schema


class TrainingChecks(CheckPlumbing):
    """Schema and resume checks; the shared plumbing (``_fail``, ``_record``, ``_usage``,
    ``_loaded``, snapshot claims) comes from ``CheckpointChecks``."""

    def assert_schema(self, checkpoint: Mapping[str, Any] | str | Path, *,
                      name: str | None = None, safe_globals: Sequence[Any] = ()) -> Schema:
        """Compare a checkpoint's container schema (keys and types, never values) with its
        stored snapshot; drift is reported as ``training_state`` findings."""
        __tracebackhide__ = True
        from pytest_ckpt.schema import Schema, diff_schemas

        check = f"schema[{name}]" if name else "schema"
        schema = Schema.of(self._loaded(checkpoint, check, safe_globals))
        location = self._claim(name, self._schema_assertion)
        result = self.compared(self._schema_assertion, _same_across_torch(location, schema),
                               name, check)
        if result.matched:
            self._record(check)
            return schema
        if result.stored is None:
            self._fail(f"no schema snapshot for this test yet ({relative(location)})\n"
                       f"create it with: {self.update_command}", check=check)
        try:
            reference = Schema.parse(result.stored or "")
        except ManifestParseError as error:
            self._fail(f"schema snapshot {relative(location)} is corrupt: {error}\n"
                       f"rewrite it with: {self.update_command}", check=check)
        findings = diff_schemas(reference, schema) or [
            Finding("training_state", (), "schema text differs (formatting only)")]
        self._fail(render_failure(f"checkpoint schema differs from snapshot "
                                  f"{relative(location)}", findings,
                                  fix_for(findings, self.update_command), color=self._color),
                   check=check, findings=findings)
        raise AssertionError("unreachable")  # pragma: no cover

    def assert_resumes(self, harness: Any = None, *, build: Callable[[], Any] | None = None,
                       step: Callable[[Any], Any] | None = None,
                       save: Callable[[Any, Path], None] | None = None,
                       resume: Callable[[Path], Any] | None = None,
                       steps: int = 6, at: int = 3) -> None:
        """Run ``steps`` training steps uninterrupted, and ``at`` steps + save + resume + the
        rest; require identical losses, LRs, parameters, optimizer state and RNG draws."""
        __tracebackhide__ = True
        from pytest_ckpt.training import harness_from, run_resume_check

        self._roundtrips += 1
        directory = self._tmp_path / f"ckpt-resume-{self._roundtrips}"
        directory.mkdir()
        user = self._usage(lambda: harness_from(harness, build=build, step=step, save=save,
                                                resume=resume), label="ckpt_resume",
                           check="resume")
        findings = self._usage(lambda: run_resume_check(user, steps=steps, at=at,
                                                        directory=directory),
                               label="ckpt_resume", check="resume")
        self._record("resume", findings)
        if findings:
            self._fail(render_failure(
                f"resumed training does not continue like the uninterrupted run ({steps} "
                f"steps, saved and resumed after step {at})", findings,
                "fix: save and restore everything the next step depends on (model, optimizer, "
                "scheduler, step counters, RNG), with the optimizer over the same parameters "
                "in the same order", color=self._color))

    def run_marked_resume(self, function: Callable[..., Any], arguments: dict[str, Any],
                          options: dict[str, Any]) -> None:
        """Call a ``ckpt_resume`` test for its training harness, then check resuming."""
        __tracebackhide__ = True
        harness = function(**arguments)
        if harness is None:
            self._fail(f"{self._nodeid} is marked ckpt_resume but returned None\n"
                       "fix: return an object with build, step, save and resume methods")
        self.assert_resumes(harness, **options)


def _same_across_torch(location: Path, schema: Schema) -> str:
    """The text to compare with the stored schema: the stored text itself when the two differ
    only in torch's own optimizer flags (so lanes of a torch matrix share one snapshot and an
    update in one lane does not rewrite it), else the schema's own rendering."""
    from pytest_ckpt.schema import Schema

    text = schema.render()
    if not location.is_file():
        return text
    stored = location.read_text(encoding="utf-8")
    try:
        reference = Schema.parse(stored)
    except ManifestParseError:
        return text
    return stored if reference.without_torch_flags() == schema.without_torch_flags() else text
