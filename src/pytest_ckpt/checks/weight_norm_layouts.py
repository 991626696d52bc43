"""The round-trip's weight_norm check: checkpoints saved in each weight_norm layout must load
into the model, through each loader path a user may take, with identical values and outputs.

Loader paths: ``load_state_dict`` (the user's load path, ``load=``), ``assign`` (a target
built on the ``meta`` device, ``load_state_dict(assign=True)``), ``safetensors``
(``safetensors.torch.load_model``) and ``dcp`` (``torch.distributed.checkpoint`` in one
process, which bypasses load_state_dict pre-hooks).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_ckpt.checkpoint.layouts import LEGACY, PARAMETRIZED, REMOVED
from pytest_ckpt.checkpoint.values import bitwise_equal
from pytest_ckpt.diagnosis.findings import Finding
from pytest_ckpt.errors import CkptUsageError

if TYPE_CHECKING:
    import torch

LOADERS = ("load_state_dict", "assign", "safetensors", "dcp")
_KEYS = {LEGACY: "weight_g/weight_v", PARAMETRIZED: "parametrizations.weight.original0/1",
         REMOVED: "plain weight"}


@dataclass(frozen=True)
class LayoutLoad:
    """How one layout fared through one loader path."""

    layout: str
    loader: str
    problem: str | None  # None: loaded with identical values and outputs


def layouts_option(value: Any, source: torch.nn.Module) -> tuple[str, ...]:
    """``"auto"`` (legacy and parametrized when the model is weight-normed), ``False``, or an
    explicit sequence of layouts."""
    from pytest_ckpt.checkpoint.weight_norm import LAYOUTS, detect

    if value is False or value is None:
        return ()
    if value == "auto":
        return (LEGACY, PARAMETRIZED) if detect(source) else ()
    names = (value,) if isinstance(value, str) else tuple(value)
    unknown = [name for name in names if name not in LAYOUTS]
    if unknown or not names:
        raise CkptUsageError(f"weight_norm= must be 'auto', False or layouts from {LAYOUTS}; "
                             f"got {value!r}")
    return names


def loaders_option(value: Any) -> tuple[str, ...]:
    names = (value,) if isinstance(value, str) else tuple(value)
    unknown = [name for name in names if name not in LOADERS]
    if unknown or not names:
        raise CkptUsageError(f"loaders= must name loader paths from {LOADERS}; got {value!r}")
    return names


def check_layouts(source: torch.nn.Module, make_target: Callable[[], torch.nn.Module],
                  make_meta_target: Callable[[], torch.nn.Module], layouts: tuple[str, ...],
                  loaders: tuple[str, ...], load: Callable[..., Any] | None,
                  run: Callable[[torch.nn.Module], dict[str, torch.Tensor] | None],
                  directory: Path) -> list[Finding]:
    """One ``weight_norm_layout`` finding per layout that fails some loader path."""
    from pytest_ckpt.checkpoint.weight_norm import map_state_dict

    expected_state = source.state_dict()
    expected_outputs = run(source)
    results = []
    for layout in layouts:
        state = map_state_dict(expected_state, layout)
        for loader in loaders:
            builder = make_meta_target if loader == "assign" else make_target
            attempt = partial(_load, loader, builder, state, load, directory / layout)
            problem = _try(attempt, expected_state, expected_outputs, run,
                           exact=layout != REMOVED)
            results.append(LayoutLoad(layout, loader, problem))
    from pytest_ckpt.checkpoint.layouts import weight_norm_layouts

    own = set(weight_norm_layouts(expected_state).values())
    return _findings(type(source).__name__, results, own.pop() if len(own) == 1 else None)


def _try(attempt: Callable[[], torch.nn.Module], expected_state: dict[str, Any],
         expected_outputs: dict[str, torch.Tensor] | None,
         run: Callable[[torch.nn.Module], dict[str, torch.Tensor] | None],
         *, exact: bool) -> str | None:
    try:
        target = attempt()
    except (KeyboardInterrupt, SystemExit):
        raise
    except Unavailable:
        return None  # nothing to check: this torch cannot build the target that way
    except BaseException as error:  # DCP's CheckpointException derives from BaseException
        return f"{type(error).__name__}: {_last_line(error)}"
    if any(t.device.type == "meta" for t in target.state_dict().values()):
        return "tensors left on the meta device (not loaded)"
    loaded = target.state_dict()
    differ = [key for key, value in expected_state.items()
              if key not in loaded or not _same(value, loaded[key], exact)]
    if differ:
        return f"{len(differ)} tensors differ after the load, e.g. {differ[0]}"
    if expected_outputs is None or _has_meta(target):
        return None
    return None if _same_outputs(expected_outputs, run(target), exact) else "outputs differ"


class Unavailable(Exception):
    """The loader path cannot be tried with this model and torch (not a failed load)."""


def _load(loader: str, build: Callable[[], torch.nn.Module], state: dict[str, Any],
          load: Callable[..., Any] | None, directory: Path) -> torch.nn.Module:
    try:
        target = build()
    except NotImplementedError as error:  # e.g. weight_norm on `meta` before torch 2.2
        raise Unavailable(_last_line(error)) from None
    directory.mkdir(parents=True, exist_ok=True)
    if loader == "load_state_dict":
        (load or (lambda model, sd: model.load_state_dict(sd, strict=True)))(target, dict(state))
    elif loader == "assign":
        target.load_state_dict(dict(state), strict=True, assign=True)
    elif loader == "safetensors":
        _safetensors_roundtrip(target, state, directory / "layout.safetensors")
    else:
        _dcp_roundtrip(target, state, directory / "dcp")
    return target


def _safetensors_roundtrip(target: torch.nn.Module, state: dict[str, Any], path: Path) -> None:
    import safetensors.torch

    unique: dict[int, str] = {}
    tensors = {}
    for key, value in state.items():  # safetensors refuses shared storage: keep one key
        owner = unique.setdefault(value.untyped_storage().data_ptr(), key)
        if owner == key:
            tensors[key] = value.contiguous()
    safetensors.torch.save_file(tensors, str(path))
    safetensors.torch.load_model(target, str(path), strict=True)


def _dcp_roundtrip(target: torch.nn.Module, state: dict[str, Any], path: Path) -> None:
    from pytest_ckpt.formats.dcp import load_state, save_state

    save_state(state, path)
    loaded = target.state_dict()
    load_state(loaded, path)
    target.load_state_dict(loaded, strict=True)


def _has_meta(model: torch.nn.Module) -> bool:
    return any(b.device.type == "meta" for b in model.buffers())


def _same(expected: torch.Tensor, actual: torch.Tensor, exact: bool) -> bool:
    import torch

    if exact or not expected.is_floating_point():
        return bitwise_equal(expected, actual)
    return expected.shape == actual.shape and expected.dtype == actual.dtype and bool(
        torch.allclose(expected, actual, rtol=1e-5, atol=1e-6))


def _same_outputs(expected: dict[str, torch.Tensor], actual: dict[str, torch.Tensor] | None,
                  exact: bool) -> bool:
    import torch

    actual = actual or {}
    if exact:
        return all(name in actual and bitwise_equal(value, actual[name])
                   for name, value in expected.items())
    # a plain weight exported after remove_weight_norm() loads by recomputing g and v: equal
    # up to float rounding (same shapes: never broadcast)
    return all(name in actual and value.shape == actual[name].shape
               and bool(torch.allclose(value, actual[name], rtol=1e-5, atol=1e-6))
               for name, value in expected.items())


def _last_line(error: BaseException) -> str:
    failures = getattr(error, "failures", None)  # DCP's CheckpointException: rank -> error
    if isinstance(failures, dict) and failures:
        inner = next(iter(failures.values()))
        if isinstance(inner, tuple) and inner and isinstance(inner[0], BaseException):
            inner = inner[0]  # newer torch keeps (exception, traceback summary)
        if isinstance(inner, BaseException):
            return f"{type(inner).__name__}: {_last_line(inner)}"
        inner_text = str(inner)
    else:
        inner_text = str(error)
    lines = [line.strip() for line in inner_text.strip().splitlines() if line.strip()]
    missing = [line for line in lines if "Missing key" in line or "Unexpected key" in line]
    line = (missing or lines or [""])[-1 if missing else 0]
    return line if len(line) <= 160 else line[:157] + "..."


def _findings(model_name: str, results: list[LayoutLoad],
              model_layout: str | None) -> list[Finding]:
    findings = []
    for layout in dict.fromkeys(result.layout for result in results):
        mine = [result for result in results if result.layout == layout]
        failing = [result for result in mine if result.problem]
        if not failing:
            continue
        loads = [result.loader for result in mine if not result.problem]
        findings.append(Finding(
            "weight_norm_layout", (),
            f"checkpoints in the {layout} weight_norm layout ({_KEYS[layout]}) do not load into "
            f"{model_name} through {', '.join(r.loader for r in failing)}"
            + (f" (they do through {', '.join(loads)})" if loads else ""),
            (*(f"{result.loader}: {result.problem}" for result in failing),
             *layout_fix(layout, model_layout, [result.loader for result in failing]))))
    return findings


_RENAME = {(PARAMETRIZED, LEGACY): ("parametrizations.weight.original0", "weight_g",
                                    "parametrizations.weight.original1", "weight_v"),
           (LEGACY, PARAMETRIZED): ("weight_g", "parametrizations.weight.original0",
                                    "weight_v", "parametrizations.weight.original1")}
_HELPER = ("or, outside model code, pytest_ckpt.weight_norm.map_state_dict(state_dict, "
           "model=model) before loading (pytest_ckpt.compat.accept_any_weight_norm installs "
           "such a hook, but makes pytest-ckpt a runtime dependency of the model)")


def layout_fix(checkpoint: str, model: str | None, loaders: list[str]) -> tuple[str, ...]:
    """The remedy, plain torch first: a load_state_dict pre-hook in the model that maps the
    checkpoint's layout into the model's (shown), then pytest-ckpt's own mapping."""
    if loaders == ["dcp"]:
        return ("fix: torch.distributed.checkpoint bypasses load hooks: convert such "
                "checkpoints once (load through load_state_dict, save again with DCP)",)
    pair = _RENAME.get((checkpoint, model or ""))
    if pair is not None:
        old0, new0, old1, new1 = pair
        return (f"fix, plain torch, in the model's __init__: self._register_load_state_dict_"
                f"pre_hook(hook) (public register_load_state_dict_pre_hook from torch 2.5), "
                f"where hook(state_dict, prefix, *_) renames each key ending in {old0!r} / "
                f"{old1!r} to {new0!r} / {new1!r}", _HELPER)
    if checkpoint == REMOVED:
        return ("fix, plain torch: build the model with weight_norm, remove it "
                "(torch.nn.utils.remove_weight_norm, or parametrize.remove_parametrizations), "
                "load the plain weights, then apply weight_norm again (it sets weight_v = "
                "weight, weight_g = the norm of weight over every dim except its dim, 0 by "
                "default)", _HELPER)
    return ("fix, plain torch: in a load_state_dict pre-hook, replace each weight_g/weight_v "
            "pair by weight = torch._weight_norm(weight_v, weight_g, 0)", _HELPER)
