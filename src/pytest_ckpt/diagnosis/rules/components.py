"""Diagnosis rule about whole submodules absent from one side: a component of the model that
the checkpoint lacks (a partial checkpoint), one of the checkpoint that the model lacks, and
both at once on a shared base: a head swap (a checkpoint saved for another task)."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable

from pytest_ckpt.checkpoint.keys import fold_keys
from pytest_ckpt.diagnosis.findings import Finding
from pytest_ckpt.diagnosis.pool import KeyPool
from pytest_ckpt.diagnosis.rules.structure import layer_skeleton

Family = dict[str, list[str]]  # components that differ only in a layer index -> their keys


def component_rule(pool: KeyPool) -> None:
    """Whole submodules absent from one side: one finding per component (or per family of
    components that differ only in a layer index); one head swap finding when each side
    holds a component the other lacks on top of a larger shared base."""
    model_keys, reference_keys = pool.model_keys(), pool.reference.keys()  # sorted
    model_only = _families(components(pool.missing, model_keys, reference_keys))
    reference_only = _families(components(pool.unexpected, reference_keys, model_keys))
    # the model's keys the reference provides (all of them when a caller passed only gaps)
    shared = len(model_keys) - len(pool.current.key_set() - pool.reference.key_set())
    if model_only and reference_only and max(_size(model_only), _size(reference_only)) < shared:
        _claim_head_swap(pool, reference_only, model_only, shared)
        return
    for family in model_only:
        _claim_component(pool, True, family)
    for family in reference_only:
        _claim_component(pool, False, family)


def _families(found: dict[str, list[str]]) -> list[Family]:
    families: dict[str, Family] = {}
    for component, members in found.items():
        families.setdefault(layer_skeleton(component), {})[component] = members
    return sorted(families.values(), key=min)


def _size(families: list[Family]) -> int:
    return sum(len(keys) for family in families for keys in family.values())


def _claim_component(pool: KeyPool, of_model: bool, family: Family) -> None:
    members = sorted(key for keys in family.values() for key in keys)
    shown, count = _shown(family)
    if of_model:
        pool.claim(Finding("missing_component", tuple(members),
                           f"component `{shown}` ({count}) of the {pool.current_name} is absent "
                           "from the "
                           f"{pool.name} (a partial checkpoint, e.g. a fine-tune that saved "
                           "only what it trained)"), missing=members)
    else:
        pool.claim(Finding("unexpected", tuple(members),
                           f"component `{shown}` ({count}) of the {pool.name} is absent from "
                           f"the {pool.current_name}"), unexpected=members)


def _shown(family: Family) -> tuple[str, str]:
    """A family's folded name and its size: (``layers.{2,3}``, ``2 components, 8 tensors``)."""
    size = sum(len(keys) for keys in family.values())
    names = fold_keys(family)
    shown = names[0] if len(names) == 1 else f"{names[0]} (and {len(names) - 1} more)"
    return shown, f"{size} tensors" if len(family) == 1 else (
        f"{len(family)} components, {size} tensors")


def _claim_head_swap(pool: KeyPool, reference_only: list[Family], model_only: list[Family],
                     shared: int) -> None:
    unexpected = [key for family in reference_only for keys in family.values() for key in keys]
    missing = [key for family in model_only for keys in family.values() for key in keys]
    fix = None
    if (pool.name, pool.current_name) == ("checkpoint", "model"):
        fix = ("fix: load the checkpoint into the base model (without a task head), or declare "
               f"both heads: allow_missing=[{_globs(model_only)}], "
               f"allow_unexpected=[{_globs(reference_only)}]")
    pool.claim(Finding(
        "head_swap", tuple(sorted(unexpected + missing)),
        f"a head swap: the {pool.name} holds another task head than the {pool.current_name}, "
        f"on the same base ({shared} tensors shared)",
        (f"in the {pool.name} only: {_listed(reference_only)}",
         f"in the {pool.current_name} only: {_listed(model_only)}"), fix=fix),
        missing=missing, unexpected=unexpected)


def _listed(families: list[Family]) -> str:
    return ", ".join("`{}` ({})".format(*_shown(family)) for family in families)


def _globs(families: list[Family]) -> str:
    return ", ".join(f'"{name}.*"' for name in sorted(name for family in families
                                                       for name in family))


def components(keys: set[str], everything: Iterable[str],
               other: Iterable[str] = ()) -> dict[str, list[str]]:
    """Group ``keys`` by the outermost module that is wholly absent: the shortest prefix all
    of whose keys in ``everything`` are in ``keys`` and under which ``other`` (the other
    side's keys) has none, never a parent whose other keys are present. Keys under one
    prefix are contiguous in sorted order, so counting is a bisect."""
    wanted, present, elsewhere = sorted(keys), sorted(everything), sorted(other)
    found: dict[str, list[str]] = {}
    index = 0
    while index < len(wanted):
        key = wanted[index]
        for prefix in _prefixes(key):
            inside = _count_under(wanted, prefix)
            if inside >= 2 and inside == _count_under(present, prefix) \
                    and not _count_under(elsewhere, prefix):
                start = bisect_left(wanted, prefix + ".")
                found[prefix] = wanted[start : start + inside]
                index = start + inside
                break
        else:
            index += 1
    return found


def _prefixes(key: str) -> Iterable[str]:
    position = key.find(".")
    while position != -1:
        yield key[:position]
        position = key.find(".", position + 1)


def _count_under(ordered: list[str], prefix: str) -> int:
    return bisect_left(ordered, prefix + "/") - bisect_left(ordered, prefix + ".")
