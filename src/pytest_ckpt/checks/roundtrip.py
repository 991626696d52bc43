"""The round-trip contract (DESIGN §2) and ``ckpt.roundtrip``.

For each format: save -> load with ``weights_only=True`` -> load into a fresh target through
the user's load path -> keys, shapes, dtypes, then values (bitwise) -> tie groups -> outputs
on ``inputs`` in eval mode. A target tensor still at its pre-load value is ``not_loaded``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_ckpt.checkpoint.facts import ModelFacts
from pytest_ckpt.checkpoint.manifest import Manifest
from pytest_ckpt.checks.context import CheckContext
from pytest_ckpt.checks.outputs import make_inputs, model_outputs, output_findings
from pytest_ckpt.checks.targets import poisoned_copy, prepare_target, tie_findings, value_findings
from pytest_ckpt.diagnosis.engine import diagnose
from pytest_ckpt.diagnosis.findings import Finding, fix_for, render_failure, sort_findings
from pytest_ckpt.errors import CheckpointReadError, CkptUsageError, first_line
from pytest_ckpt.formats import get_format
from pytest_ckpt.formats.pages import released_as_loaded, settle

if TYPE_CHECKING:
    import torch

LoadFn = Callable[["torch.nn.Module", dict[str, Any]], Any]


@dataclass(frozen=True)
class FormatOutcome:
    """What one format's round-trip found; ``ok`` when nothing."""

    format: str
    path: Path
    findings: tuple[Finding, ...] = ()
    error: str | None = None  # an exception raised by the save or the user's load path
    headline: str | None = None  # what broke, when not "the round-trip through <format>"
    note: str | None = None  # what was not checked, said in the run's summary

    @property
    def ok(self) -> bool:
        return not self.findings and self.error is None


@dataclass(frozen=True)
class RoundtripSpec:
    """The options of one round-trip (marker keywords or fixture arguments)."""

    formats: tuple[str, ...] = ("torch",)
    inputs: Callable[[], Any] | None = None
    load: LoadFn | None = None
    weight_norm: Any = "auto"  # "auto", False, or layouts that must load (layout_check.py)
    loaders: tuple[str, ...] = ("load_state_dict",)


def default_load(target: torch.nn.Module, state: dict[str, Any]) -> Any:
    return target.load_state_dict(state, strict=True)


def run_roundtrip(source: torch.nn.Module, make_target: Callable[[], torch.nn.Module] | None,
                  spec: RoundtripSpec, directory: Path) -> list[FormatOutcome]:
    """Run the contract once per format, then the weight_norm layout check; ``make_target``
    ``None`` means a poisoned copy."""
    import torch

    from pytest_ckpt.checks.weight_norm_layouts import layouts_option, loaders_option

    if not isinstance(source, torch.nn.Module):
        raise CkptUsageError(f"expected a torch.nn.Module to round-trip, got "
                             f"{type(source).__name__}")
    for name in spec.formats:
        get_format(name)  # unknown names fail before any work
    if _on_meta(source):
        return [_meta_outcome(source, make_target, spec, directory)]
    layouts = layouts_option(spec.weight_norm, source)
    loaders = loaders_option(spec.loaders)
    inputs = make_inputs(spec.inputs)
    expected_outputs = model_outputs(source, inputs, "the model returned by the test")
    outcomes = []
    for name in spec.formats:
        target = make_target() if make_target is not None else poisoned_copy(source)
        if not isinstance(target, torch.nn.Module):
            raise CkptUsageError(f"the target factory returned {type(target).__name__}, "
                                 "not a torch.nn.Module")
        path = directory / f"roundtrip{get_format(name).suffix}"
        outcomes.append(_roundtrip_one(source, target, name, path, spec, inputs,
                                       expected_outputs))
        del target
    if layouts:
        outcomes.append(_layout_outcome(source, make_target, spec, layouts, loaders, inputs,
                                        directory))
    return outcomes


