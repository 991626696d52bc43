"""``ckpt.golden`` and ``ckpt_roundtrip(golden=True)``: write this torch version's golden on
update, then load every golden of the test (one per torch minor version) into a fresh target
and compare keys, values and the output fingerprint with what its sidecar recorded."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_ckpt.checkpoint.facts import ModelFacts
from pytest_ckpt.checkpoint.manifest import Manifest
from pytest_ckpt.checkpoint.values import flatten_outputs
from pytest_ckpt.checks.context import CheckContext
from pytest_ckpt.checks.outputs import make_inputs, model_outputs
from pytest_ckpt.checks.roundtrip_format import load_model
from pytest_ckpt.checks.targets import (
    fresh_target,
    prepare_target,
    value_findings,
)
from pytest_ckpt.diagnosis.engine import diagnose
from pytest_ckpt.diagnosis.findings import Finding, render_failure, sort_findings
from pytest_ckpt.errors import CheckpointReadError, CkptUsageError
from pytest_ckpt.record import goldens
from pytest_ckpt.record.goldens import fingerprints
from pytest_ckpt.record.snapshots import SnapshotWriteError, relative

if TYPE_CHECKING:
    import torch


def golden(context: CheckContext, model: torch.nn.Module, *, name: str | None = None,
           inputs: Any = None, load: Callable[..., Any] | None = None,
           factory: Callable[[], torch.nn.Module] | None = None,
           max_bytes: int | str | None = None, seed: int | None = None,
           save_to: Callable[..., Any] | None = None,
           load_from: Callable[..., Any] | None = None) -> list[GoldenOutcome]:
    """Load every golden checkpoint of this test into a fresh ``factory()`` (default: a
    poisoned copy of ``model``) through ``load`` and require keys, values and the output
    fingerprint on ``inputs`` to match; with --ckpt-snapshot-update, first write this torch
    version's golden of ``model`` (recording ``seed``, by default torch's initial seed)."""
    __tracebackhide__ = True
    import torch

    limit = context.usage(_size_option, context.state.golden_max_bytes
                          if max_bytes is None else max_bytes)
    context.usage(_real_module, model)
    directory = goldens.golden_directory(_claim_golden(context, name))
    sample = context.usage(make_inputs, inputs)
    if load is not None and load_from is not None:
        context.fail(f"ckpt.golden used wrongly in {context.nodeid}: pass load= (given the "
                     "state_dict) or load_from= (given the path), not both")
    if context.update and not _still_holds(directory, model, sample, (load, load_from), factory):
        _write_golden(context, model, sample, directory, limit,
                      torch.initial_seed() if seed is None else seed, save_to)
    found = goldens.goldens_in(directory)
    if not found:
        context.fail(f"no golden checkpoint for this test yet ({relative(directory)})\n"
                     f"create it with: {context.update_command}", check="golden")
    outcomes = [_outcome(context, stored, model, sample, (load, load_from), factory)
                for stored in found]
    failed = [outcome for outcome in outcomes if not outcome.ok]
    if failed:
        context.fail("\n\n".join(_message(context, model, outcome) for outcome in failed))
    return outcomes


def _outcome(context: CheckContext, stored: goldens.GoldenFile, model: torch.nn.Module,
             sample: Any, loaders: tuple[Any, Any], factory: Any) -> GoldenOutcome:
    __tracebackhide__ = True
    target = fresh_target(factory, model)
    try:
        outcome: GoldenOutcome = context.usage(check_golden, stored, target, sample, *loaders)
    except CheckpointReadError as error:
        outcome = GoldenOutcome(stored, "?", _refusal_findings(error),
                                unreadable=error.headline)
    context.record(f"golden[{stored.label}]", outcome.findings,
                   outcome.error or outcome.unreadable, outcome.note)
    return outcome


def _still_holds(directory: Path, model: torch.nn.Module, sample: Any,
                 loaders: tuple[Any, Any], factory: Any) -> bool:
    """Whether this torch version's stored golden still loads into ``model``'s architecture
    with its recorded values and outputs: an update then leaves it byte-identical (a model
    built from a random seed would otherwise rewrite it on every update)."""
    stored = goldens.GoldenFile(directory / f"torch-{goldens.torch_minor()}.pt")
    if not (stored.path.is_file() and stored.sidecar.is_file()):
        return False
    target = fresh_target(factory, model)
    try:
        outcome = check_golden(stored, target, sample, *loaders)
    except (CheckpointReadError, CkptUsageError):
        return False
    recorded = stored.provenance().get("manifest")
    return outcome.ok and recorded == Manifest.from_module(model).render().splitlines()


def _write_golden(context: CheckContext, model: torch.nn.Module, sample: Any,
                  directory: Path, limit: int, seed: int, save_to: Any) -> None:
    __tracebackhide__ = True
    outputs = context.usage(model_outputs, model, sample, "the model given to golden")
    written = _saved_by_project(context, model, save_to) if save_to is not None else None
    data, sidecar = goldens.serialise(model, sample, test=context.nodeid, seed=seed,
                                      outputs=outputs, data=written)
    refused: SnapshotWriteError | goldens.GoldenTooLarge | None = None
    try:
        goldens.write_golden(directory, data, sidecar, max_bytes=limit)
    except (SnapshotWriteError, goldens.GoldenTooLarge) as error:
        refused = error  # failed below, outside the except: the message is not chained
    if isinstance(refused, SnapshotWriteError):
        context.fail(str(refused), check="golden")
    if refused is not None:
        context.fail(f"{refused}: goldens are meant to be small and committed\n"
                     "fix: build the golden's model from a tiny config (few layers, small "
                     "widths), or raise the limit with max_bytes= or the ini option "
                     "ckpt_golden_max_bytes", check="golden")


def _saved_by_project(context: CheckContext, model: torch.nn.Module, save_to: Any) -> bytes:
    """The bytes the project's saver writes for ``model``: a golden is one file."""
    __tracebackhide__ = True
    from pytest_ckpt.checks.user_code import error_line, user_frame

    path = context.folder("ckpt-golden-save") / "golden"
    raised: Exception | None = None
    try:
        save_to(model, path)
    except Exception as error:  # the project's saver: its frame, not a traceback
        raised = error
    if raised is not None:  # failed outside the except: not chained to the saver's error
        frame = user_frame(raised)
        context.fail(f"the project's saver (save_to=) raised {error_line(raised)} writing the "
                     f"golden of {context.nodeid}"
                     + (f"\n  raised at {frame.render()}" if frame else "")
                     + "\nfix: make save_to(model, path) write the checkpoint to path",
                     check="golden")
    if not path.is_file():
        what = "a directory" if path.is_dir() else "nothing"
        context.fail(f"ckpt.golden used wrongly in {context.nodeid}: save_to= wrote {what} at "
                     "the path it was given; a golden is one committed file\nfix: give "
                     "ckpt.golden a saver that writes one file (a golden of a save_pretrained "
                     "directory is not supported)", check="golden")
    return path.read_bytes()


