"""What a resume check observed (:class:`Trace`) and how a resumed run that does not continue
like the uninterrupted one is explained: the first divergence (loss, learning rate) with its
likely cause, state that differs after the run, optimizer state matched by position."""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_ckpt.checkpoint.values import bitwise_equal
from pytest_ckpt.diagnosis.findings import Finding
from pytest_ckpt.errors import CheckpointReadError, first_line

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
    """The project's training code raised: in which run, after how many steps, and what."""

    step: int
    error: BaseException
    uninterrupted: bool = False  # raised in the uninterrupted run (no resume involved)


@dataclass(frozen=True)
class Saved:
    """What ``save()`` wrote, read weights-only: the container of a file, or for a directory
    one container per checkpoint file in it (by relative name)."""

    container: Any
    files: dict[str, Any]
    refused: CheckpointReadError | None  # a weights_only refusal (globals it needs)
    unreadable: str | None  # why nothing could be read

    @property
    def rows(self) -> dict[str, Any]:
        from pytest_ckpt.checkpoint.schema import Schema

        rows: dict[str, Any] = {}
        for name, container in self.files.items():
            for key, value in Schema.of(container).as_dict().items():
                rows[f"{name}:{key}" if len(self.files) > 1 else key] = value
        return rows

    def held(self) -> str:
        if not self.files:
            return f"the checkpoint could not be read weights-only: {self.unreadable}"
        if len(self.files) == 1 and "" in self.files:
            return f"the checkpoint holds: {_tops(self.container)}"
        return "the checkpoint folder holds: " + "; ".join(
            f"{name} ({_tops(container)})" for name, container in list(self.files.items())[:6])


def _tops(container: Any) -> str:
    if isinstance(container, dict):
        return ", ".join(sorted(str(key) for key in container)[:12]) or "an empty dict"
    return type(container).__name__


MAX_SAVED_FILES = 32


def read_saved(path: Path) -> Saved:
    """Read what the save wrote at ``path`` (a file, or a directory of files)."""
    from pytest_ckpt.formats.torch_zip import load_weights_only

    if not path.exists():
        return Saved(None, {}, None, f"save() wrote nothing at {path}")
    candidates = ([("", path)] if not path.is_dir() else
                  [(str(item.relative_to(path)), item) for item in
                   sorted(islice((p for p in path.rglob("*") if p.is_file()
                                  and not p.is_symlink()), MAX_SAVED_FILES))])
    files: dict[str, Any] = {}
    refused: CheckpointReadError | None = None
    unreadable: str | None = None
    for name, item in candidates:
        try:
            files[name] = load_weights_only(item)
        except CheckpointReadError as error:
            refused = refused or (error if error.unsafe else None)
            headline = error.headline  # names the file first
            unreadable = unreadable or (headline if len(headline) <= 300
                                        else headline[:297] + "...")
    if path.is_dir() and not candidates:
        unreadable = f"save() wrote an empty directory at {path}"
    container = files.get("") if "" in files else _merged(files)
    return Saved(container, files, refused, unreadable)


def _merged(files: dict[str, Any]) -> Any:
    """A folder's files as one container, as a resume that reads them all sees it (the
    files' top-level entries side by side), or by file name when some are not dicts."""
    if files and all(isinstance(container, dict) for container in files.values()):
        return {key: value for container in files.values() for key, value in container.items()}
    return files or None


def compare(baseline: Trace, resumed: Trace, at: int, path: Path, *,
            scheduler: bool = True) -> list[Finding]:
    findings = []
    lr_step = _first_difference(baseline.lrs, resumed.lrs)
    loss_step = _first_difference(baseline.losses, resumed.losses)
    if lr_step is not None:
        findings.append(_lr_finding(baseline, resumed, lr_step, path, scheduler))
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


def _lr_finding(baseline: Trace, resumed: Trace, index: int, path: Path,
                scheduler: bool) -> Finding:
    rows = read_saved(path).rows
    saved_scheduler = any("sched" in key.lower() or "last_epoch" in key for key in rows)
    if saved_scheduler:
        cause = "the scheduler state was restored but continues differently"
    elif scheduler:
        cause = "the scheduler state was never saved, so the LR schedule restarted"
    else:
        cause = ("the training state has no torch LR scheduler: the training loop sets the LR "
                 "itself, from its own state")
    return Finding("training_state", (), (
        f"the learning rate diverged first at step {index + 1}: {baseline.lrs[index]} "
        f"uninterrupted, {resumed.lrs[index] if index < len(resumed.lrs) else 'none'} resumed; "
        f"{cause}"), (f"LR uninterrupted: {baseline.lrs}", f"LR resumed:       {resumed.lrs}"))


# -- the training loop's own state --------------------------------------------------------

Scalar = bool | int | float | str


def has_scheduler(state: Any) -> bool:
    """Whether the training state holds a torch LR scheduler (or anything that saves like
    one: ``last_epoch`` and ``state_dict``)."""
    return any(hasattr(value, "last_epoch") and hasattr(value, "state_dict")
               for value in _attributes(state).values())


def _attributes(state: Any) -> dict[str, Any]:
    import torch

    if isinstance(state, torch.nn.Module):
        return {}
    try:
        return dict(vars(state))
    except TypeError:  # no __dict__ (a tuple, a slotted object)
        return {}


def loop_state(state: Any) -> dict[str, object]:
    """The plain values the training state carries besides the model and optimizer (step
    and plateau counters, best losses, flags), by access path: attributes, entries of dict
    attributes, and attributes of plain helper objects (an early-stopping counter)."""
    import torch

    found: dict[str, object] = {}
    for name, value in list(_attributes(state).items())[:64]:
        if isinstance(value, Scalar):
            found[name] = value
        elif isinstance(value, dict):
            found.update({f"{name}[{key!r}]": item for key, item in list(value.items())[:32]
                          if isinstance(item, Scalar)})
        elif not isinstance(value, (torch.nn.Module, torch.optim.Optimizer, torch.Tensor)) \
                and not type(value).__module__.startswith("torch"):
            found.update({f"{name}.{key}": item
                          for key, item in list(_attributes(value).items())[:32]
                          if isinstance(item, Scalar)})
    return found


def loop_state_findings(saved: dict[str, object], resumed: dict[str, object]) -> list[Finding]:
    """Values of the loop's own state that the resume did not bring back."""
    lost = [(name, value, resumed.get(name, "<absent>")) for name, value in saved.items()
            if repr(resumed.get(name, "<absent>")) != repr(value)]
    if not lost:
        return []
    names = [name for name, _, _ in lost]
    return [Finding("training_state", (), (
        "the training loop's own state is not in the checkpoint: the next steps depend on "
        f"{', '.join(f'state.{name}' for name in names[:4])}, which the resume does not "
        "restore"), tuple(f"state.{name}: {value!r} at save, {now!r} after resume"
                          for name, value, now in lost), fix=(
        f"fix: save the loop's state with the checkpoint and restore it in resume (e.g. "
        f"checkpoint['loop'] = {{{', '.join(f'{name!r}: state.{name}' for name in names[:3])}"
        f"}})"))]


def _loss_causes(baseline: Trace, resumed: Trace) -> tuple[str, ...]:
    causes = []
    if any(draws != resumed.draws.get(name) for name, draws in baseline.draws.items()):
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
