"""The diagnosis engine: two manifests (a reference such as a checkpoint or snapshot, and the
current model), optionally :class:`ModelFacts`, in; findings naming each cause out. Pure.

Orientation follows ``torch.nn.Module.load_state_dict``: ``missing`` keys are in the model but
not in the reference, ``unexpected`` keys are in the reference but not in the model. Rules run
from the most specific cause to the most generic; a key explained by one rule is not repeated
by a later one, so whatever is left is reported as plain ``missing``/``unexpected``.
"""

from __future__ import annotations

from collections.abc import Mapping
from operator import attrgetter

from pytest_ckpt.checkpoint.collector import collector_paused
from pytest_ckpt.checkpoint.facts import ModelFacts
from pytest_ckpt.checkpoint.keys import natural_key
from pytest_ckpt.checkpoint.manifest import Manifest, ManifestRow
from pytest_ckpt.diagnosis.findings import Finding, sort_findings
from pytest_ckpt.diagnosis.pool import KeyPool, Rule
from pytest_ckpt.diagnosis.rules.attention import mha_packing_rule
from pytest_ckpt.diagnosis.rules.components import component_rule
from pytest_ckpt.diagnosis.rules.fsdp import fsdp_rule
from pytest_ckpt.diagnosis.rules.layouts import (
    norm_names_rule,
    parametrization_rule,
    weight_norm_rule,
)
from pytest_ckpt.diagnosis.rules.prefixes import prefix_rule, prefix_swap_rule
from pytest_ckpt.diagnosis.rules.structure import buffer_rule, rename_rule
from pytest_ckpt.diagnosis.signatures import dtype_findings, shape_findings


def diagnose(reference: Manifest, current: Manifest, *, facts: ModelFacts | None = None,
             reference_name: str = "checkpoint", current_name: str = "model",
             recorded_ties: Mapping[str, str] | None = None) -> list[Finding]:
    """Findings that explain why ``reference`` does not match ``current``; empty when equal.
    The names say what each side is in the messages (``pytest-ckpt diff`` of two files
    calls them "checkpoint A" and "checkpoint B"). ``recorded_ties``: the tied keys the
    reference file left out and the key each is tied to, as its metadata records them."""
    with collector_paused():  # the rules allocate many small tuples, and no cycles
        return _diagnose(reference, current, facts, (reference_name, current_name),
                         recorded_ties or {})


# The rules, from the most specific cause to the most generic: a key one rule explains is not
# reported again by a later one.
RULES: tuple[Rule, ...] = (fsdp_rule, prefix_rule, weight_norm_rule, parametrization_rule,
                           mha_packing_rule, norm_names_rule, buffer_rule, rename_rule,
                           prefix_swap_rule, component_rule)


def _diagnose(reference: Manifest, current: Manifest, facts: ModelFacts | None,
              names: tuple[str, str], recorded_ties: Mapping[str, str]) -> list[Finding]:
    missing, unexpected, changed = _merge(reference.rows, current.rows)
    pool = KeyPool(reference, current, facts or ModelFacts(), names[0],
                   missing=set(missing), unexpected=set(unexpected), current_name=names[1])
    pool.findings += _tie_findings(reference, current, *names)
    pool.findings += _untied_consumer(missing, current, recorded_ties, *names)
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
    pool.findings += shape_findings(common, pool.facts, *names)
    pool.findings += dtype_findings(common, *names)
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
            "missing", tuple(pool.sorted_missing()),
            f"in the {pool.current_name} but not in the {pool.name}: a strict load_state_dict "
            f"raises 'Missing key(s) in state_dict'"))
    if pool.unexpected:
        pool.findings.append(Finding(
            "unexpected", tuple(pool.sorted_unexpected()),
            f"in the {pool.name} but not in the {pool.current_name}: a strict load_state_dict "
            f"raises 'Unexpected key(s) in state_dict'"))


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


def _untied_consumer(missing: list[str], current: Manifest, recorded_ties: Mapping[str, str],
                     reference_name: str, current_name: str) -> list[Finding]:
    """Keys a file left out because they were tied when saved (its metadata says to which
    key), in a model that does not tie them: the load leaves them at their initial value."""
    untied = [key for key in missing if key in recorded_ties
              and not (recorded_ties[key] in current
                       and current[key].tie is not None
                       and current[key].tie == current[recorded_ties[key]].tie)]
    if not untied:
        return []
    key, kept = untied[0], recorded_ties[untied[0]]
    return [Finding(
        "tied_weights", tuple(untied),
        f"not in the {reference_name}: they were tied when it was saved, and its metadata "
        f"records each as tied to a key it keeps (safetensors.torch.save_model stores one key "
        f"per tied group); the {current_name} does not tie them (an untied consumer), so a "
        "load leaves them at their initial value",
        tuple(f"{dropped}: tied to {recorded_ties[dropped]} when saved" for dropped in untied),
        fix=(f"fix: re-tie after loading ({_attribute(key)} = {_attribute(kept)}), or give "
             "the untied "
             f"model its own copy before loading (state_dict[{key!r}] = "
             f"state_dict[{kept!r}].clone()); on export, clone the tied tensor so the file "
             "keeps every key"))]


def _attribute(key: str) -> str:
    """``model.lm_head.weight``, or ``model.get_submodule('layers.0').weight`` where a
    segment is not a Python name."""
    module, _, name = key.rpartition(".")
    if all(part.isidentifier() for part in key.split(".")):
        return f"model.{key}"
    return f"model.get_submodule({module!r}).{name}"


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
