"""Declared partial loads: a checkpoint may leave out or carry extra keys only where the test
says so, and success is measured on values (every tensor the checkpoint provides must have
reached the model; every tensor it does not provide must be a declared one)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any

from pytest_ckpt.findings import Finding

if TYPE_CHECKING:
    import torch


def matches(pattern: str, key: str) -> bool:
    """A glob on keys (``text_encoder.*``), or a component name (``text_encoder``)."""
    if any(char in pattern for char in "*?["):
        return fnmatchcase(key, pattern)
    return key == pattern or key.startswith(pattern + ".")


def matched(patterns: Iterable[str], keys: Iterable[str]) -> set[str]:
    patterns = tuple(patterns)
    return {key for key in keys if any(matches(pattern, key) for pattern in patterns)}


@dataclass(frozen=True)
class LoadResult:
    """Which of the model's tensors a load wrote, classified against the checkpoint."""

    not_written: tuple[str, ...]  # model keys still at their pre-load value
    wrong_value: tuple[str, ...]  # written, but not with the checkpoint's value
    unexpected: tuple[str, ...]  # checkpoint keys the model does not have


def load_and_classify(model: torch.nn.Module, state: Mapping[str, Any],
                      load: Callable[[torch.nn.Module, dict[str, Any]], Any] | None,
                      ) -> LoadResult:
    """Poison the model (each tensor to differ in every element from the value the load
    should write: the checkpoint's, or its own where the checkpoint has none), load through
    ``load`` (default ``load_state_dict(strict=False)``), classify, then put back the original
    values of the tensors still at their poison (so the model ends with exactly what the
    load wrote)."""
    import torch

    from pytest_ckpt.values import poison_

    tensors = {k: v for k, v in model.state_dict(keep_vars=True).items()
               if isinstance(v, torch.Tensor)}
    original = {key: tensor.detach().clone() for key, tensor in tensors.items()}
    references: dict[int, torch.Tensor] = {}  # tied keys share one object: one poison
    for key, tensor in sorted(tensors.items(), key=lambda item: item[0] not in state):
        references.setdefault(id(tensor), _reference(state.get(key), original[key]))
    for tensor in {id(tensor): tensor for tensor in tensors.values()}.values():
        poison_(tensor, avoid=references[id(tensor)])
    report = (load or (lambda m, s: m.load_state_dict(s, strict=False)))(model, dict(state))
    after = model.state_dict(keep_vars=True)
    not_written = tuple(sorted(
        key for key, tensor in tensors.items() if after.get(key) is tensor
        and _at_poison(tensor, references[id(tensor)])))
    wrong = tuple(sorted(key for key in tensors if key not in not_written
                         and key in after and not _holds(after[key], state.get(key))))
    with torch.no_grad():
        for key in not_written:
            after[key].copy_(original[key])
    # load_state_dict's own report knows about keys its hooks converted (weight_norm compat)
    unexpected = getattr(report, "unexpected_keys", None)
    if unexpected is None:
        unexpected = set(state) - set(tensors)
    return LoadResult(not_written, wrong, tuple(sorted(unexpected)))


def _reference(provided: Any, own: torch.Tensor) -> torch.Tensor:
    """The value a load should write into a tensor whose own value is ``own``: the
    checkpoint's when it provides one of the same shape and dtype."""
    import torch

    if isinstance(provided, torch.Tensor) and provided.shape == own.shape \
            and provided.dtype == own.dtype and provided.is_quantized == own.is_quantized:
        return provided
    return own


def _at_poison(tensor: torch.Tensor, reference: torch.Tensor) -> bool:
    """Whether ``tensor`` still holds the poison made for ``reference`` (recomputed: the
    poison is a function of the reference). An empty tensor has nothing to write."""
    from pytest_ckpt.values import bitwise_equal, poisoned_value

    poison = poisoned_value(reference)
    return poison is not None and bitwise_equal(tensor, poison)


def _holds(tensor: Any, provided: Any) -> bool:
    """Whether a written model tensor holds the checkpoint's value (cast to its dtype, as
    ``load_state_dict`` does); ``True`` when the checkpoint provides none under that key."""
    import torch

    from pytest_ckpt.values import bitwise_equal

    if not isinstance(provided, torch.Tensor) or not isinstance(tensor, torch.Tensor):
        return True
    if provided.shape != tensor.shape:
        return False
    if provided.dtype != tensor.dtype and not (provided.is_quantized or tensor.is_quantized):
        provided = provided.to(tensor.dtype)
    return bitwise_equal(tensor, provided)


def declared_findings(result: LoadResult, state_keys: Iterable[str], *,
                      allow_missing: tuple[str, ...], allow_unexpected: tuple[str, ...],
                      ) -> list[Finding]:
    """Findings for declarations that are stale or over-broad, and for undeclared gaps."""
    provided = set(state_keys)
    missing = set(result.not_written)
    findings = []
    for pattern in allow_missing:
        hidden = matched([pattern], provided - set(result.unexpected))
        if not matched([pattern], missing):
            findings.append(_stale("allow_missing", pattern, "no tensor the load left out"))
        elif hidden:
            findings.append(Finding("missing", tuple(sorted(hidden)), (
                f"allow_missing={pattern!r} is over-broad: it also covers "
                f"{len(hidden)} keys the checkpoint does provide")))
    for pattern in allow_unexpected:
        if not matched([pattern], result.unexpected):
            findings.append(_stale("allow_unexpected", pattern, "no unexpected checkpoint key"))
    silent = sorted((missing & provided) - matched(allow_missing, missing & provided))
    if silent:
        findings.append(Finding("not_loaded", tuple(silent), (
            "the checkpoint provides these tensors but the load left them at their initial "
            "value (a key remap or a strict=False load dropped them)")))
    if result.wrong_value:
        findings.append(Finding("value", result.wrong_value,
                                "loaded, but not with the checkpoint's value"))
    return findings


def _stale(option: str, pattern: str, what: str) -> Finding:
    return Finding("missing", (), f"{option}={pattern!r} is stale: it matches {what}; "
                                  "remove it from the declaration")
