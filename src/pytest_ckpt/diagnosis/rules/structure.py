"""Diagnosis rules about where keys live: renames and buffers (prefixes and remaps off by a
character are in ``prefixes``, whole components in ``components``)."""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable
from operator import attrgetter

from pytest_ckpt.checkpoint.keys import fold_keys, layer_index, render_numbers
from pytest_ckpt.checkpoint.manifest import BUFFER
from pytest_ckpt.diagnosis.findings import Finding
from pytest_ckpt.diagnosis.pool import KeyPool

MAX_RENAME_KEYS = 50_000  # above this many unexplained keys the rename search is skipped
MAX_PARENTS = 4  # parent modules named in a rename's hint (folded), before "and N more"


def buffer_rule(pool: KeyPool) -> None:
    """Buffers whose persistence differs between the reference and the model."""
    dropped = sorted(key for key in pool.unexpected if key in pool.facts.nonpersistent_buffers)
    if dropped:
        pool.claim(Finding(
            "buffer_persistence", tuple(dropped),
            f"a non-persistent buffer in the {pool.current_name} (persistent=False) that the "
            f"{pool.name} "
            "still holds: a newer version stopped saving it; drop these keys before a strict "
            "load"), unexpected=dropped)
    buffers = [key for key in pool.missing if pool.current[key].kind == BUFFER]
    present = {row.key.rpartition(".")[0] for row in pool.reference} if buffers else set()
    absent = sorted(key for key in buffers if key.rpartition(".")[0] in present)
    if absent:
        batchnorm = any(key.endswith("num_batches_tracked") for key in absent)
        pool.claim(Finding(
            "buffer_persistence", tuple(absent),
            f"a persistent buffer of the {pool.current_name} that the {pool.name} lacks "
            "although it holds "
            "the rest of the module" + (
                " (BatchNorm's num_batches_tracked: old checkpoints predate it; torch fills it "
                "when the state_dict's _metadata records the module at version 1 or not at all, "
                "so a strict load passes, and raises 'Missing key(s)' for version 2)"
                if batchnorm else "")), missing=absent)


def rename_rule(pool: KeyPool) -> None:
    """Missing/unexpected pairs that differ in one path segment, with equal shapes and dtypes.

    One cause, one finding: a rename repeated in every layer (``layers.{0..31}.q`` ->
    ``layers.{0..31}.query``) or the same attribute renamed under different parents
    (``LayerNorm`` -> ``layer_norm`` in the embeddings and in every layer's output).
    """
    if not pool.missing or not pool.unexpected or (
            len(pool.missing) + len(pool.unexpected) > MAX_RENAME_KEYS):
        return
    groups = _decided_by_shapes(_rename_candidates(pool), pool)
    by_old, by_new = _candidates_by_side(groups)
    ambiguous: list[str] = []
    renames: dict[tuple[str, str, str], dict[str, list[tuple[str, str]]]] = {}
    for (base, old, new), pairs in sorted(groups.items()):
        if len(by_old[(base, old)]) > 1 or len(by_new[(base, new)]) > 1:
            choices = " or ".join(sorted(by_old[(base, old)]))
            ambiguous.append(f"{_join(base, old)} could be {choices}")
        else:
            renames.setdefault((_rename_scope(base, old, new), old, new), {})[base] = pairs
    for (_, old, new), by_base in renames.items():
        claim = _claim_rename if len({layer_skeleton(base) for base in by_base}) == 1 \
            else _claim_attribute_rename
        claim(pool, list(by_base), old, new,
              [pair for pairs in by_base.values() for pair in pairs])
    if ambiguous:
        pool.findings.append(Finding(
            "rename", (), "ambiguous renames (several same-shaped candidates), not applied",
            tuple(dict.fromkeys(ambiguous))))


Candidates = dict[tuple[str, str, str], list[tuple[str, str]]]  # (base, old, new) -> pairs


def _candidates_by_side(groups: Candidates) -> tuple[dict[tuple[str, str], set[str]],
                                                     dict[tuple[str, str], set[str]]]:
    by_old: dict[tuple[str, str], set[str]] = {}
    by_new: dict[tuple[str, str], set[str]] = {}
    for (base, old, new) in groups:
        by_old.setdefault((base, old), set()).add(new)
        by_new.setdefault((base, new), set()).add(old)
    return by_old, by_new


def _decided_by_shapes(groups: Candidates, pool: KeyPool) -> Candidates:
    """Of several same-named candidates for one rename (``sed_model`` -> ``audio_branch`` or
    ``text_branch``), the one that matches every key with its shape, when only one does."""
    by_old, by_new = _candidates_by_side(groups)
    dropped: set[tuple[str, str, str]] = set()
    for by_name, keys, new_side in ((by_old, pool.unexpected, False),
                                    (by_new, pool.missing, True)):

        def group_of(base: str, name: str, other: str, new_side: bool = new_side,
                     ) -> tuple[str, str, str]:
            return (base, other, name) if new_side else (base, name, other)

        ordered = sorted(keys)
        for (base, name), others in by_name.items():
            if len(others) > 1:
                total = _count_under(ordered, _join(base, name)) + (_join(base, name) in keys)
                whole = [other for other in others
                         if len(groups[group_of(base, name, other)]) == total]
                if len(whole) == 1:
                    dropped |= {group_of(base, name, other) for other in others
                                if other != whole[0]}
    return {group: pairs for group, pairs in groups.items() if group not in dropped}