def _message(context: CheckContext, model: torch.nn.Module, outcome: GoldenOutcome) -> str:
    stored = outcome.golden
    update = f"{stored.label.replace('-', ' ')} with: {context.update_command}"
    if outcome.unreadable is not None:
        return render_failure(
            f"golden checkpoint {stored.label} ({relative(stored.path)}) cannot be read: "
            f"{outcome.unreadable}", outcome.findings,
            f"fix: restore {stored.path.name} and {stored.sidecar.name} from version "
            f"control, or rewrite both under {update}", color=context.color)
    kinds = ", ".join(dict.fromkeys(finding.kind for finding in outcome.findings))
    raised = f"the load raised {outcome.error.rstrip(':')}" if outcome.error else ""
    why = f"{kinds} ({raised})" if kinds and raised else kinds or raised
    headline = (f"golden checkpoint {stored.label} ({relative(stored.path)}, written with "
                f"{outcome.written_with}) no longer loads into {type(model).__name__} as "
                f"it did: {why}")
    fix = (f"fix: keep this published checkpoint loading (remap old keys in load=..., or "
           f"map old layouts in a load_state_dict pre-hook of the model); if "
           f"breaking it is intended, delete {stored.path.name} or rewrite it under {update}")
    return render_failure(headline, outcome.findings, fix, color=context.color)


def _claim_golden(context: CheckContext, name: str | None) -> Path:
    """The manifest location the goldens are named after, claimed for this test."""
    __tracebackhide__ = True
    from pytest_ckpt.record.snapshots import golden_manifest_location

    location = golden_manifest_location(context.assertion, name)
    directory = goldens.golden_directory(location)
    context.claim_path(directory, name, folder=directory)
    return location


def _refusal_findings(error: CheckpointReadError) -> tuple[Finding, ...]:
    """A weights_only refusal of a golden as its ``unsafe_pickle`` finding."""
    from pytest_ckpt.formats.torch_zip import read_failure

    return tuple(read_failure(error)[1]) if error.unsafe else ()


def _size_option(value: int | str) -> int:
    try:
        return goldens.parse_size(value)
    except ValueError as error:
        raise CkptUsageError(f"max_bytes / ckpt_golden_max_bytes: {error}") from None


def _real_module(model: Any) -> None:
    import torch

    if not isinstance(model, torch.nn.Module):
        raise CkptUsageError(f"golden needs a torch.nn.Module, got {type(model).__name__}")
    if any(tensor.is_meta for tensor in model.state_dict().values()
           if isinstance(tensor, torch.Tensor)):
        raise CkptUsageError("golden needs a model with real tensors, not one built on the "
                             "meta device (use a tiny config on the CPU)")


@dataclass(frozen=True)
class GoldenOutcome:
    """What loading one golden into the current model found; ``ok`` when nothing."""

    golden: goldens.GoldenFile
    written_with: str  # "torch 2.1.2, pytest-ckpt 0.1.0"
    findings: tuple[Finding, ...] = ()
    error: str | None = None
    note: str | None = None  # set when the outputs matched within goldens.RTOL, not bitwise
    unreadable: str | None = None  # why the golden (or its sidecar) could not be read

    @property
    def ok(self) -> bool:
        return not self.findings and self.error is None and self.unreadable is None


