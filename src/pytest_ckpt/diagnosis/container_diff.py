"""What ``pytest-ckpt diff`` says when two training checkpoints hold the same weights in
different containers: a plain training script's ``{'model': ..., 'optimizer': ...,
'iteration': ...}`` against Lightning's ``{'state_dict': ..., 'optimizer_states': [...],
'epoch': ..., 'global_step': ...}``. A loader written for one (``ckpt['model']``,
``ckpt.get('state_dict', ckpt)``) finds no weights in the other, and a resume written for one
reads entries the other does not have: ``training_state`` findings naming where each side
keeps its weights and its training state, and the fix that loads both."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from pytest_ckpt.checkpoint.container import ContainerLayout
from pytest_ckpt.checkpoint.manifest import escape_key
from pytest_ckpt.checkpoint.schema import OPTIMIZER_ENTRIES, SCHEDULER_ENTRIES, Schema
from pytest_ckpt.diagnosis.findings import Finding

# the names training loops give their step counters (torch examples, Lightning, fairseq,
# detectron2, HF Trainer's state)
STEP_ENTRIES = ("epoch", "global_step", "step", "steps", "iteration", "iter", "num_updates")
ROLES = (("optimizer state", OPTIMIZER_ENTRIES), ("LR scheduler state", SCHEDULER_ENTRIES),
         ("step counter", STEP_ENTRIES))
MAX_NAMED = 6  # entries named per line; the rest are counted
_BASE = re.compile(r"[\[ ]")  # "list[float] of 12" is a list


@dataclass(frozen=True)
class Container:
    """One checkpoint's container as ``diff`` compares it: its schema, where its weights sit,
    and the keys of those weights."""

    name: str  # "checkpoint A"
    schema: Schema
    layout: ContainerLayout
    weight_keys: frozenset[str]

    @property
    def entries(self) -> dict[str, str]:
        """Top-level entries beside the weights, by name, with their schema type."""
        types = self.schema.without_torch_flags().as_dict()
        return {key: types.get(escape_key(key), kind) for key, kind in self.layout.others}

    def where(self) -> str:
        entry = self.layout.weights_entry
        return "a bare state_dict (the weights at the top level)" if entry is None \
            else f"[{entry!r}]"

    def loader(self) -> str:
        entry = self.layout.weights_entry
        return "ckpt itself" if entry is None else f"ckpt[{entry!r}]"


def diff_containers(a: Container, b: Container) -> list[Finding]:
    """``training_state`` findings for two containers of different shapes (the weights under
    different entries; other top-level entries lost, gained or retyped); none when the two
    have the same shape."""
    findings = []
    if a.layout.weights_entry != b.layout.weights_entry:
        findings.append(_weights_entry_finding(a, b))
    entries = _entries_finding(a, b)
    if entries is not None:
        findings.append(entries)
    return findings


def container_fix(a: Container, b: Container) -> str:
    """The last line when only the containers differ."""
    if a.layout.weights_entry == b.layout.weights_entry:
        return ("fix: save both in one layout (the same top-level entries), or make the "
                "resume path read each training entry where its layout keeps it")
    expression = "ckpt"
    for side in (a, b):
        if side.layout.weights_entry is not None:
            expression = f"ckpt.get({side.layout.weights_entry!r}, {expression})"
    return (f"fix: load the weights through the container's weights entry, e.g. "
            f"`state = {expression}` (and each training entry where its layout keeps it), "
            "or save both in one layout")


def _weights_entry_finding(a: Container, b: Container) -> Finding:
    hint = (f"the weights sit under different entries: {a.name} {a.where()}, {b.name} "
            f"{b.where()}: a loader written for one ({a.loader()} / {b.loader()}) finds no "
            "weights in the other")
    return Finding("training_state", (), hint,
                   (_loaded_by(a, b), _loaded_by(b, a)))


def _loaded_by(writer: Container, other: Container) -> str:
    """What the loader written for ``writer`` gets from ``other``, with the tolerant
    ``ckpt.get(entry, ckpt)`` form too."""
    entry, total = writer.layout.weights_entry, len(writer.weight_keys)
    whole = _loaded_whole(other, writer)
    if entry is None:
        return f"load_state_dict(ckpt) of {other.name} gets its whole container: {whole}"
    tolerant = f"ckpt.get({entry!r}, ckpt)"
    if other.layout.weights_entry is None:
        return (f"{writer.loader()} of {other.name} raises KeyError: {entry!r}; {tolerant} "
                f"is its state_dict: {len(writer.weight_keys & other.weight_keys)} of {total} "
                "tensors load")
    return (f"{writer.loader()} of {other.name} raises KeyError: {entry!r}; {tolerant} is "
            f"its whole container: {whole}")


def _loaded_whole(container: Container, writer: Container) -> str:
    """How many of the writer's tensors a load of ``container``'s top level finds."""
    names = {entry for entry, _ in container.layout.others}
    names.add(container.layout.weights_entry or "")
    found = len(names & writer.weight_keys)
    return f"{found} of {len(writer.weight_keys)} tensors load"


def _entries_finding(a: Container, b: Container) -> Finding | None:
    old, new = a.entries, b.entries
    only_a = [key for key in old if key not in new]
    only_b = [key for key in new if key not in old]
    retyped = [key for key in old if key in new and not _same_type(old[key], new[key])]
    if not (only_a or only_b or retyped):
        return None
    counts = [f"{len(keys)} only in {side.name}" for keys, side in ((only_a, a), (only_b, b))
              if keys]
    if retyped:
        counts.append(f"{len(retyped)} of another type")
    hint = (f"the entries beside the weights differ ({', '.join(counts)}): a resume written "
            "for one reads entries the other does not have")
    weights_only = _weights_only(a, b) or _weights_only(b, a)
    if weights_only:
        hint += f"; {weights_only}"
    details = list(_role_lines(a, b, set(only_a), set(only_b)))
    details += [f"[{key!r}]: {old[key]} in {a.name}, {new[key]} in {b.name}" for key in retyped]
    return Finding("training_state", (), hint, tuple(details))


def _weights_only(bare: Container, full: Container) -> str:
    roles = {name for _, names in ROLES for name in names}
    if any(key in roles for key in bare.entries) or not any(key in roles for key in full.entries):
        return ""
    return (f"{bare.name} is weights-only: a resume written for {full.name} finds no "
            "optimizer or step in it")


def _role_lines(a: Container, b: Container, only_a: set[str],
                only_b: set[str]) -> Iterator[str]:
    """One line per role (optimizer, scheduler, step counter, the rest) whose entries
    differ: where each side keeps it."""
    placed: set[str] = set()
    for role, names in (*ROLES, ("other", None)):
        left = [key for key in a.entries if key in only_a and _in_role(key, names, placed)]
        right = [key for key in b.entries if key in only_b and _in_role(key, names, placed)]
        placed.update(left + right)
        if not (left or right):
            continue
        line = f"{role}: {a.name} {_named(a, left)}, {b.name} {_named(b, right)}"
        if len(left) == len(right) == 1:
            line += _same_inside(a, left[0], b, right[0])
        yield line


def _in_role(key: str, names: tuple[str, ...] | None, placed: set[str]) -> bool:
    return key not in placed and (names is None or key in names)


def _named(side: Container, keys: list[str]) -> str:
    if not keys:
        return "none"
    entries = side.entries
    named = [f"[{key!r}] ({entries[key]})" for key in keys[:MAX_NAMED]]
    if len(keys) > MAX_NAMED:
        named.append(f"and {len(keys) - MAX_NAMED} more")
    return ", ".join(named)


def _same_inside(a: Container, left: str, b: Container, right: str) -> str:
    """``; the same fields inside (ckpt['optimizer'] is ckpt['optimizer_states'][0])`` when
    the two entries hold the same structure (a list of one unwrapped), else empty."""
    old, path_a = _inside(a, left)
    new, path_b = _inside(b, right)
    if not old or old != new:
        return ""
    return f"; the same fields inside ({path_a} of {a.name} is {path_b} of {b.name})"


def _inside(side: Container, key: str) -> tuple[dict[str, str], str]:
    """The rows under a top-level entry, relative to it (to its only item when it is a list
    or tuple of one), and the expression that reaches them."""
    rows = side.schema.without_torch_flags().as_dict()
    root, expression = escape_key(key), f"ckpt[{key!r}]"
    if rows.get(root, "").endswith(" of 1") and f"{root}[0]" in rows:
        root, expression = f"{root}[0]", f"{expression}[0]"
    inside = {path[len(root):]: kind for path, kind in rows.items()
              if path == root or path.startswith((f"{root}.", f"{root}["))}
    return inside, expression


def _same_type(old: str, new: str) -> bool:
    """Types that do not make a container of another shape: a number for a number, ``None``
    for anything (a best score not set yet), a sequence or mapping of other items or length
    (a loss history, an optimizer state before its first step)."""
    numbers = ("int", "float", "int or float")
    if "NoneType" in (old, new) or (old in numbers and new in numbers):
        return True
    return _BASE.split(old, maxsplit=1)[0] == _BASE.split(new, maxsplit=1)[0]