def _count_under(ordered: list[str], prefix: str) -> int:
    return bisect_left(ordered, prefix + "/") - bisect_left(ordered, prefix + ".")


def _claim_rename(pool: KeyPool, bases: list[str], old: str, new: str,
                  pairs: list[tuple[str, str]]) -> None:
    before = _folded_one(_join(base, old) for base in bases)
    after = _folded_one(_join(base, new) for base in bases)
    pool.claim(Finding(
        "rename", tuple(sorted(old_key for old_key, _ in pairs)),
        f"{before}.* in the {pool.name} is {after}.* in the {pool.current_name} (same shapes "
        "and dtypes): "
        "rename the attribute back, or map the old keys in the load path",
        (f"{before} -> {after}: {len(pairs)} keys",)),
        missing=(new_key for _, new_key in pairs),
        unexpected=(old_key for old_key, _ in pairs), pairs=pairs)


def _claim_attribute_rename(pool: KeyPool, bases: list[str], old: str, new: str,
                            pairs: list[tuple[str, str]]) -> None:
    """The same attribute renamed in modules with different paths: one finding."""
    parents = fold_keys(base or "<root>" for base in bases)
    shown = ", ".join(parents[:MAX_PARENTS]) + (
        f" (and {len(parents) - MAX_PARENTS} more)" if len(parents) > MAX_PARENTS else "")
    pool.claim(Finding(
        "rename", tuple(sorted(old_key for old_key, _ in pairs)),
        f"`{old}` in the {pool.name} is `{new}` in the {pool.current_name} under "
        f"{len(bases)} modules: {shown} (same shapes and dtypes): rename the attribute back, "
        "or map the old keys in the load path",
        (f"{old} -> {new}: {len(pairs)} keys",)),
        missing=(new_key for _, new_key in pairs),
        unexpected=(old_key for old_key, _ in pairs), pairs=pairs)


def _rename_scope(base: str, old: str, new: str) -> str:
    """What renames are grouped by: an attribute renamed anywhere is one cause; an index
    renamed (``3`` -> ``4``: a layer inserted) is one per place."""
    numeric = any(name.isascii() and name.isdigit() for name in (old, new))
    return layer_skeleton(base) if numeric else ""


def _folded_one(names: Iterable[str]) -> str:
    """One display line for names that share a skeleton (``layers.{0..31}.q``)."""
    split = [name.split(".") for name in names]
    numbers: dict[int, set[int]] = {}
    for parts in split:
        for position, part in enumerate(parts):
            index = layer_index(part)
            if index is not None:
                numbers.setdefault(position, set()).add(index)
    if math.prod(len(values) for values in numbers.values()) == len(split):
        first = split[0]
        return ".".join(render_numbers(frozenset(numbers[i])) if i in numbers else part
                        for i, part in enumerate(first))
    folded = fold_keys(".".join(parts) for parts in split)
    return folded[0] if len(folded) == 1 else f"{folded[0]} (and {len(folded) - 1} more)"


def layer_skeleton(base: str) -> str:
    """``base`` with every integer segment replaced by ``#``: the same path in every layer."""
    return ".".join("#" if part.isascii() and part.isdigit() else part
                    for part in base.split("."))


def _rename_candidates(pool: KeyPool) -> dict[tuple[str, str, str], list[tuple[str, str]]]:
    varying = _varying_positions(pool.missing | pool.unexpected)
    index: dict[tuple[int, str, str], list[tuple[str, str]]] = {}
    for key in pool.missing:
        for position, base, rest, segment in key_splits(key, varying):
            index.setdefault((position, base, rest), []).append((segment, key))
    groups: dict[tuple[str, str, str], list[tuple[str, str]]] = {}
    old_rows, new_rows = pool.reference.row_map(), pool.current.row_map()
    signature = attrgetter("shape", "dtype")
    for key in pool.unexpected:
        old = signature(old_rows[key])
        for position, base, rest, segment in key_splits(key, varying):
            for new_segment, new_key in index.get((position, base, rest), ()):
                if old == signature(new_rows[new_key]):
                    groups.setdefault((base, segment, new_segment), []).append((key, new_key))
    return groups


def _varying_positions(keys: Iterable[str]) -> dict[int, set[int]]:
    """Segment count -> the positions where keys with that many segments do not all hold
    the same segment: a rename pairs two keys of one count that differ at one position, so
    the other positions (``decoder.layers`` in every key) need not be indexed."""
    first: dict[int, list[str]] = {}
    varying: dict[int, set[int]] = {}
    for key in keys:
        parts = key.split(".")
        seen = first.setdefault(len(parts), parts)
        if seen is not parts:
            positions = varying.setdefault(len(parts), set())
            positions.update(i for i, (a, b) in enumerate(zip(seen, parts, strict=True))
                             if a != b)
    return varying


def key_splits(key: str, varying: dict[int, set[int]] | None = None,
               ) -> Iterable[tuple[int, str, str, str]]:
    """(position, the part before segment, the part after it, segment) for every segment;
    with ``varying`` (:func:`_varying_positions`), for the positions it lists only."""
    parts = key.split(".")
    wanted = None if varying is None else varying.get(len(parts), set())
    start = 0
    for position, segment in enumerate(parts):
        end = start + len(segment)
        if wanted is None or position in wanted:
            yield position, key[: start - 1] if start else "", key[end + 1 :], segment
        start = end + 1


def _join(base: str, segment: str) -> str:
    return f"{base}.{segment}" if base else segment