def check_golden(golden: goldens.GoldenFile, target: torch.nn.Module, inputs: Any,
                 load: Callable[..., Any] | None,
                 load_from: Callable[..., Any] | None = None) -> GoldenOutcome:
    """Load ``golden`` into ``target`` (a fresh or poisoned model) through ``load`` (given
    the state_dict) or ``load_from`` (the project's loader, given the path) and compare keys,
    values and the output fingerprint with what the sidecar recorded."""
    from pytest_ckpt.formats.files import read_bounded

    sidecar = golden.provenance()
    written_with = f"torch {sidecar['torch']}, pytest-ckpt {sidecar['pytest_ckpt']}"
    data = read_bounded(golden.path, goldens.MAX_GOLDEN_READ, "golden")
    if hashlib.sha256(data).hexdigest() != sidecar["sha256"]:
        raise CheckpointReadError(golden.path, f"does not match the sha256 in "
                                  f"{golden.sidecar.name}: it changed after it was written "
                                  "(or an update was interrupted between the two files)")
    state = _state_of(golden, tolerant=load_from is not None)
    saved = Manifest.from_state_dict(state) if state is not None else _recorded(sidecar)
    before = prepare_target(target, state or {})
    model, failure = load_model(target, state, saved, golden.path, load=load or _strict_load,
                                load_from=load_from, reference_name="golden")
    if failure is not None:
        return GoldenOutcome(golden, written_with, failure[0], failure[1])
    findings = _key_findings(saved, model) if load is None else []
    if state is not None:
        findings += value_findings(state, model.state_dict(keep_vars=True),
                                   before if model is target else {})
    note = None if state is not None else (
        "values not compared: the golden cannot be read with weights_only=True (its outputs "
        "and keys were)")
    if sidecar.get("outputs") is not None and inputs is not None:
        with goldens.recorded_threads(sidecar):
            outputs = fingerprints(model_outputs(model, inputs, "the loaded model") or {})
        findings += _output_findings(sidecar, inputs, outputs)
        bitwise = all(outputs.get(name, {}).get("sha256") == recorded["sha256"]
                      for name, recorded in sidecar["outputs"].items())
        note = note or (None if bitwise else (
            f"outputs within rtol {goldens.RTOL:g} of those recorded under "
            f"{goldens.recorded_under(sidecar)}, not bitwise equal"))
    return GoldenOutcome(golden, written_with, tuple(sort_findings(findings)), note=note)


def _state_of(golden: goldens.GoldenFile, *, tolerant: bool) -> dict[str, Any] | None:
    """The golden's state_dict; with the project's loader, ``None`` when weights_only
    refuses it (the loader still runs)."""
    from pytest_ckpt.formats.torch_zip import load_weights_only, state_dict_of

    try:
        state: dict[str, Any] = state_dict_of(load_weights_only(golden.path), golden.path)
    except CheckpointReadError:
        if tolerant:
            return None
        raise
    return state


def _recorded(sidecar: dict[str, Any]) -> Manifest:
    """The manifest the sidecar recorded when the golden was written."""
    from pytest_ckpt.checkpoint.manifest import ManifestParseError

    try:
        return Manifest.parse("\n".join(sidecar.get("manifest", [])))
    except ManifestParseError:
        return Manifest(())


def _strict_load(target: torch.nn.Module, state: dict[str, Any]) -> Any:
    return target.load_state_dict(state, strict=True)


def _key_findings(saved: Manifest, target: torch.nn.Module) -> list[Finding]:
    return diagnose(saved, Manifest.from_module(target), facts=ModelFacts.from_module(target),
                    reference_name="golden")


def _output_findings(sidecar: dict[str, Any], inputs: Any,
                     outputs: dict[str, dict[str, Any]]) -> list[Finding]:

    recorded_inputs = sidecar.get("inputs") or {}
    current_inputs = fingerprints(flatten_outputs(inputs, "input"))
    changed = _differences(recorded_inputs, current_inputs)
    if changed:
        return [Finding("output", tuple(changed),
                        "inputs= gives other values than when the golden was written, so its "
                        "outputs cannot be compared: make inputs= deterministic",
                        tuple(f"{name}: {why}" for name, why in changed.items()))]
    differ = _differences(sidecar["outputs"], outputs)
    if not differ:
        return []
    return [Finding("output", tuple(differ),
                    f"eval-mode outputs on inputs= differ from those recorded when the golden "
                    f"was written (torch {sidecar.get('torch')})",
                    tuple(f"{name}: {why}" for name, why in differ.items()))]


def _differences(expected: dict[str, Any], actual: dict[str, Any]) -> dict[str, str]:
    differ = {}
    for name, recorded in expected.items():
        if name not in actual:
            differ[name] = "not produced by the current model"
        elif (why := goldens.fingerprint_difference(recorded, actual[name])) is not None:
            differ[name] = why
    return differ
