"""``ckpt.assert_loads``, declared partial loads judged on values: every tensor the checkpoint
provides must reach the model (under any name: a loader may remap keys or torch's hooks convert
them), every model tensor that holds no checkpoint value must be declared, and an exception
of the project's loader is a finding with its frame, not a traceback."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import replace
from fnmatch import fnmatchcase
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_ckpt.checkpoint.facts import ModelFacts
from pytest_ckpt.checkpoint.manifest import Manifest
from pytest_ckpt.checks.context import CheckContext
from pytest_ckpt.checks.load_runs import LoadRaised, LoadRun, run_load
from pytest_ckpt.diagnosis.engine import diagnose
from pytest_ckpt.diagnosis.findings import Finding, fix_for, render_failure
from pytest_ckpt.errors import CkptUsageError
from pytest_ckpt.formats import recorded_ties

if TYPE_CHECKING:
    import torch

FIX = ("fix: declare expected gaps with allow_missing=[...] / allow_unexpected=[...], or fix "
       "the key mapping in the load path")


def assert_loads(context: CheckContext, model: torch.nn.Module,
                 checkpoint: Mapping[str, Any] | str | Path, *, allow_missing: Any = (),
                 allow_unexpected: Any = (), load: Callable[..., Any] | None = None,
                 load_from: Callable[..., Any] | None = None,
                 safe_globals: Sequence[Any] = ()) -> None:
    """Load ``checkpoint`` into ``model`` through ``load(model, state_dict)``,
    ``load_from(model, path)`` (the project's loader; a returned module is the loaded model)
    or ``load_state_dict(strict=False)``, and fail on anything not declared: a model tensor
    that holds no checkpoint value and ``allow_missing`` does not cover, a checkpoint tensor
    that reached no model tensor and ``allow_unexpected`` does not cover, a declaration that
    matches nothing (stale) or hides provided keys (over-broad), a provided tensor whose value
    did not reach the model, an exception of the load path."""
    __tracebackhide__ = True
    missing_patterns = context.usage(patterns, allow_missing)
    unexpected_patterns = context.usage(patterns, allow_unexpected)
    path = Path(checkpoint) if isinstance(checkpoint, (str, Path)) else None
    context.usage(_one_loader, load, load_from, path)
    state, manifest, container, choice = _checkpoint(context, checkpoint, safe_globals,
                                                     tolerant=bool(load_from), model=model)
    name = str(checkpoint) if path is not None else "the state_dict"
    said = f"\n{choice}" if choice else ""  # which of several state_dicts was read
    run = run_load(model, state, manifest, load=load, load_from=load_from, path=path,
                   container=container)
    if isinstance(run, LoadRaised):
        from pytest_ckpt.checks.remap_findings import partly_stripped

        findings = partly_stripped(run.findings(model, state), manifest.keys())
        context.record("loads", findings, run.line, note=choice)
        context.fail(render_failure(
            f"checkpoint {name} does not load into {type(model).__name__}: the load path "
            f"raised {run.line}{said}", findings, fix_for(
                findings, context.update_command, default=FIX, against_record=False),
            color=context.color),
            check=None)
    findings = _findings(run, manifest, missing_patterns, unexpected_patterns, state,
                         recorded_ties(path) if path is not None else {})
    context.record("loads", findings, note="; ".join(filter(None, (choice, run.note))) or None)
    if findings:
        context.fail(render_failure(
            f"checkpoint {name} does not load into {type(model).__name__} as declared{said}",
            findings, declaration_fix(findings, run.model, allow_missing) or fix_for(
                findings, context.update_command, default=FIX, against_record=False),
            color=context.color))


def declaration_fix(findings: list[Finding], model: torch.nn.Module,
                    allow_missing: Any) -> str | None:
    """When every finding is a whole component the checkpoint lacks (a partial checkpoint),
    the exact declaration that accepts it."""
    from pytest_ckpt.diagnosis.rules.components import components

    if not findings or any(finding.kind != "missing_component" for finding in findings):
        return None
    absent = {key for finding in findings for key in finding.keys}
    declared = [allow_missing] if isinstance(allow_missing, str) else list(allow_missing)
    wanted = [*declared, *sorted(f"{name}.*" for name in components(absent, model.state_dict()))]
    return ("fix: if the checkpoint is partial by design, declare it: allow_missing=["
            + ", ".join(f'"{pattern}"' for pattern in dict.fromkeys(wanted)) + "]")


def _one_loader(load: Any, load_from: Any, path: Path | None) -> None:
    if load is not None and load_from is not None:
        raise CkptUsageError("pass load= (given the state_dict) or load_from= (given the "
                             "path), not both")
    if load_from is not None and path is None:
        raise CkptUsageError("load_from= is given the checkpoint's path: pass a path, or "
                             "use load= for a state_dict")


def _checkpoint(context: CheckContext, checkpoint: Any, safe_globals: Sequence[Any], *,
                tolerant: bool, model: torch.nn.Module,
                ) -> tuple[dict[str, Any] | None, Manifest, Any, str | None]:
    """The checkpoint's tensors, manifest, whole container, and which of several top-level
    state_dicts was read (the one matching ``model`` best). With the project's own loader, a
    file that ``weights_only=True`` refuses is still given to it: then only its manifest is
    known (read inertly) and values are not compared."""
    __tracebackhide__ = True
    from pytest_ckpt.errors import CheckpointReadError
    from pytest_ckpt.formats import read_checkpoint_manifest

    if not isinstance(checkpoint, (str, Path)):
        state = dict(checkpoint)
        return state, Manifest.from_state_dict(state), checkpoint, None
    path = Path(checkpoint)
    model_keys = model.state_dict().keys()
    if tolerant:
        try:
            return _read(path, safe_globals, model_keys)
        except CheckpointReadError:
            pass  # read inertly below, outside the except (a failure is not chained to it)
        manifest = context.reading("loads", lambda: read_checkpoint_manifest(path))
        return None, manifest, None, None
    result: tuple[dict[str, Any], Manifest, Any, str | None] = context.reading(
        "loads", lambda: _read(path, safe_globals, model_keys))
    context.flag(path)
    return result


def _read(path: Path, safe_globals: Sequence[Any], model_keys: Collection[str],
          ) -> tuple[dict[str, Any], Manifest, Any, str | None]:
    """(state_dict, manifest, container, choice) of a checkpoint file or directory; among
    several top-level state_dicts, the one matching ``model_keys`` best, and the choice."""
    from pytest_ckpt.formats import detect_format, load_checkpoint
    from pytest_ckpt.formats.torch_zip import weights_of

    container = load_checkpoint(path, safe_globals)
    if detect_format(path).name == "dcp":  # its flat entries, tensors and values
        state = {key: value for key, value in container.items()
                 if hasattr(value, "shape") and hasattr(value, "dtype")}
        return state, Manifest.from_state_dict(state), container, None
    state, layout = weights_of(container, path, model_keys)
    return state, Manifest.from_state_dict(state), container, layout.choice()


def _findings(run: LoadRun, manifest: Manifest, missing_patterns: tuple[str, ...],
              unexpected_patterns: tuple[str, ...], state: Mapping[str, Any] | None,
              ties: Mapping[str, str]) -> list[Finding]:
    from pytest_ckpt.checks.batchnorm_counts import batchnorm_gaps
    from pytest_ckpt.checks.casts import lossy_cast_finding
    from pytest_ckpt.checks.remap_findings import overmatched, partly_stripped

    provided = set(manifest.keys())
    gaps = set(run.not_written) - provided - matched(missing_patterns, run.not_written)
    tolerated, counts = batchnorm_gaps(run.model, gaps, state if state is not None else {
        key: None for key in provided}, called_load_state_dict=run.load_state_dict_calls > 0)
    gaps -= tolerated | {key for finding in counts for key in finding.keys}
    model = Manifest.from_module(run.model)
    remap = overmatched(run.renamed, set(run.not_written) & provided, model.key_set())
    if remap is not None:
        run = replace(run, not_written=tuple(key for key in run.not_written
                                             if key not in remap.keys),
                      unexpected=Manifest(tuple(row for row in run.unexpected
                                                if row.key not in remap.related)))
    unexpected = run.unexpected.keys()
    extra = set(unexpected) - matched(unexpected_patterns, unexpected)
    findings = diagnose(Manifest(tuple(row for row in run.unexpected if row.key in extra)),
                        Manifest(tuple(row for row in model if row.key in gaps)),
                        facts=ModelFacts.from_module(run.model), recorded_ties=ties)
    findings = partly_stripped(findings, provided) + ([remap] if remap is not None else [])
    casts = [finding for finding in (run.retyped, lossy_cast_finding(run.model, state or {}))
             if finding is not None]
    return findings + counts + casts + declared_findings(
        run, provided, allow_missing=missing_patterns, allow_unexpected=unexpected_patterns)


def matches(pattern: str, key: str) -> bool:
    """A glob on keys (``text_encoder.*``), or a component name (``text_encoder``)."""
    if any(char in pattern for char in "*?["):
        return fnmatchcase(key, pattern)
    return key == pattern or key.startswith(pattern + ".")


def matched(patterns: Iterable[str], keys: Iterable[str]) -> set[str]:
    patterns = tuple(patterns)
    return {key for key in keys if any(matches(pattern, key) for pattern in patterns)}


def patterns(value: Any) -> tuple[str, ...]:
    """``allow_missing`` / ``allow_unexpected``: one glob or a sequence of globs."""
    found = (value,) if isinstance(value, str) else tuple(value)
    if not all(isinstance(pattern, str) for pattern in found):
        raise CkptUsageError(f"allow_missing/allow_unexpected take key globs, got {value!r}")
    return found


def declared_findings(run: LoadRun, provided: set[str], *, allow_missing: tuple[str, ...],
                      allow_unexpected: tuple[str, ...]) -> list[Finding]:
    """Findings for declarations that are stale or over-broad, and for undeclared gaps."""
    missing = set(run.not_written)
    unexpected = run.unexpected.keys()
    findings = []
    for pattern in allow_missing:
        hidden = matched([pattern], provided - set(unexpected))
        if not matched([pattern], missing):
            findings.append(_stale("allow_missing", pattern, "no tensor the load left out"))
        elif hidden:
            findings.append(Finding("missing", tuple(sorted(hidden)), (
                f"allow_missing={pattern!r} is over-broad: it also covers "
                f"{len(hidden)} keys the checkpoint does provide")))
    for pattern in allow_unexpected:
        if not matched([pattern], unexpected):
            findings.append(_stale("allow_unexpected", pattern, "no unexpected checkpoint key"))
    silent = sorted((missing & provided) - matched(allow_missing, missing & provided))
    if silent:
        findings.append(Finding("not_loaded", tuple(silent), (
            "the checkpoint provides these tensors but the load left them at their initial "
            "value (a key remap or a strict=False load dropped them)")))
    if run.wrong_value:
        findings.append(Finding("value", run.wrong_value,
                                "loaded, but not with the checkpoint's value"))
    return findings


def _stale(option: str, pattern: str, what: str) -> Finding:
    return Finding("stale_declaration", (), f"{option}={pattern!r} is stale: it matches "
                                            f"{what}; remove it from the declaration",
                   fix=f"fix: remove {pattern!r} from {option}= (the load no longer needs it)")
