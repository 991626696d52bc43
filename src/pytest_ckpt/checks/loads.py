"""``ckpt.assert_loads``, declared partial loads: a checkpoint may leave out or carry extra keys
only where the test says so, and success is measured on values (every tensor the checkpoint
provides must have reached the model; every tensor it does not provide must be a declared
one)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_ckpt.checkpoint.facts import ModelFacts
from pytest_ckpt.checkpoint.manifest import Manifest
from pytest_ckpt.checks.context import CheckContext
from pytest_ckpt.diagnosis.engine import diagnose
from pytest_ckpt.diagnosis.findings import Finding, render_failure

if TYPE_CHECKING:
    import torch


def assert_loads(context: CheckContext, model: torch.nn.Module,
                 checkpoint: Mapping[str, Any] | str | Path, *, allow_missing: Any = (),
                 allow_unexpected: Any = (), load: Callable[..., Any] | None = None,
                 safe_globals: Sequence[Any] = ()) -> None:
    """Load ``checkpoint`` into ``model`` through ``load`` (default
    ``load_state_dict(strict=False)``) and fail on anything not declared: a tensor left out
    that ``allow_missing`` does not cover, an extra key ``allow_unexpected`` does not cover, a
    declaration that matches nothing (stale) or hides provided keys (over-broad), a provided
    tensor whose value did not reach the model."""
    __tracebackhide__ = True
    missing_patterns = context.usage(patterns, allow_missing)
    unexpected_patterns = context.usage(patterns, allow_unexpected)
    state = _state_dict_of(context, checkpoint, safe_globals)
    before = Manifest.from_module(model)
    facts = ModelFacts.from_module(model)
    result = load_and_classify(model, state, load)
    gaps = set(result.not_written) - set(state) - matched(missing_patterns, result.not_written)
    extra = set(result.unexpected) - matched(unexpected_patterns, result.unexpected)
    findings = diagnose(
        Manifest.from_state_dict({k: state[k] for k in extra}),
        Manifest(tuple(row for row in before if row.key in gaps)), facts=facts)
    findings += declared_findings(result, state, allow_missing=missing_patterns,
                                  allow_unexpected=unexpected_patterns)
    context.record("loads", findings)
    if findings:
        name = checkpoint if isinstance(checkpoint, (str, Path)) else "the state_dict"
        context.fail(render_failure(
            f"checkpoint {name} does not load into {type(model).__name__} as declared",
            findings, "fix: declare expected gaps with allow_missing=[...] / "
            "allow_unexpected=[...], or fix the key mapping in the load path",
            color=context.color))


def _state_dict_of(context: CheckContext, checkpoint: Any,
                   safe_globals: Sequence[Any]) -> dict[str, Any]:
    __tracebackhide__ = True
    from pytest_ckpt.formats.torch_zip import state_dict_of

    loaded = context.loaded(checkpoint, "loads", safe_globals, tensors_only=True)
    path = Path(str(checkpoint)) if isinstance(checkpoint, (str, Path)) else None
    state: dict[str, Any] = context.reading("loads", lambda: state_dict_of(
        loaded, path or Path("<state_dict>")))
    return state


def patterns(value: Any) -> tuple[str, ...]:
    """``allow_missing`` / ``allow_unexpected``: one glob or a sequence of globs."""
    from pytest_ckpt.errors import CkptUsageError

    found = (value,) if isinstance(value, str) else tuple(value)
    if not all(isinstance(pattern, str) for pattern in found):
        raise CkptUsageError(f"allow_missing/allow_unexpected take key globs, got {value!r}")
    return found


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

    from pytest_ckpt.checkpoint.values import poison_

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
    from pytest_ckpt.checkpoint.values import bitwise_equal, poisoned_value

    poison = poisoned_value(reference)
    return poison is not None and bitwise_equal(tensor, poison)


def _holds(tensor: Any, provided: Any) -> bool:
    """Whether a written model tensor holds the checkpoint's value (cast to its dtype, as
    ``load_state_dict`` does); ``True`` when the checkpoint provides none under that key."""
    import torch

    from pytest_ckpt.checkpoint.values import bitwise_equal

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
