"""What changed between two checkpoint schemas, as ``training_state`` findings: entries lost,
gained or retyped (torch's own optimizer flags aside), and a weights-only release given to a
training resume named as such."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pytest_ckpt.checkpoint.manifest import unescape_key
from pytest_ckpt.checkpoint.schema import TRAINING_KEYS, Schema
from pytest_ckpt.diagnosis.findings import Finding


def diff_schemas(reference: Schema, current: Schema, *,
                 reference_name: str = "snapshot") -> list[Finding]:
    """``training_state`` findings: entries the current checkpoint lost, gained or retyped
    (torch's own optimizer flags aside)."""
    reference, current = reference.without_torch_flags(), current.without_torch_flags()
    old, new = reference.as_dict(), current.as_dict()
    lost = _topmost(path for path in old if path not in new)
    gained = _topmost(path for path in new if path not in old)
    retyped = [path for path in old if path in new and old[path] != new[path]
               and not (path == "<root>" and reference.container != current.container)]
    findings = []
    if lost:
        findings.append(Finding("training_state", tuple(lost), _lost_hint(lost, current,
                                                                          reference_name)))
    if gained:
        findings.append(Finding("training_state", tuple(gained),
                                f"entries in the checkpoint that the {reference_name} lacks"))
    if retyped:
        findings.append(Finding("training_state", tuple(retyped),
                                "the type of these entries changed",
                                tuple(f"{path}: {old[path]} -> {new[path]}" for path in retyped)))
    if reference.container != current.container:
        findings.append(Finding("training_state", (), "container layout changed", (
            f"{reference_name}: {reference.container}", f"checkpoint: {current.container}")))
    return findings


def _lost_hint(lost: list[str], current: Schema, reference_name: str) -> str:
    top = [path for path in lost if "." not in path and "[" not in path]
    names = ", ".join(f"`{unescape_key(path)}`" for path in (top or lost)[:6])
    hint = f"{'top-level ' if top else ''}{names} missing (present in the {reference_name})"
    training = [path for path in top if path in TRAINING_KEYS]
    left = [path for path in current.as_dict() if path in TRAINING_KEYS]
    if training and not left and current.container.startswith(("bare state_dict", "{")):
        hint += (": this looks like a weights-only checkpoint given to a training resume; "
                 "resume from a training checkpoint, or make the resume path start fresh "
                 "optimizer/step state when they are absent")
    return hint


def _topmost(paths: Iterator[str] | Any) -> list[str]:
    """Drop paths whose ancestor is in the set (report ``optimizer``, not its children)."""
    chosen: list[str] = []
    for path in sorted(paths):
        if not any(path.startswith(parent + ".") or path.startswith(parent + "[")
                   for parent in chosen):
            chosen.append(path)
    return chosen
