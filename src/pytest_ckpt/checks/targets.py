"""The load target of a round-trip or golden: poisoned where it equals the source (so a load
that skips a tensor cannot pass), witnessed, and judged after the load by values and ties."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from pytest_ckpt.checkpoint.manifest import Manifest
from pytest_ckpt.checkpoint.values import Witness, bitwise_equal, mismatch_summary, poison_
from pytest_ckpt.diagnosis.findings import Finding

if TYPE_CHECKING:
    import torch


def prepare_target(target: torch.nn.Module,
                   source_state: dict[str, Any]) -> dict[str, Witness]:
    """Poison target tensors equal to the source (so a load that skips them cannot pass),
    then take a write witness of every target tensor."""
    import torch

    state = target.state_dict(keep_vars=True)
    for key, tensor in state.items():
        reference = source_state.get(key)
        if isinstance(tensor, torch.Tensor) and isinstance(reference, torch.Tensor) \
                and bitwise_equal(tensor, reference):
            poison_(tensor, avoid=reference)
    return {key: Witness.of(tensor) for key, tensor in state.items()
            if isinstance(tensor, torch.Tensor)}


def poisoned_copy(source: torch.nn.Module) -> torch.nn.Module:
    """A deep copy whose saved tensors are fresh storage poisoned to differ from the source
    in every element (not copies of the values); ties are kept, non-persistent buffers are
    copied as they are."""
    import torch

    memo: dict[int, Any] = {}
    for tensor in source.state_dict(keep_vars=True).values():
        if not isinstance(tensor, torch.Tensor) or id(tensor) in memo:
            continue
        fresh = torch.empty_like(tensor)
        poison_(fresh, avoid=tensor)
        if isinstance(tensor, torch.nn.Parameter):
            fresh = torch.nn.Parameter(fresh, requires_grad=tensor.requires_grad)
        memo[id(tensor)] = fresh
    for module in source.modules():  # legacy weight_norm keeps a computed, non-leaf `weight`
        for value in vars(module).values():
            if isinstance(value, torch.Tensor) and not value.is_leaf:
                memo.setdefault(id(value), value.detach().clone())
    return copy.deepcopy(source, memo)


def value_findings(expected: dict[str, Any], actual: dict[str, Any],
                   before: dict[str, Witness]) -> list[Finding]:
    """``actual`` is the target's ``state_dict(keep_vars=True)`` after the load (the witnesses
    know the objects, not copies of them)."""
    import torch

    not_loaded: list[str] = []
    wrong: list[str] = []
    details: list[str] = []
    for key, value in expected.items():
        got = actual.get(key)
        if not isinstance(value, torch.Tensor) or not isinstance(got, torch.Tensor):
            continue
        if got.shape != value.shape or got.dtype != value.dtype or bitwise_equal(got, value):
            continue  # shape and dtype drift are reported from the manifests
        if key in before and not before[key].changed(got):
            not_loaded.append(key)
        else:
            wrong.append(key)
            details.append(f"{key}: {mismatch_summary(value, got)}")
    findings = []
    if not_loaded:
        findings.append(Finding(
            "not_loaded", tuple(not_loaded),
            "still at the target's initial (poisoned) value after the load: the load path "
            "never wrote these tensors, whatever keys it reported"))
    if wrong:
        findings.append(Finding("value", tuple(wrong),
                                "loaded value differs bitwise from the saved value",
                                tuple(details)))
    return findings


def tie_findings(source: torch.nn.Module, target: torch.nn.Module) -> list[Finding]:
    before = set(Manifest.from_module(source).tie_groups().values())
    after = set(Manifest.from_module(target).tie_groups().values())
    lost = sorted(key for group in before - after for key in group)
    if not lost:
        return []
    return [Finding("tied_weights", tuple(lost),
                    "tensors that share storage in the saved model no longer share it after "
                    "the load (a later update to one will not reach the other)")]


# torch.nn.init's value initialisers (in place, returning the tensor); their old aliases
# without the underscore are deprecated wrappers of these and are patched with them
_INITIALISERS = ("uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "eye_",
                 "dirac_", "xavier_uniform_", "xavier_normal_", "kaiming_uniform_",
                 "kaiming_normal_", "orthogonal_", "sparse_")


@contextmanager
def _initialisers_skipped() -> Iterator[None]:
    """``torch.nn.init``'s initialisers leave the tensor as it is (``torch.empty``'s memory),
    as transformers' ``no_init_weights`` does; restored on exit."""
    from torch.nn import init

    def keep(tensor: Any, *_: Any, **__: Any) -> Any:
        return tensor

    saved = {name: getattr(init, name) for name in _INITIALISERS if hasattr(init, name)}
    for name in saved:
        setattr(init, name, keep)
    try:
        yield
    finally:
        for name, function in saved.items():
            setattr(init, name, function)


def build_target(make_target: Callable[[], torch.nn.Module],
                 source: torch.nn.Module) -> Any:
    """``make_target()`` built without the value initialisers the load overwrites, where that
    is sound: the build raised nothing and every tensor the state_dict leaves out
    (non-persistent buffers, a parameter a state_dict hook drops, a tensor attribute) holds
    the source's bits. Otherwise ``make_target()`` again, with its initialisers."""
    try:
        with _initialisers_skipped():
            target = make_target()
    except Exception:  # a build that needs initialised values: today's path says why
        return make_target()
    import torch

    if not isinstance(target, torch.nn.Module) or not _unsaved_differ(target, source):
        return target  # not a module: the caller says so
    del target
    return make_target()


def fresh_target(make_target: Callable[[], torch.nn.Module] | None,
                 source: torch.nn.Module) -> Any:
    """The load target: ``make_target()`` built as :func:`build_target` says, or without a
    factory the source's :func:`poisoned_copy`."""
    return build_target(make_target, source) if make_target is not None else poisoned_copy(source)


def _unsaved_differ(target: torch.nn.Module, source: torch.nn.Module) -> bool:
    """Whether a tensor of ``target`` that its state_dict does not hold is missing from
    ``source`` or differs from it in bits (so it would not come from the load)."""
    import torch

    saved = {id(value) for value in target.state_dict(keep_vars=True).values()}
    modules = dict(source.named_modules(remove_duplicate=False))
    for path, module in target.named_modules(remove_duplicate=False):
        twin = modules.get(path)
        for name, value in vars(module).items():
            values = value.items() if name in ("_parameters", "_buffers") else (
                [(name, value)] if isinstance(value, torch.Tensor) and value.is_leaf else [])
            for key, tensor in values:
                if tensor is None or id(tensor) in saved:
                    continue
                reference = getattr(twin, key, None) if twin is not None else None
                if not isinstance(reference, torch.Tensor) or reference.shape != tensor.shape \
                        or reference.dtype != tensor.dtype or reference.device != tensor.device \
                        or not bitwise_equal(tensor, reference):
                    return True
    return False
