"""The diagnosis engine: two manifests (a reference such as a checkpoint or snapshot, and the
current model), optionally :class:`ModelFacts`, in; findings naming each cause out. Pure.

Orientation follows ``torch.nn.Module.load_state_dict``: ``missing`` keys are in the model but
not in the reference, ``unexpected`` keys are in the reference but not in the model. Rules run
from the most specific cause to the most generic; a key explained by one rule is not repeated
by a later one, so whatever is left is reported as plain ``missing``/``unexpected``.
"""

from __future__ import annotations

import gc
from operator import attrgetter

from pytest_ckpt.checkpoint.facts import ModelFacts
from pytest_ckpt.checkpoint.keys import natural_key
from pytest_ckpt.checkpoint.manifest import Manifest, ManifestRow
from pytest_ckpt.diagnosis.findings import Finding, sort_findings
from pytest_ckpt.diagnosis.pool import KeyPool, Rule
from pytest_ckpt.diagnosis.rules.components import component_rule
from pytest_ckpt.diagnosis.rules.fsdp import fsdp_rule
from pytest_ckpt.diagnosis.rules.layouts import (
    mha_packing_rule,
    norm_names_rule,
    parametrization_rule,
    weight_norm_rule,
)
from pytest_ckpt.diagnosis.rules.structure import (
    buffer_rule,
    prefix_rule,
    prefix_swap_rule,
    rename_rule,
)


def diagnose(reference: Manifest, current: Manifest, *, facts: ModelFacts | None = None,
             reference_name: str = "checkpoint", current_name: str = "model") -> list[Finding]:
    """Findings that explain why ``reference`` does not match ``current``; empty when equal.
    The names say what each side is in the messages (``pytest-ckpt diff`` of two files
    calls them "checkpoint A" and "checkpoint B")."""
    # The rules allocate many small tuples and create no reference cycles: pausing the cyclic
    # collector keeps it from rescanning large manifests over and over (2x on 100k keys).
    paused = gc.isenabled()
    gc.disable()
    try:
        return _diagnose(reference, current, facts, (reference_name, current_name))
    finally:
        if paused:
            gc.enable()


# The rules, from the most specific cause to the most generic: a key one rule explains is not
# reported again by a later one.
RULES: tuple[Rule, ...] = (fsdp_rule, prefix_rule, weight_norm_rule, parametrization_rule,
                           mha_packing_rule, norm_names_rule, buffer_rule, rename_rule,
                           prefix_swap_rule, component_rule)


def _diagnose(reference: Manifest, current: Manifest, facts: ModelFacts | None,
              names: tuple[str, str]) -> list[Finding]:
    missing, unexpected, changed = _merge(reference.rows, current.rows)
    pool = KeyPool(reference, current, facts or ModelFacts(), names[0],
                   missing=set(missing), unexpected=set(unexpected), current_name=names[1])
    pool.findings += _tie_findings(reference, current, *names)
    pool.missing -= {key for finding in pool.findings for key in finding.keys}
    for rule in RULES:
        if pool.missing or pool.unexpected:
            rule(pool)
    _generic(pool)
    old_rows, new_rows = reference.row_map(), current.row_map()
    signature = attrgetter("shape", "dtype")
    changed += [(old_rows[old], new_rows[new]) for old, new in pool.pairs
                if signature(old_rows[old]) != signature(new_rows[new])]
    common = sorted(changed, key=lambda pair: (natural_key(pair[1].key), pair[1].key))
    pool.findings += _shape_findings(common, *names)
    pool.findings += _dtype_findings(common, *names)
    return sort_findings(pool.findings)


def _merge(old: tuple[ManifestRow, ...], new: tuple[ManifestRow, ...],
           ) -> tuple[list[str], list[str], list[tuple[ManifestRow, ManifestRow]]]:
    """One pass over two key-sorted row lists: (missing, unexpected, same key but a different
    shape or dtype). Linear, with no hashing: the hot path on 100k-key manifests."""
    missing: list[str] = []
    unexpected: list[str] = []
    changed: list[tuple[ManifestRow, ManifestRow]] = []
    i = j = 0
    while i < len(old) and j < len(new):
        a, b = old[i], new[j]
        if a.key == b.key:
            if a.shape != b.shape or a.dtype != b.dtype:
                changed.append((a, b))
            i, j = i + 1, j + 1
        elif a.key < b.key:
            unexpected.append(a.key)
            i += 1
        else:
            missing.append(b.key)
            j += 1
    unexpected += [row.key for row in old[i:]]
    missing += [row.key for row in new[j:]]
    return missing, unexpected, changed


