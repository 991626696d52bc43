"""What a resume check observed (:class:`Trace`) and how a resumed run that does not continue
like the uninterrupted one is explained: the first divergence (loss, learning rate) with its
likely cause, state that differs after the run, optimizer state matched by position."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_ckpt.checkpoint.values import bitwise_equal
from pytest_ckpt.diagnosis.findings import Finding
from pytest_ckpt.errors import first_line

if TYPE_CHECKING:
    import torch


def one_line(error: BaseException) -> str:
    return f"{type(error).__name__}: {first_line(error, limit=140)}"


@dataclass
class Trace:
    """What one run observed."""

    losses: list[float] = field(default_factory=list)
    lrs: list[tuple[float, ...]] = field(default_factory=list)
    params: dict[str, torch.Tensor] = field(default_factory=dict)
    optimizer: dict[str, torch.Tensor] = field(default_factory=dict)
    draws: dict[str, list[float]] = field(default_factory=dict)


@dataclass(frozen=True)
class ResumeFailure:
    """The resume path raised: where, at which step, and what the checkpoint held."""

    step: int
    error: str
    location: str


def failure_finding(failure: ResumeFailure, path: Path) -> Finding:
    from pytest_ckpt.checkpoint.schema import Schema
    from pytest_ckpt.formats.torch_zip import load_weights_only

    try:
        schema = Schema.of(load_weights_only(path))
        top = [p for p, _ in schema.rows if p != "<root>" and "." not in p and "[" not in p]
        held = f"the checkpoint holds: {', '.join(top) or schema.container}"
    except Exception as error:
        held = f"the checkpoint could not be read weights-only: {one_line(error)}"
    hint = f"the resume path raised {failure.error} (resuming after step {failure.step})"
    if "initial_lr" in failure.error:
        hint += ("; a scheduler built with last_epoch >= 0 needs 'initial_lr' in every "
                 "param_group: load the optimizer state before building the scheduler")
    return Finding("training_state", (), hint, (f"raised at {failure.location}", held))


def compare(baseline: Trace, resumed: Trace, at: int, path: Path) -> list[Finding]:
    findings = []
    lr_step = _first_difference(baseline.lrs, resumed.lrs)
    loss_step = _first_difference(baseline.losses, resumed.losses)
    if lr_step is not None:
        findings.append(_lr_finding(baseline, resumed, lr_step, path))
    if loss_step is not None and (lr_step is None or loss_step < lr_step):
        findings.append(Finding("training_state", (), (
            f"the loss diverged first at step {loss_step + 1} (resumed after step {at}): "
            f"{baseline.losses[loss_step]!r} uninterrupted, {resumed.losses[loss_step]!r} "
            "resumed"), _loss_causes(baseline, resumed)))
    findings += _state_findings(baseline, resumed)
    return findings


def _first_difference(left: list[Any], right: list[Any]) -> int | None:
    for index, (a, b) in enumerate(zip(left, right, strict=False)):
        if a != b:
            return index
    return None if len(left) == len(right) else min(len(left), len(right))


def _lr_finding(baseline: Trace, resumed: Trace, index: int, path: Path) -> Finding:
    from pytest_ckpt.checkpoint.schema import Schema
    from pytest_ckpt.formats.torch_zip import load_weights_only

    try:
        rows = Schema.of(load_weights_only(path)).as_dict()
    except Exception:
        rows = {}
    saved_scheduler = any("sched" in key.lower() or "last_epoch" in key for key in rows)
    cause = ("the scheduler state was restored but continues differently" if saved_scheduler
             else "the scheduler state was never saved, so the LR schedule restarted")
    return Finding("training_state", (), (
        f"the learning rate diverged first at step {index + 1}: {baseline.lrs[index]} "
        f"uninterrupted, {resumed.lrs[index] if index < len(resumed.lrs) else 'none'} resumed; "
        f"{cause}"), (f"LR uninterrupted: {baseline.lrs}", f"LR resumed:       {resumed.lrs}"))


def _loss_causes(baseline: Trace, resumed: Trace) -> tuple[str, ...]:
    causes = []
    if baseline.draws != resumed.draws:
        causes.append("the RNG state is not restored on resume (dropout, augmentation and "
                      "sampling draw different numbers): save torch.get_rng_state() (and "
                      "random/numpy state) and restore it")
    if _differing(baseline.optimizer, resumed.optimizer):
        causes.append("the optimizer state differs after resume (not saved, or restored onto "
                      "the wrong parameters)")
    return tuple(causes) or ("the model or data pipeline state is not fully restored",)


def _state_findings(baseline: Trace, resumed: Trace) -> list[Finding]:
    findings = []
    rng = [name for name in baseline.draws if baseline.draws[name] != resumed.draws.get(name)]
    if rng:
        findings.append(Finding("training_state", (), (
            f"RNG state not restored on resume: the next {', '.join(rng)} draws differ from "
            "the uninterrupted run"), ("save torch.get_rng_state() / random.getstate() / "
                                       "numpy.random.get_state() and restore them on resume",)))
    moments = _differing(baseline.optimizer, resumed.optimizer)
    if moments:
        findings.append(Finding("training_state", tuple(moments),
                                "optimizer state after the resumed run differs from the "
                                "uninterrupted run (not saved, or restored onto other "
                                "parameters)"))
    differ = _differing(baseline.params, resumed.params)
    if differ:
        findings.append(Finding("training_state", tuple(differ),
                                "parameters after the resumed run differ from the "
                                "uninterrupted run"))
    return findings


def _differing(expected: dict[str, torch.Tensor], actual: dict[str, torch.Tensor]) -> list[str]:
    """Keys whose tensor is absent from ``actual`` or differs bitwise."""
    return [key for key, value in expected.items()
            if key not in actual or not bitwise_equal(value, actual[key])]


def moved(saved: list[str], resumed: list[str]) -> list[str]:
    """Parameters whose optimizer index differs between save time and resume time."""
    if not saved or not resumed:
        return []
    return [name for index, name in enumerate(saved)
            if index >= len(resumed) or resumed[index] != name]


def order_findings(moved: list[str]) -> list[Finding]:
    if not moved:
        return []
    return [Finding("training_state", tuple(moved), (
        "optimizer state is matched by position: after resume these parameters sit at a "
        "different optimizer index than when the checkpoint was saved, so their Adam moments "
        "land on other tensors"), ("build the optimizer over the same parameters in the same "
                                   "order (frozen ones included) before loading its state",))]