def _layout_outcome(source: torch.nn.Module, make_target: Callable[[], torch.nn.Module] | None,
                    spec: RoundtripSpec, layouts: tuple[str, ...], loaders: tuple[str, ...],
                    inputs: Any, directory: Path) -> FormatOutcome:
    import torch

    from pytest_ckpt.checks.weight_norm_layouts import check_layouts

    def fresh() -> torch.nn.Module:
        return make_target() if make_target is not None else poisoned_copy(source)

    def on_meta() -> torch.nn.Module:
        if make_target is None:
            return poisoned_copy(source).to("meta")
        with torch.device("meta"):
            return make_target()

    findings = check_layouts(source, fresh, on_meta, layouts, loaders, spec.load,
                             lambda model: model_outputs(model, inputs, "the target"),
                             directory / "weight_norm")
    return FormatOutcome("weight_norm", directory / "weight_norm", tuple(findings),
                         headline=f"weight_norm layouts of {type(source).__name__}: published "
                                  "checkpoints in some layouts do not load")


def _roundtrip_one(source: torch.nn.Module, target: torch.nn.Module, name: str, path: Path,
                   spec: RoundtripSpec, inputs: Any,
                   expected_outputs: dict[str, torch.Tensor] | None) -> FormatOutcome:
    fmt = get_format(name)
    try:
        _save(fmt, source, path)
        releasable = fmt.memory_mapped and settle(path)  # only a large, flushed file's pages
        loaded = fmt.load(path)
    except CheckpointReadError as error:  # a refusal, or a format's own failure (a DCP rank)
        if error.unsafe:
            from pytest_ckpt.formats.torch_zip import unsafe_finding

            return FormatOutcome(name, path, (unsafe_finding(error),))
        return FormatOutcome(name, path, error=error.reason)
    saved = Manifest.from_state_dict(loaded)
    source_state = source.state_dict()
    before = prepare_target(target, source_state)
    with released_as_loaded(target) if releasable else nullcontext():
        failure = load_through(spec.load or default_load, target, loaded, saved)
    if failure is not None:
        return FormatOutcome(name, path, *failure)
    del loaded
    findings = _key_findings(saved, target)
    findings += value_findings(source_state, target.state_dict(keep_vars=True), before)
    findings += tie_findings(source, target)
    if expected_outputs is not None:
        findings += output_findings(expected_outputs,
                                     model_outputs(target, inputs, "the target"))
    return FormatOutcome(name, path, tuple(sort_findings(findings)))


def _save(fmt: Any, source: torch.nn.Module, path: Path) -> None:
    """The format's save; whatever it raises is the round-trip's error for that format."""
    try:
        fmt.save(source, path)
    except (CheckpointReadError, CkptUsageError):
        raise
    except Exception as error:  # the format's library refused the model's state
        raise CheckpointReadError(path, f"could not be saved in the {fmt.name} format "
                                        f"({type(error).__name__}: {first_line(error)})"
                                  ) from None


META_NOTE = ("built on the meta device: keys, shapes, dtypes, tie groups and the "
             "load_state_dict(assign=True) path checked; values and outputs not checked "
             "(no data), no file written")


def _on_meta(model: torch.nn.Module) -> bool:
    import torch

    return any(isinstance(tensor, torch.Tensor) and tensor.is_meta
               for tensor in model.state_dict().values())


def _meta_outcome(source: torch.nn.Module, make_target: Callable[[], torch.nn.Module] | None,
                  spec: RoundtripSpec, directory: Path) -> FormatOutcome:
    """A model without data: its state_dict goes through the load path into a meta target
    (default ``load_state_dict(strict=True, assign=True)``); keys, shapes, dtypes, ties."""
    target = make_target() if make_target is not None else copy.deepcopy(source)
    state = source.state_dict()
    saved = Manifest.from_state_dict(state)
    failure = load_through(spec.load or _assign_load, target, state, saved)
    if failure is not None:
        return FormatOutcome("meta", directory, *failure, note=META_NOTE)
    findings = _key_findings(saved, target) + tie_findings(source, target)
    return FormatOutcome("meta", directory, tuple(sort_findings(findings)), note=META_NOTE)


