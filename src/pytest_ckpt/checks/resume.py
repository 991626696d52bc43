"""``ckpt.assert_resumes`` and ``@pytest.mark.ckpt_resume``, resume equivalence: a run
interrupted by save -> resume must continue exactly like the uninterrupted run (losses,
learning rates, parameters, optimizer state, RNG draws).

The user's own functions build, step, save and resume; nothing here knows their training
loop. On a difference the first divergence is named with its likely cause.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from pytest_ckpt.checks.context import CheckContext
from pytest_ckpt.checks.resume_errors import failure_findings
from pytest_ckpt.checks.resume_findings import (
    ResumeFailure,
    Trace,
    compare,
    has_scheduler,
    loop_state,
    loop_state_findings,
    moved,
    order_findings,
    read_saved,
)
from pytest_ckpt.diagnosis.findings import Finding, render_failure
from pytest_ckpt.errors import CkptUsageError

if TYPE_CHECKING:
    import torch

SEED = 1234
RESUME_FIX = ("fix: save and restore everything the next step depends on (model, optimizer, "
              "scheduler, step counters, RNG), with the optimizer over the same parameters in "
              "the same order")


@runtime_checkable
class TrainingHarness(Protocol):
    """The user's training code, as four callables. ``build`` returns a training state
    (an object with ``model`` and ``optimizer`` attributes, or an ``nn.Module``)."""

    def build(self) -> Any: ...

    def step(self, state: Any) -> Any: ...

    def save(self, state: Any, path: Path) -> None: ...

    def resume(self, path: Path) -> Any: ...


def run_resume_check(harness: TrainingHarness, *, steps: int, at: int,
                     directory: Path) -> list[Finding]:
    """Run ``steps`` uninterrupted, and ``at`` + save + resume + the rest; compare."""
    if not 0 < at < steps:
        raise CkptUsageError(f"need 0 < at < steps, got steps={steps}, at={at}")
    baseline, used, failed = _run(harness, steps)
    if failed is not None:
        return failure_findings(failed, None, None)
    path = directory / "resume.ckpt"
    run = _run_interrupted(harness, steps, at, path, used)
    moved_params = moved(run.saved_order, run.resumed_order)
    if run.failure is not None:
        return [*failure_findings(run.failure, read_saved(path), run.model),
                *order_findings(moved_params)]
    findings = compare(baseline, run.trace, at, path, scheduler=run.scheduler)
    if findings:
        findings = loop_state_findings(run.loop_saved, run.loop_resumed) + findings
    return findings + order_findings(moved_params)


def _seed_everything(seed: int) -> None:
    import torch

    torch.manual_seed(seed)
    random.seed(seed)
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        numpy.random.seed(seed % 2**32)


def _run(harness: TrainingHarness, steps: int,
         ) -> tuple[Trace, set[str], ResumeFailure | None]:
    """The uninterrupted run, and the RNGs its steps draw from."""
    _seed_everything(SEED)
    trace = Trace()
    try:
        state = harness.build()
        before = _rng_states()
        for _ in range(steps):
            _record_step(trace, harness, state)
    except Exception as error:
        return trace, set(), ResumeFailure(len(trace.losses), error, uninterrupted=True)
    used = {name for name, value in _rng_states().items() if not _same_state(value,
                                                                              before[name])}
    _finish(trace, state, used)
    return trace, used, None


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


@dataclass
class _Interrupted:
    """The run saved after ``at`` steps and resumed: its trace and what was seen around the
    save."""

    trace: Trace
    saved_order: list[str]
    resumed_order: list[str] = field(default_factory=list)
    failure: ResumeFailure | None = None
    model: Any = None  # the model at save time (its buffer names explain lookups)
    scheduler: bool = False  # the training state holds a torch LR scheduler
    loop_saved: dict[str, object] = field(default_factory=dict)
    loop_resumed: dict[str, object] = field(default_factory=dict)


def _run_interrupted(harness: TrainingHarness, steps: int, at: int, path: Path,
                     used: set[str]) -> _Interrupted:
    _seed_everything(SEED)
    state = harness.build()
    trace = Trace()
    for _ in range(at):
        _record_step(trace, harness, state)
    harness.save(state, path)
    run = _Interrupted(trace, _optimizer_order(state), model=_model_of(state),
                       scheduler=has_scheduler(state), loop_saved=loop_state(state))
    del state
    _seed_everything(SEED + 7919)  # a fresh process: RNG state comes from the checkpoint or not
    try:
        state = harness.resume(path)
        run.resumed_order = _optimizer_order(state)
        run.loop_resumed = loop_state(state)
        for _ in range(steps - at):
            _record_step(trace, harness, state)
    except Exception as error:
        run.failure = ResumeFailure(len(trace.losses), error)
        return run
    _finish(trace, state, used)
    return run


def _model_of(state: Any) -> Any:
    import torch

    return state if isinstance(state, torch.nn.Module) else getattr(state, "model", None)


def _record_step(trace: Trace, harness: TrainingHarness, state: Any) -> None:
    loss = harness.step(state)
    trace.losses.append(float(loss.detach()) if hasattr(loss, "detach") else float(loss))
    optimizer = getattr(state, "optimizer", None)
    if optimizer is not None:
        trace.lrs.append(tuple(float(group["lr"]) for group in optimizer.param_groups))


def _finish(trace: Trace, state: Any, used: set[str]) -> None:
    """Record the state after the last step, and the next draws of the RNGs in ``used`` (the
    ones the uninterrupted run's steps consumed; the others cannot explain a divergence)."""
    import torch

    model = _model_of(state)
    if model is not None:
        trace.params = {k: v.detach().clone() for k, v in model.state_dict().items()}
    optimizer = getattr(state, "optimizer", None)
    if optimizer is not None:
        trace.optimizer = _flatten_tensors(optimizer.state_dict()["state"], "state")
    draws: dict[str, Callable[[], list[float]]] = {
        "torch": lambda: torch.rand(4).tolist(),
        "random": lambda: [random.random() for _ in range(4)]}
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        draws["numpy"] = lambda: numpy.random.rand(4).tolist()
    trace.draws = {name: draw() for name, draw in draws.items() if name in used}


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


def assert_resumes(context: CheckContext, harness: Any = None, *,
                   build: Callable[[], Any] | None = None,
                   step: Callable[[Any], Any] | None = None,
                   save: Callable[[Any, Path], None] | None = None,
                   resume: Callable[[Path], Any] | None = None,
                   steps: int = 6, at: int = 3) -> None:
    """Run ``steps`` training steps uninterrupted, and ``at`` steps + save + resume + the
    rest; require identical losses, LRs, parameters, optimizer state and RNG draws."""
    __tracebackhide__ = True
    directory = context.folder("ckpt-resume")
    user = context.usage(lambda: harness_from(harness, build=build, step=step, save=save,
                                              resume=resume), label="ckpt_resume",
                         check="resume")
    findings = context.usage(lambda: run_resume_check(user, steps=steps, at=at,
                                                      directory=directory),
                             label="ckpt_resume", check="resume")
    context.record("resume", findings)
    if findings:
        context.fail(render_failure(
            f"resumed training does not continue like the uninterrupted run ({steps} "
            f"steps, saved and resumed after step {at})", findings,
            next((finding.fix for finding in findings if finding.fix), RESUME_FIX),
            color=context.color))
