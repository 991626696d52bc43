"""One format's round-trip: save (the format's writer, or the project's ``save_to``), read
what was written (``weights_only=True``; inertly only, when the project's ``load_from`` reads
it), load into the target through the project's path, and judge the loaded model: keys,
values (bitwise), ties, outputs. An exception of the project's saver or loader is an outcome
with its findings and frame, never a traceback."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_ckpt.checkpoint.facts import ModelFacts
from pytest_ckpt.checkpoint.manifest import Manifest, dropped_ties, with_kept_ties
from pytest_ckpt.checks.load_runs import Recording
from pytest_ckpt.checks.outputs import model_outputs, output_findings
from pytest_ckpt.checks.own_loads import own_loads
from pytest_ckpt.checks.targets import prepare_target, tie_findings, value_findings
from pytest_ckpt.checks.user_code import error_line, raised_findings, raised_line, user_frame
from pytest_ckpt.diagnosis.engine import diagnose
from pytest_ckpt.diagnosis.findings import Finding, sort_findings
from pytest_ckpt.errors import CheckpointReadError, CkptUsageError, first_line
from pytest_ckpt.formats import get_format
from pytest_ckpt.formats.pages import released_as_loaded, settle

if TYPE_CHECKING:
    import torch

LoadFn = Callable[["torch.nn.Module", dict[str, Any]], Any]
PROJECT = "save_to"  # the outcome name of a round-trip through the project's saver


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
    inputs: Any = None
    load: LoadFn | None = None
    weight_norm: Any = "auto"  # "auto", False, or layouts that must load (layout_check.py)
    loaders: tuple[str, ...] = ("load_state_dict",)
    save_to: Callable[[Any, Path], Any] | None = None  # the project's saver (model, path)
    load_from: Callable[[Any, Path], Any] | None = None  # the project's loader (target, path)


def default_load(target: torch.nn.Module, state: dict[str, Any]) -> Any:
    return target.load_state_dict(state, strict=True)


def tied_load(target: torch.nn.Module, state: dict[str, Any]) -> Any:
    """``safetensors.torch.load_model``'s rule on a state_dict: strict, except that a key the
    file dropped because its tensor is tied (in ``target``) to a key it holds may be absent."""
    tied = {key for group in Manifest.from_module(target).tie_groups().values()
            if any(member in state for member in group) for key in group}
    result = target.load_state_dict(state, strict=False)
    missing = [key for key in result.missing_keys if key not in tied]
    if missing or result.unexpected_keys:
        return target.load_state_dict(state, strict=True)  # torch's own error, as strict
    return result


def _drops_ties(saved: Manifest | None, target: torch.nn.Module) -> bool:
    return saved is not None and bool(dropped_ties(saved, Manifest.from_module(target)))


def kept_ties(saved: Manifest, model: torch.nn.Module) -> Manifest:
    """``saved`` with the keys it dropped because their tensor is tied to one it holds, where
    the loaded model has that tie: the values and the tie are still checked, so the file's
    key set alone is not a finding."""
    return with_kept_ties(saved, Manifest.from_module(model))


def roundtrip_format(source: torch.nn.Module, target: torch.nn.Module, name: str, path: Path,
                     spec: RoundtripSpec, inputs: Any,
                     expected_outputs: dict[str, torch.Tensor] | None) -> FormatOutcome:
    """Save ``source`` in format ``name`` (or through ``spec.save_to``), load it into
    ``target`` and judge the model that was loaded."""
    try:
        releasable = _save(name, source, path, spec)
        loaded = _read(name, path, spec)
    except CheckpointReadError as error:  # a refusal, or a format's own failure (a DCP rank)
        if error.unsafe:
            from pytest_ckpt.formats.torch_zip import unsafe_finding

            return FormatOutcome(name, path, (unsafe_finding(error),))
        return FormatOutcome(name, path, error=error.reason)
    except _Raised as raised:
        return FormatOutcome(name, path, tuple(raised.findings), error=raised.line)
    saved = Manifest.from_state_dict(loaded) if loaded is not None else _inert(path)
    source_state = source.state_dict()
    before = prepare_target(target, source_state)
    with released_as_loaded(target) if releasable else nullcontext():
        model, failure = _load(target, loaded, saved, path, spec)
    if failure is not None:
        return FormatOutcome(name, path, *failure)
    del loaded
    findings = key_findings(kept_ties(saved or Manifest.from_module(source), model), model)
    findings += value_findings(source_state, model.state_dict(keep_vars=True),
                               before if model is target else {})
    findings += tie_findings(source, model)
    if expected_outputs is not None:
        findings += output_findings(expected_outputs, model_outputs(model, inputs,
                                                                    "the loaded model"))
    if saved is not None:
        findings = untied_consumer(findings, saved, source, model)
    return FormatOutcome(name, path, tuple(sort_findings(findings)))


def untied_consumer(findings: list[Finding], saved: Manifest, source: torch.nn.Module,
                    model: torch.nn.Module) -> list[Finding]:
    """One ``tied_weights`` finding, not three (missing, tie lost, value), for a key the file
    dropped because it is tied to a key it keeps, loaded into a model that does not re-tie
    it."""
    dropped = dropped_ties(saved, Manifest.from_module(source))
    loaded_ties = {key for group in Manifest.from_module(model).tie_groups().values()
                   for key in group}
    untied = sorted(key for key in dropped if key not in loaded_ties)
    if not untied:
        return findings
    explained = set(untied) | {dropped[key] for key in untied}
    rest = []
    for finding in findings:
        keys = tuple(key for key in finding.keys if key not in explained)
        if keys == finding.keys:
            rest.append(finding)
        elif keys and finding.kind not in ("tied_weights", "missing"):
            rest.append(replace(finding, keys=keys, details=()))
    details = tuple(f"{key}: tied to {dropped[key]} in the saved model; the file keeps "
                    f"{dropped[key]} only, and the loaded model has its own {key}"
                    for key in untied)
    return [*rest, Finding(
        "tied_weights", tuple(untied),
        "not in the saved file because it is tied to a key the file keeps (safetensors "
        "stores one key per tied group), and the loaded model does not re-tie it, so it "
        "keeps its initial value", details,
        fix=f"fix: re-tie after loading (model.{untied[0]} = model.{dropped[untied[0]]}; "
            f"transformers: tie_word_embeddings=True), or export every key: clone the tied "
            f"tensor before safetensors.torch.save_file")]


class _Raised(Exception):
    """The project's saver raised (carried out of the save step as findings)."""

    def __init__(self, findings: list[Finding], line: str) -> None:
        super().__init__(line)
        self.findings, self.line = findings, line


