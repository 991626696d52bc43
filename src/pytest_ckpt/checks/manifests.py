"""``ckpt.assert_manifest``: the manifest of a module, state_dict or file against its stored
snapshot, drift diagnosed by the engine."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_ckpt.checkpoint.facts import ModelFacts
from pytest_ckpt.checkpoint.manifest import Manifest, ManifestParseError
from pytest_ckpt.checks.context import CheckContext
from pytest_ckpt.diagnosis.engine import diagnose
from pytest_ckpt.diagnosis.findings import Finding, fix_for, render_failure
from pytest_ckpt.record.snapshots import relative

if TYPE_CHECKING:
    import torch


def assert_manifest(context: CheckContext, obj: torch.nn.Module | Mapping[str, Any] | str | Path,
                    *, name: str | None = None, safe_globals: Sequence[Any] = ()) -> Manifest:
    """Compare the manifest of a module, state_dict or file with its stored snapshot;
    ``safe_globals`` are allowed in the weights_only load of a file, nothing else."""
    __tracebackhide__ = True
    check = f"manifest[{name}]" if name else "manifest"
    manifest = manifest_of(context, obj, check, safe_globals)
    location = context.claim(name)
    result = context.compared(context.assertion, manifest.render(), name, check)
    if result.matched:
        context.record(check)
        return manifest
    if result.stored is None:
        context.fail(render_failure(
            f"no manifest snapshot for this test yet ({relative(location)})",
            [], f"create it with: {context.update_command}", color=context.color), check=check)
    message, findings = _snapshot_message(context, result.stored, manifest, location,
                                          _facts_of(obj))
    context.fail(message, check=check, findings=findings)


def _snapshot_message(context: CheckContext, stored: str, manifest: Manifest, location: Path,
                      facts: ModelFacts | None) -> tuple[str, list[Finding]]:
    try:
        reference = Manifest.parse(stored)
    except ManifestParseError as error:
        return (f"manifest snapshot {relative(location)} is corrupt: {error}\n"
                f"rewrite it with: {context.update_command}"), []
    findings = diagnose(reference, manifest, facts=facts, reference_name="snapshot")
    counts = f"{len(reference)} entries in the snapshot, {len(manifest)} in the model"
    headline = f"manifest differs from snapshot {relative(location)} ({counts})"
    fix = fix_for(findings, context.update_command)
    if not findings:
        findings = [Finding("value", (), "snapshot text differs (formatting only)")]
    return render_failure(headline, findings, fix, color=context.color), findings


def manifest_of(context: CheckContext, obj: Any, check: str,
                safe_globals: Sequence[Any]) -> Manifest:
    """The manifest of a module, a state_dict or a checkpoint path (read header-only)."""
    __tracebackhide__ = True
    import torch

    from pytest_ckpt.formats import read_checkpoint_manifest
    from pytest_ckpt.formats.torch_zip import allowed_globals

    if isinstance(obj, torch.nn.Module):
        return Manifest.from_module(obj)
    if isinstance(obj, (str, Path)):
        manifest: Manifest = context.reading(check, lambda: _within(
            allowed_globals(safe_globals), read_checkpoint_manifest, Path(obj)))
        context.flag(Path(obj))
        return manifest
    if isinstance(obj, Mapping):
        return Manifest.from_state_dict(obj)
    context.fail(f"assert_manifest in {context.nodeid} needs an nn.Module, a state_dict or a "
                 f"checkpoint path, got {type(obj).__name__}")


def _within(manager: AbstractContextManager[Any], function: Callable[..., Any],
            *args: Any) -> Any:
    with manager:
        return function(*args)


def _facts_of(obj: object) -> ModelFacts | None:
    import torch

    return ModelFacts.from_module(obj) if isinstance(obj, torch.nn.Module) else None
