"""Resume equivalence: a run interrupted by save -> resume must continue exactly like the
uninterrupted run (losses, learning rates, parameters, optimizer state, RNG draws).

The user's own functions build, step, save and resume; nothing here knows their training
loop. On a difference the first divergence is named with its likely cause.
"""

from __future__ import annotations

import random
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from pytest_ckpt.errors import CkptUsageError, first_line
from pytest_ckpt.findings import Finding
from pytest_ckpt.values import bitwise_equal

if TYPE_CHECKING:
    import torch

SEED = 1234


@runtime_checkable
class TrainingHarness(Protocol):
    """The user's training code, as four callables. ``build`` returns a training state
    (an object with ``model`` and ``optimizer`` attributes, or an ``nn.Module``)."""

    def build(self) -> Any: ...

    def step(self, state: Any) -> Any: ...

    def save(self, state: Any, path: Path) -> None: ...

    def resume(self, path: Path) -> Any: ...


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


def run_resume_check(harness: TrainingHarness, *, steps: int, at: int,
                     directory: Path) -> list[Finding]:
    """Run ``steps`` uninterrupted, and ``at`` + save + resume + the rest; compare."""
    if not 0 < at < steps:
        raise CkptUsageError(f"need 0 < at < steps, got steps={steps}, at={at}")
    baseline = _run(harness, steps)
    path = directory / "resume.ckpt"
    interrupted, orders, failure = _run_interrupted(harness, steps, at, path)
    moved = _moved(*orders)
    if failure is not None:
        return [_failure_finding(failure, path), *_order_findings(moved)]
    return _compare(baseline, interrupted, at, path) + _order_findings(moved)


def _seed_everything(seed: int) -> None:
    import torch

    torch.manual_seed(seed)
    random.seed(seed)
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        numpy.random.seed(seed % 2**32)


def _run(harness: TrainingHarness, steps: int) -> Trace:
    _seed_everything(SEED)
    state = harness.build()
    trace = Trace()
    before = _rng_states()
    for _ in range(steps):
        _record_step(trace, harness, state)
    used = {name for name, value in _rng_states().items() if not _same_state(value,
                                                                              before[name])}
    _finish(trace, state)
    trace.draws = {name: draws for name, draws in trace.draws.items() if name in used}
    return trace


def _rng_states() -> dict[str, Any]:
    """The global RNG states a training step may consume (to tell which ones it uses)."""
    import torch

    states: dict[str, Any] = {"torch": torch.get_rng_state(), "random": random.getstate()}
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        states["numpy"] = numpy.random.get_state()[1].copy()
    return states


def _same_state(left: Any, right: Any) -> bool:
    import torch

    if isinstance(left, torch.Tensor):
        return bool(torch.equal(left, right))
    if hasattr(left, "tolist"):
        return bool(left.tolist() == right.tolist())
    return bool(left == right)


def _run_interrupted(harness: TrainingHarness, steps: int, at: int, path: Path,
                     ) -> tuple[Trace, tuple[list[str], list[str]], ResumeFailure | None]:
    _seed_everything(SEED)
    state = harness.build()
    trace = Trace()
    for _ in range(at):
        _record_step(trace, harness, state)
    harness.save(state, path)
    saved_order, resumed_order = _optimizer_order(state), []
    del state
    _seed_everything(SEED + 7919)  # a fresh process: RNG state comes from the checkpoint or not
    try:
        state = harness.resume(path)
        resumed_order = _optimizer_order(state)
        for _ in range(steps - at):
            _record_step(trace, harness, state)
    except Exception as error:
        return trace, (saved_order, resumed_order), ResumeFailure(
            len(trace.losses), _one_line(error), _user_frame(error))
    _finish(trace, state)
    return trace, (saved_order, resumed_order), None


def _record_step(trace: Trace, harness: TrainingHarness, state: Any) -> None:
    loss = harness.step(state)
    trace.losses.append(float(loss.detach()) if hasattr(loss, "detach") else float(loss))
    optimizer = getattr(state, "optimizer", None)
    if optimizer is not None:
        trace.lrs.append(tuple(float(group["lr"]) for group in optimizer.param_groups))


def _finish(trace: Trace, state: Any) -> None:
    import torch

    model = state if isinstance(state, torch.nn.Module) else getattr(state, "model", None)
    if model is not None:
        trace.params = {k: v.detach().clone() for k, v in model.state_dict().items()}
    optimizer = getattr(state, "optimizer", None)
    if optimizer is not None:
        trace.optimizer = _flatten_tensors(optimizer.state_dict()["state"], "state")
    trace.draws = {"torch": torch.rand(4).tolist(), "random": [random.random() for _ in range(4)]}
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        trace.draws["numpy"] = numpy.random.rand(4).tolist()