def _save(name: str, source: torch.nn.Module, path: Path, spec: RoundtripSpec) -> bool:
    """Write the checkpoint; whether its pages can be given back as it loads."""
    if spec.save_to is not None:
        try:
            spec.save_to(source, path)
        except Exception as error:  # the project's saver: a finding with its frame
            frame = user_frame(error)
            where = (f"raised at {frame.render()}",) if frame else ()
            raise _Raised([Finding("not_loaded", (), f"the project's saver (save_to=) raised "
                                                     f"{error_line(error)}", where)],
                          f"save_to raised {error_line(error)}") from None
        if not path.exists():
            raise CheckpointReadError(path, "was not written: save_to= returned without "
                                            "creating it", advice="fix: write to the path "
                                            "the saver is given")
        return False
    fmt = get_format(name)
    try:
        fmt.save(source, path)
    except (CheckpointReadError, CkptUsageError):
        raise
    except Exception as error:  # the format's library refused the model's state
        raise CheckpointReadError(path, f"could not be saved in the {fmt.name} format "
                                        f"({type(error).__name__}: {first_line(error)})"
                                  ) from None
    return fmt.memory_mapped and settle(path)  # only a large, flushed file's pages


def _read(name: str, path: Path, spec: RoundtripSpec) -> dict[str, Any] | None:
    """The state_dict written, read ``weights_only=True``; ``None`` when the project's own
    loader reads the path (its file is then only inspected inertly)."""
    if spec.load_from is not None:
        return None
    if spec.save_to is not None:
        from pytest_ckpt.formats import load_checkpoint
        from pytest_ckpt.formats.torch_zip import state_dict_of

        state: dict[str, Any] = state_dict_of(load_checkpoint(path), path)
        return state
    return get_format(name).load(path)


def _inert(path: Path) -> Manifest | None:
    """The manifest of what was written, when pytest-ckpt can read it header-only."""
    from pytest_ckpt.formats import read_checkpoint_manifest

    try:
        return read_checkpoint_manifest(path)
    except CheckpointReadError:
        return None


def _load(target: torch.nn.Module, loaded: dict[str, Any] | None, saved: Manifest | None,
          path: Path, spec: RoundtripSpec,
          ) -> tuple[torch.nn.Module, tuple[tuple[Finding, ...], str] | None]:
    """The loaded model (what ``load_from`` returned, or the target), or the failure."""
    load = spec.load or (tied_load if _drops_ties(saved, target) else default_load)
    return load_model(target, loaded, saved, path, load=load, load_from=spec.load_from)


def load_model(target: torch.nn.Module, state: dict[str, Any] | None, saved: Manifest | None,
               path: Path, *, load: Callable[..., Any], load_from: Callable[..., Any] | None,
               reference_name: str = "saved file",
               ) -> tuple[torch.nn.Module, tuple[tuple[Finding, ...], str] | None]:
    """Load through the project's ``load_from(target, path)`` (a returned module is the
    loaded model) or ``load(target, state)``; the loaded model, or the failure's findings
    and error line."""
    import torch

    if load_from is None and state is not None:
        return target, load_through(load, target, state,
                                    saved or Manifest.from_state_dict(state), reference_name)
    handed: list[Manifest] = []
    try:
        with Recording(target, handed, Manifest.from_state_dict), own_loads():
            result = load_from(target, path) if load_from is not None else None
    except Exception as error:  # the project's loader failed: diagnose, then report it
        findings = raised_findings(error, model=target, handed=handed[-1] if handed else None,
                                   container=state)
        return target, (tuple(findings), raised_line(error))
    return (result if isinstance(result, torch.nn.Module) else target), None


def load_through(load: Callable[..., Any], target: torch.nn.Module, state: dict[str, Any],
                 saved: Manifest, reference_name: str = "saved file",
                 ) -> tuple[tuple[Finding, ...], str] | None:
    """Run the user's load path; when it raises, the findings and the error line. The keys
    diagnosed are those the load path handed to ``target.load_state_dict`` (after its own
    remapping), or the saved file's when it never got that far."""
    handed: list[Manifest] = []
    try:
        with Recording(target, handed, Manifest.from_state_dict), own_loads():
            load(target, state)
    except Exception as error:  # the user's load path failed: diagnose, then report it
        passed = handed[-1] if handed else saved
        findings = raised_findings(error, model=target, handed=passed, container=state,
                                   reference_name=reference_name if passed == saved
                                   else "state_dict the load path passed")
        return tuple(findings), raised_line(error)
    return None


def key_findings(saved: Manifest, target: torch.nn.Module,
                 name: str = "saved file") -> list[Finding]:
    return diagnose(saved, Manifest.from_module(target), facts=ModelFacts.from_module(target),
                    reference_name=name)
