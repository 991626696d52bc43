"""``ckpt.assert_schema``: a checkpoint's container schema (keys and types, never values)
against its stored snapshot; drift is reported as ``training_state`` findings."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pytest_ckpt.checkpoint.manifest import ManifestParseError
from pytest_ckpt.checkpoint.schema import Schema
from pytest_ckpt.checks.context import CheckContext
from pytest_ckpt.diagnosis.findings import Finding, fix_for, render_failure
from pytest_ckpt.diagnosis.schema_diff import diff_schemas
from pytest_ckpt.record.snapshots import relative


def assert_schema(context: CheckContext, checkpoint: Mapping[str, Any] | str | Path, *,
                  name: str | None = None, safe_globals: Sequence[Any] = ()) -> Schema:
    """Compare a checkpoint's container schema with its stored snapshot."""
    __tracebackhide__ = True
    check = f"schema[{name}]" if name else "schema"
    schema = Schema.of(context.loaded(checkpoint, check, safe_globals))
    location = context.claim(name, context.schema_assertion)
    result = context.compared(context.schema_assertion, _same_across_torch(location, schema),
                              name, check)
    if result.matched:
        context.record(check)
        return schema
    if result.stored is None:
        context.fail(f"no schema snapshot for this test yet ({relative(location)})\n"
                     f"create it with: {context.update_command}", check=check)
    try:
        reference = Schema.parse(result.stored)
    except ManifestParseError as error:
        context.fail(f"schema snapshot {relative(location)} is corrupt: {error}\n"
                     f"rewrite it with: {context.update_command}", check=check)
    findings = diff_schemas(reference, schema) or [
        Finding("training_state", (), "schema text differs (formatting only)")]
    context.fail(render_failure(f"checkpoint schema differs from snapshot "
                                f"{relative(location)}", findings,
                                fix_for(findings, context.update_command),
                                color=context.color), check=check, findings=findings)


def _same_across_torch(location: Path, schema: Schema) -> str:
    """The text to compare with the stored schema: the stored text itself when the two differ
    only in torch's own optimizer flags (so lanes of a torch matrix share one snapshot and an
    update in one lane does not rewrite it), else the schema's own rendering."""
    text = schema.render()
    if not location.is_file():
        return text
    stored = location.read_text(encoding="utf-8")
    try:
        reference = Schema.parse(stored)
    except ManifestParseError:
        return text
    return stored if reference.without_torch_flags() == schema.without_torch_flags() else text