def _assign_load(target: torch.nn.Module, state: dict[str, Any]) -> Any:
    return target.load_state_dict(state, strict=True, assign=True)


def load_through(load: Callable[..., Any], target: torch.nn.Module, state: dict[str, Any],
                 saved: Manifest) -> tuple[tuple[Finding, ...], str] | None:
    """Run the user's load path; when it raises, the findings and the error line. The keys
    diagnosed are those the load path handed to ``target.load_state_dict`` (after its own
    remapping), or the saved file's when it never got that far."""
    handed: list[Manifest] = []
    original = target.load_state_dict

    def recording(state_dict: Any, *args: Any, **kwargs: Any) -> Any:
        handed.append(Manifest.from_state_dict(state_dict))
        return original(state_dict, *args, **kwargs)

    target.load_state_dict = recording  # type: ignore[method-assign]
    try:
        load(target, state)
    except Exception as error:  # the user's load path failed: diagnose, then report it
        passed = handed[-1] if handed else saved
        name = "saved file" if passed == saved else "state_dict the load path passed"
        findings = _key_findings(passed, target, name)
        return tuple(findings), f"{type(error).__name__}: {first_line(error, limit=300)}"
    finally:
        del target.load_state_dict
    return None


def _key_findings(saved: Manifest, target: torch.nn.Module,
                  name: str = "saved file") -> list[Finding]:
    return diagnose(saved, Manifest.from_module(target), facts=ModelFacts.from_module(target),
                    reference_name=name)


def formats_option(value: Any) -> tuple[str, ...]:
    """Normalise ``formats=`` ("torch" or a sequence of names)."""
    names: Sequence[Any] = (value,) if isinstance(value, str) else value
    if not isinstance(names, Sequence) or not names or not all(isinstance(n, str) for n in names):
        raise CkptUsageError(f"formats= must be a format name or a non-empty sequence of names, "
                             f"got {value!r}")
    for name in names:
        try:
            get_format(name)
        except ValueError as error:
            raise CkptUsageError(str(error)) from None
    return tuple(names)


def roundtrip(context: CheckContext, model: torch.nn.Module, *,
              factory: Callable[[], torch.nn.Module] | None = None, formats: Any = ("torch",),
              inputs: Callable[[], Any] | None = None, load: Callable[..., Any] | None = None,
              snapshot: bool = True, name: str | None = None, weight_norm: Any = "auto",
              loaders: Any = ("load_state_dict",)) -> list[FormatOutcome]:
    """Run the round-trip contract; fail with the findings of every failing format, then
    compare the manifest with its snapshot."""
    __tracebackhide__ = True
    from pytest_ckpt.checks.manifests import assert_manifest

    spec = RoundtripSpec(formats=context.usage(formats_option, formats), inputs=inputs,
                         load=load, weight_norm=weight_norm, loaders=loaders)
    directory = context.folder("ckpt-roundtrip")
    outcomes: list[FormatOutcome] = context.usage(
        lambda: run_roundtrip(model, factory, spec, directory), label="ckpt_roundtrip",
        check="roundtrip")
    for outcome in outcomes:
        context.record(f"roundtrip[{outcome.format}]", outcome.findings, outcome.error,
                       outcome.note)
    failed = [outcome for outcome in outcomes if not outcome.ok]
    if failed:
        context.fail("\n\n".join(_message(context, model, outcome) for outcome in failed))
    if snapshot:
        assert_manifest(context, model, name=name)
    return outcomes


def _message(context: CheckContext, model: torch.nn.Module, outcome: FormatOutcome) -> str:
    kinds = ", ".join(dict.fromkeys(finding.kind for finding in outcome.findings))
    headline = outcome.headline or (f"checkpoint round-trip of {type(model).__name__} "
                                    f"through '{outcome.format}' failed: "
                                    f"{outcome.error or kinds}")
    fix = fix_for(list(outcome.findings), context.update_command)
    return render_failure(headline, outcome.findings, fix, color=context.color)