def _flatten_tensors(value: Any, prefix: str) -> dict[str, torch.Tensor]:
    import torch

    if isinstance(value, torch.Tensor):
        return {prefix: value.detach().clone()}
    if isinstance(value, dict):
        flat: dict[str, torch.Tensor] = {}
        for key, item in value.items():
            flat.update(_flatten_tensors(item, f"{prefix}.{key}"))
        return flat
    return {}


def _optimizer_order(state: Any) -> list[str]:
    """Parameter names in the order the optimizer indexes them (its positional state keys)."""
    model, optimizer = getattr(state, "model", None), getattr(state, "optimizer", None)
    if model is None or optimizer is None:
        return []
    names = {id(p): name for name, p in model.named_parameters()}
    return [names.get(id(p), "?") for group in optimizer.param_groups for p in group["params"]]


def _one_line(error: BaseException) -> str:
    return f"{type(error).__name__}: {first_line(error, limit=140)}"


def _user_frame(error: BaseException) -> str:
    """The innermost frame outside torch and this plugin: the user's line that raised."""
    frames = traceback.extract_tb(error.__traceback__)
    mine = [f for f in frames if "/torch/" not in f.filename and "pytest_ckpt" not in f.filename]
    frame = (mine or frames)[-1] if frames else None
    return f"{frame.filename}:{frame.lineno} in {frame.name}: {frame.line}" if frame else "?"


def _failure_finding(failure: ResumeFailure, path: Path) -> Finding:
    from pytest_ckpt.formats.torch_zip import load_weights_only
    from pytest_ckpt.schema import Schema

    try:
        schema = Schema.of(load_weights_only(path))
        top = [p for p, _ in schema.rows if p != "<root>" and "." not in p and "[" not in p]
        held = f"the checkpoint holds: {', '.join(top) or schema.container}"
    except Exception as error:
        held = f"the checkpoint could not be read weights-only: {_one_line(error)}"
    hint = f"the resume path raised {failure.error} (resuming after step {failure.step})"
    if "initial_lr" in failure.error:
        hint += ("; a scheduler built with last_epoch >= 0 needs 'initial_lr' in every "
                 "param_group: load the optimizer state before building the scheduler")
    return Finding("training_state", (), hint, (f"raised at {failure.location}", held))


def _compare(baseline: Trace, resumed: Trace, at: int, path: Path) -> list[Finding]:
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
    from pytest_ckpt.formats.torch_zip import load_weights_only
    from pytest_ckpt.schema import Schema

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


def _moved(saved: list[str], resumed: list[str]) -> list[str]:
    """Parameters whose optimizer index differs between save time and resume time."""
    if not saved or not resumed:
        return []
    return [name for index, name in enumerate(saved)
            if index >= len(resumed) or resumed[index] != name]


def _order_findings(moved: list[str]) -> list[Finding]:
    if not moved:
        return []
    return [Finding("training_state", tuple(moved), (
        "optimizer state is matched by position: after resume these parameters sit at a "
        "different optimizer index than when the checkpoint was saved, so their Adam moments "
        "land on other tensors"), ("build the optimizer over the same parameters in the same "
                                   "order (frozen ones included) before loading its state",))]


def harness_from(harness: Any = None, *, build: Callable[[], Any] | None = None,
                 step: Callable[[Any], Any] | None = None,
                 save: Callable[[Any, Path], None] | None = None,
                 resume: Callable[[Path], Any] | None = None) -> TrainingHarness:
    """A harness object, or one assembled from the four callables."""
    if harness is not None:
        if not isinstance(harness, TrainingHarness):
            raise CkptUsageError(f"a training harness needs build, step, save and resume "
                                 f"methods; {type(harness).__name__} lacks some")
        return harness
    parts = {"build": build, "step": step, "save": save, "resume": resume}
    missing = [name for name, value in parts.items() if value is None]
    if missing:
        raise CkptUsageError(f"assert_resumes needs a harness or all of build, step, save, "
                             f"resume; missing: {', '.join(missing)}")
    return _Functions(build, step, save, resume)  # type: ignore[arg-type]


@dataclass(frozen=True)
class _Functions:
    build_fn: Callable[[], Any]
    step_fn: Callable[[Any], Any]
    save_fn: Callable[[Any, Path], None]
    resume_fn: Callable[[Path], Any]

    def build(self) -> Any:
        return self.build_fn()

    def step(self, state: Any) -> Any:
        return self.step_fn(state)

    def save(self, state: Any, path: Path) -> None:
        self.save_fn(state, path)

    def resume(self, path: Path) -> Any:
        return self.resume_fn(path)