def _generic(pool: KeyPool) -> None:
    if pool.missing:
        pool.findings.append(Finding(
            "missing", tuple(sorted(pool.missing)),
            f"in the {pool.current_name} but not in the {pool.name}: a strict load_state_dict "
            f"raises 'Missing key(s) in state_dict'"))
    if pool.unexpected:
        pool.findings.append(Finding(
            "unexpected", tuple(sorted(pool.unexpected)),
            f"in the {pool.name} but not in the {pool.current_name}: a strict load_state_dict "
            f"raises 'Unexpected key(s) in state_dict'"))


def _shape_findings(pairs: list[tuple[ManifestRow, ManifestRow]],
                    reference_name: str, current_name: str) -> list[Finding]:
    changed = [(old, new) for old, new in pairs if old.shape != new.shape]
    if not changed:
        return []
    details = tuple(f"{old.key}: {list(old.shape)} in the {reference_name}, "
                    f"{list(new.shape)} in the {current_name}"
                    f"{_changed_dims(old.shape, new.shape)}"
                    for old, new in changed)
    return [Finding("shape", tuple(new.key for _, new in changed),
                    "shape differs: load_state_dict raises 'size mismatch'", details)]


def _changed_dims(old: tuple[int, ...], new: tuple[int, ...]) -> str:
    if len(old) != len(new):
        return f" (rank {len(old)} -> {len(new)})"
    dims = [f"dim {i}: {a} -> {b}" for i, (a, b) in enumerate(zip(old, new, strict=True))
            if a != b]
    return f" ({', '.join(dims)})"


_LOSSY = {("float32", "bfloat16"), ("float32", "float16"), ("float64", "float32"),
          ("float64", "float16"), ("float64", "bfloat16"), ("float16", "bfloat16"),
          ("bfloat16", "float16"), ("int64", "int32")}


def _dtype_findings(pairs: list[tuple[ManifestRow, ManifestRow]],
                    reference_name: str, current_name: str) -> list[Finding]:
    changed = [(old, new) for old, new in pairs if old.dtype != new.dtype]
    if not changed:
        return []
    details = tuple(f"{old.key}: {old.dtype} in the {reference_name}, {new.dtype} in the "
                    f"{current_name}"
                    + (" (lossy cast)" if (old.dtype, new.dtype) in _LOSSY else "")
                    for old, new in changed)
    return [Finding("dtype", tuple(new.key for _, new in changed),
                    f"dtype differs: load_state_dict silently casts to the {current_name}'s "
                    "dtype",
                    details)]


def _tie_findings(reference: Manifest, current: Manifest,
                  reference_name: str, current_name: str) -> list[Finding]:
    """Keys missing because their storage is shared, and ties that one side lost."""
    dropped: list[str] = []
    details: list[str] = []
    for group in current.tie_groups().values():
        kept = [key for key in group if key in reference]
        if kept and len(kept) < len(group):
            absent = [key for key in group if key not in reference]
            dropped += absent
            details += [f"{key}: shares storage with {kept[0]}, which the {reference_name} "
                        f"holds" for key in absent]
    lost = _untied(reference, current, f"the {current_name}") + _untied(current, reference,
                                                              f"the {reference_name}")
    findings = []
    if dropped:
        findings.append(Finding(
            "tied_weights", tuple(dropped),
            f"missing from the {reference_name} because the tensor is tied to a key it keeps "
            "(safetensors stores one key per tied group)", tuple(details)))
    if lost:
        findings.append(Finding("tied_weights", tuple(key for key, _ in lost),
                                "storage sharing (tied weights) differs",
                                tuple(dict.fromkeys(detail for _, detail in lost))))
    return findings


def _untied(tied: Manifest, other: Manifest, other_name: str) -> list[tuple[str, str]]:
    """Keys tied together in ``tied`` that are all present but not tied in ``other``."""
    lost = []
    for group in tied.tie_groups().values():
        if not all(key in other for key in group):
            continue
        ties = {other[key].tie for key in group}
        if None in ties or len(ties) != 1:
            detail = f"{', '.join(group)}: share storage, but not in {other_name}"
            lost += [(key, detail) for key in group]
    return lost
