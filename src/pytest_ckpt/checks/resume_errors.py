"""What an exception of the user's training code means, as findings with the remedy: a
weights_only refusal of what save() wrote (the globals, the RNG state that needs them), a
scheduler resumed without ``initial_lr`` (and whether the file holds optimizer state at all),
RNG state saved as floats, the optimizer's errors (:mod:`optimizer_state_errors`) and lookups
of the resume code located in the checkpoint."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from pytest_ckpt.checks.optimizer_state_errors import (
    group_size_findings,
    optimizer_lookup_findings,
)
from pytest_ckpt.checks.resume_findings import ResumeFailure, Saved
from pytest_ckpt.checks.user_code import (
    UserFrame,
    error_line,
    folded_message,
    frame_container,
    lookup_findings,
    user_frame,
)
from pytest_ckpt.diagnosis.findings import Finding

if TYPE_CHECKING:
    import torch

    from pytest_ckpt.errors import CheckpointReadError

_RNG_NAME = re.compile(r"rng|random|generator", re.IGNORECASE)
_TORCH_GLOBAL = re.compile(r"(?:GLOBAL |Unsupported class )([\w.]*\w)")
_OPTIMIZER_NAME = re.compile(r"optim", re.IGNORECASE)


def failure_findings(failure: ResumeFailure, saved: Saved | None,
                     model: torch.nn.Module | None) -> list[Finding]:
    """The findings for training code that raised: the frame, the error, and what the
    checkpoint (or, in the uninterrupted run, the code's own objects) held."""
    error = failure.error
    frame = user_frame(error)
    where = f"raised at {frame.render()}" if frame else "raised in the training code"
    if failure.uninterrupted:
        return _uninterrupted_findings(failure, frame, model, where)
    assert saved is not None
    hint = (f"the resume path raised {error_line(error, 160)} (resuming after step "
            f"{failure.step})")
    if saved.refused is not None:
        return _refused_findings(failure, saved.refused, frame, where)
    if "initial_lr" in str(error):
        return [_initial_lr_finding(failure, saved, where)]
    found = (group_size_findings(error, frame, failure.step)
             or optimizer_lookup_findings(error, frame, saved.container, failure.step)
             or _rng_dtype_findings(failure, saved, where))
    if found:
        return [Finding(finding.kind, finding.keys, finding.hint,
                        (*finding.details, saved.held()), finding.related, finding.fix)
                for finding in found]
    found = lookup_findings(error, frame, saved.container, model)
    if found and any(finding.fix for finding in found):
        return [Finding(finding.kind, finding.keys,
                        f"resuming after step {failure.step}, {finding.hint}",
                        (*finding.details, saved.held()), finding.related, finding.fix)
                for finding in found]
    return [Finding("training_state", (), hint, (where, saved.held()))]


def _uninterrupted_findings(failure: ResumeFailure, frame: UserFrame | None,
                            model: torch.nn.Module | None, where: str) -> list[Finding]:
    error = failure.error
    run = (f"the uninterrupted run raised {error_line(error, 160)} at step "
           f"{failure.step + 1}, before any save or resume")
    holder, container = frame_container(error)
    found = lookup_findings(error, frame, container, model, holder=holder or "")
    if found and holder is not None:
        return [Finding(finding.kind, finding.keys, (
            f"the uninterrupted run (before any save or resume) at step "
            f"{failure.step + 1}: {finding.hint}"), finding.details, finding.related,
            finding.fix) for finding in found]
    return [Finding("training_state", (), run, (where,), fix=(
        "fix: the training code fails on its own, without a resume: fix the frame above "
        "(pytest-ckpt compares runs only once both complete)"))]


# -- a weights_only refusal -----------------------------------------------------------------

def _refused_findings(failure: ResumeFailure, refused: CheckpointReadError,
                      frame: UserFrame | None, where: str) -> list[Finding]:
    """torch's refusal quoted whole (folded), the globals it names and the file needs, and
    for RNG state the two remedies (plain values, or allowing exactly those globals)."""
    from pytest_ckpt.formats.torch_zip import read_failure, unsafe_finding

    error = failure.error
    message = folded_message(error)
    refusal = message.partition("WeightsUnpickler error: ")[2]
    raised = f"weights_only refused it: {refusal}" if refusal else error_line(error, 160)
    needed = list(dict.fromkeys(name for _, name in refused.unsafe))
    named = _TORCH_GLOBAL.findall(message) if refusal else []
    rng = {place.partition("]")[0] + "]": name for place, name in refused.unsafe
           if _RNG_NAME.search(place)}
    numpy = bool(rng) and all(name.startswith("numpy") for name in rng.values())
    details = [where]
    if frame is not None and "torch.load(" in frame.line and "weights_only" not in frame.line:
        details.append("torch.load defaults to weights_only=True since torch 2.6")
    if named:
        details.append(f"torch names GLOBAL {', '.join(named)}; the file needs "
                       f"{len(needed)} globals in all: {', '.join(needed)}")
    if rng:
        details.append(f"{', '.join(rng)} holds RNG state pickled as objects" + (
            " (numpy.random.get_state() returns a tuple holding an ndarray)" if numpy else ""))
    details.append(f"what save() wrote, {refused.path}, is refused by "
                   "torch.load(weights_only=True) for the globals listed above")
    fix = read_failure(refused)[0].splitlines()[-1]
    if rng:
        fix = _rng_refusal_fix(next(iter(rng)), needed, numpy=numpy)
    return [Finding("training_state", (), (
        f"the resume path raised {type(error).__name__}: {raised} (resuming after step "
        f"{failure.step})"), tuple(details), fix=fix), unsafe_finding(refused)]


def _rng_refusal_fix(place: str, needed: list[str], *, numpy: bool) -> str:
    import torch

    allowed = ", ".join(needed)
    since = "" if hasattr(torch.serialization, "safe_globals") else " (torch >= 2.5)"
    plain = (f"state = numpy.random.get_state(); checkpoint{place} = (state[0], "
             "state[1].tolist(), *state[2:]); numpy.random.set_state accepts it back" if numpy
             else "random.getstate(), torch.get_rng_state(), generator.get_state()")
    return (f"fix: store plain Python values there: save the RNG state as tensors/lists "
            f"({plain}), or allow exactly these globals: torch.serialization.add_safe_globals("
            f"[{allowed}]) before torch.load, or with torch.serialization.safe_globals("
            f"[{allowed}]): torch.load(...){since}")


# -- a scheduler resumed without initial_lr -------------------------------------------------

def _initial_lr_finding(failure: ResumeFailure, saved: Saved, where: str) -> Finding:
    """A scheduler built with ``last_epoch >= 0`` over param_groups without ``initial_lr``;
    when the file holds no optimizer state, loading it first cannot be the remedy."""
    error = failure.error
    quoted = f"{type(error).__name__}: {folded_message(error)}"
    absent, key = _absent_optimizer(saved.container)
    optimizer = _entry(saved.container, "param_groups") or key or "'optimizer'"
    fresh = ("or build the scheduler with last_epoch=-1 (start the schedule fresh) and then "
             f"load_state_dict(checkpoint[{_entry(saved.container, 'last_epoch') or '...'}])")
    hint = (f"the resume path raised {quoted} (resuming after step {failure.step}); a "
            "scheduler built with last_epoch >= 0 needs 'initial_lr' in every param_group")
    if absent is None:
        return Finding("training_state", (), (
            f"{hint}: load the optimizer state before building the scheduler"),
            (where, saved.held()), fix=(
            f"fix: call optimizer.load_state_dict(checkpoint[{optimizer}]) before building "
            f"the scheduler, {fresh}"))
    return Finding("training_state", (), (
        f"{hint}, and {absent}, so \"load the optimizer state first\" cannot apply"),
        (where, saved.held()), fix=(
        f"fix: save checkpoint[{optimizer}] = optimizer.state_dict() and load it before "
        f"building the scheduler, {fresh}"))


def _entry(container: Any, field: str) -> str | None:
    """The top-level key (repr) whose value is a dict holding ``field``."""
    if not isinstance(container, Mapping):
        return None
    return next((repr(key) for key, value in container.items()
                 if isinstance(value, Mapping) and field in value), None)


def _absent_optimizer(container: Any) -> tuple[str | None, str | None]:
    """How the file lacks optimizer state ("the file's optimizer entry is None") and the
    entry's key; ``(None, None)`` when it holds some."""
    if _has_optimizer_state(container):
        return None, None
    if isinstance(container, Mapping):
        empty = [key for key, value in container.items()
                 if _OPTIMIZER_NAME.search(str(key)) and not value]
        if empty:
            return (f"the file's optimizer entry is {container[empty[0]]!r} "
                    f"(checkpoint[{empty[0]!r}])"), repr(empty[0])
    return "the file holds no optimizer state (it was never saved)", None


def _has_optimizer_state(value: Any, depth: int = 0) -> bool:
    if not isinstance(value, Mapping) or depth > 4:
        return False
    return "param_groups" in value or any(_has_optimizer_state(item, depth + 1)
                                          for item in value.values())


# -- RNG state saved as floats --------------------------------------------------------------

def _rng_dtype_findings(failure: ResumeFailure, saved: Saved, where: str) -> list[Finding]:
    """``set_rng_state`` given a tensor of another dtype than uint8: what the file holds."""
    import torch

    error = failure.error
    if not isinstance(error, (TypeError, RuntimeError)) or "ByteTensor" not in str(error):
        return []
    size = torch.get_rng_state().numel()
    held = list(_numbers(saved.container, "", size))
    place, kind = held[0] if held else ("[...]", "")
    found = (f"the file's {place} holds {kind}, so the RNG state was saved or converted as "
             + ("floats" if "float" in kind else kind.partition(" of ")[0].removeprefix("a "))
             if held else "the RNG state the resume passed is not uint8")
    return [Finding("training_state", (), (
        f"resuming after step {failure.step}, the resume path raised {error_line(error, 120)}"
        f": {found}; the RNG state must be a torch.ByteTensor (uint8) as returned by "
        "torch.get_rng_state()"), (where,), fix=(
        f"fix: save torch.get_rng_state() as it is (no .float()/.tolist()) and restore it with "
        f"torch.set_rng_state(checkpoint{place}); for files already written: "
        f"torch.set_rng_state(torch.tensor(checkpoint{place}, dtype=torch.uint8))"))]


def _numbers(value: Any, path: str, size: int, depth: int = 0) -> Iterator[tuple[str, str]]:
    """Places holding ``size`` numbers that are not a uint8 tensor, and what they are."""
    import torch

    if depth > 4:
        return
    if isinstance(value, torch.Tensor) and value.numel() == size and value.dtype != torch.uint8:
        yield path, f"a {str(value.dtype).removeprefix('torch.')} tensor of {size} numbers"
    elif isinstance(value, (list, tuple)) and len(value) == size and value and all(
            isinstance(item, (int, float)) for item in value[:64]):
        yield path, f"a list of {size} {type(value[0]).__name__}s"
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _numbers(item, f"{path}[{key!r}]", size, depth + 1)
