"""The round-trip contract (DESIGN §2) and ``ckpt.roundtrip``.

For each format: save -> load with ``weights_only=True`` -> load into a fresh target through
the user's load path -> keys, shapes, dtypes, then values (bitwise) -> tie groups -> outputs
on ``inputs`` in eval mode. A target tensor still at its pre-load value is ``not_loaded``.
"""

from __future__ import annotations

import copy
import shutil
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_ckpt.checkpoint.manifest import Manifest
from pytest_ckpt.checks.context import CheckContext
from pytest_ckpt.checks.outputs import make_inputs, model_outputs
from pytest_ckpt.checks.roundtrip_format import (
    PROJECT,
    FormatOutcome,
    RoundtripSpec,
    key_findings,
    load_through,
    roundtrip_format,
)
from pytest_ckpt.checks.targets import fresh_target, poisoned_copy, tie_findings
from pytest_ckpt.diagnosis.findings import fix_for, render_failure, sort_findings
from pytest_ckpt.errors import CkptUsageError
from pytest_ckpt.formats import get_format

if TYPE_CHECKING:
    import torch

LoadFn = Callable[["torch.nn.Module", dict[str, Any]], Any]


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
    if spec.save_to is not None and spec.formats != ("torch",):
        raise CkptUsageError("save_to= writes the project's own format: formats= does not "
                             "apply to it (drop formats=)")
    if on_meta(source):
        return [_meta_outcome(source, make_target, spec, directory)]
    layouts = layouts_option(spec.weight_norm, source)
    loaders = loaders_option(spec.loaders)
    inputs = make_inputs(spec.inputs)
    expected_outputs = model_outputs(source, inputs, "the model returned by the test")
    outcomes = []
    for name in (PROJECT,) if spec.save_to is not None else spec.formats:
        target = fresh_target(make_target, source)
        if not isinstance(target, torch.nn.Module):
            raise CkptUsageError(f"the target factory returned {type(target).__name__}, "
                                 "not a torch.nn.Module")
        suffix = "" if spec.save_to is not None else get_format(name).suffix
        outcome = roundtrip_format(source, target, name, directory / f"roundtrip{suffix}",
                                   spec, inputs, expected_outputs)
        del target
        if outcome.ok:
            _discard(outcome.path)
        outcomes.append(outcome)
    if layouts:
        outcomes.append(_layout_outcome(source, make_target, spec, layouts, loaders, inputs,
                                        directory))
    return outcomes


def _discard(path: Path) -> None:
    """Remove a passing format's file (or folder): its pages are dropped before the kernel
    writes them back, so the next format's save is not throttled behind them, and a suite of
    large round-trips does not fill pytest's kept temporary folders. A failing format's file
    stays for a look."""
    try:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    except OSError:  # a platform that cannot remove a file still mapped: it stays
        pass


def _layout_outcome(source: torch.nn.Module, make_target: Callable[[], torch.nn.Module] | None,
                    spec: RoundtripSpec, layouts: tuple[str, ...], loaders: tuple[str, ...],
                    inputs: Any, directory: Path) -> FormatOutcome:
    import torch

    from pytest_ckpt.checks.weight_norm_layouts import check_layouts

    def meta_target() -> torch.nn.Module:
        if make_target is None:
            return poisoned_copy(source).to("meta")
        with torch.device("meta"):
            return make_target()

    fresh = partial(fresh_target, make_target, source)
    findings = check_layouts(source, fresh, meta_target, layouts, loaders, spec.load,
                             lambda model: model_outputs(model, inputs, "the target"),
                             directory / "weight_norm")
    return FormatOutcome("weight_norm", directory / "weight_norm", tuple(findings),
                         headline=f"weight_norm layouts of {type(source).__name__}: published "
                                  "checkpoints in some layouts do not load")


META_NOTE = ("built on the meta device: keys, shapes, dtypes, tie groups and the "
             "load_state_dict(assign=True) path checked; values and outputs not checked "
             "(no data), no file written")


def on_meta(model: torch.nn.Module) -> bool:
    """Whether ``model`` was built on the meta device (holds tensors without data)."""
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
    findings = key_findings(saved, target) + tie_findings(source, target)
    return FormatOutcome("meta", directory, tuple(sort_findings(findings)), note=META_NOTE)


def _assign_load(target: torch.nn.Module, state: dict[str, Any]) -> Any:
    return target.load_state_dict(state, strict=True, assign=True)


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
              inputs: Any = None, load: Callable[..., Any] | None = None,
              snapshot: bool = True, name: str | None = None, weight_norm: Any = "auto",
              loaders: Any = ("load_state_dict",), save_to: Callable[..., Any] | None = None,
              load_from: Callable[..., Any] | None = None) -> list[FormatOutcome]:
    """Run the round-trip contract; fail with the findings of every failing format, then
    compare the manifest with its snapshot."""
    __tracebackhide__ = True
    from pytest_ckpt.checks.manifests import assert_manifest

    spec = RoundtripSpec(formats=context.usage(formats_option, formats), inputs=inputs,
                         load=load, weight_norm=weight_norm, loaders=loaders, save_to=save_to,
                         load_from=load_from)
    context.usage(_one_loader, load, load_from)
    directory = context.folder("ckpt-roundtrip")
    outcomes: list[FormatOutcome] = context.usage(
        lambda: run_roundtrip(model, factory, spec, directory), label="ckpt_roundtrip",
        check="roundtrip")
    for outcome in outcomes:
        context.record(f"roundtrip[{outcome.format}]", outcome.findings, outcome.error,
                       outcome.note)
    failed = [outcome for outcome in outcomes if not outcome.ok]
    if failed:
        context.fail("\n\n".join(failure_message(context, model, outcome)
                                   for outcome in failed))
    if snapshot:
        assert_manifest(context, model, name=name)
    return outcomes


def _one_loader(load: Any, load_from: Any) -> None:
    if load is not None and load_from is not None:
        raise CkptUsageError("pass load= (given the state_dict) or load_from= (given the "
                             "path), not both")


def failure_message(context: CheckContext, model: torch.nn.Module,
                    outcome: FormatOutcome) -> str:
    """The failure paragraph of one format's outcome: headline, findings, fix line."""
    kinds = ", ".join(dict.fromkeys(finding.kind for finding in outcome.findings))
    headline = outcome.headline or (f"checkpoint round-trip of {type(model).__name__} "
                                    f"through '{outcome.format}' failed: "
                                    f"{outcome.error or kinds}")
    fix = fix_for(list(outcome.findings), context.update_command)
    return render_failure(headline, outcome.findings, fix, color=context.color)
