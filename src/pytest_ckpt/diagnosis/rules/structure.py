"""Diagnosis rules about where keys live: prefixes, renames, remaps off by a character,
buffers (whole components are in ``components``)."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from operator import attrgetter

from pytest_ckpt.checkpoint.keys import fold_keys, render_numbers
from pytest_ckpt.checkpoint.manifest import BUFFER
from pytest_ckpt.diagnosis.findings import Finding
from pytest_ckpt.diagnosis.pool import KeyPool

MAX_PREFIX_DEPTH = 3  # a wrapper prefix has at most this many segments (module._orig_mod.)
MAX_RENAME_KEYS = 50_000  # above this many unexplained keys the rename search is skipped
PREFIX_SAMPLE = 2_000  # keys sampled to find candidate prefixes
MAX_PARENTS = 4  # parent modules named in a rename's hint (folded), before "and N more"

_ORIGINS = {
    "module.": "DataParallel / DistributedDataParallel",
    "_orig_mod.": "torch.compile",
    "module._orig_mod.": "DistributedDataParallel around torch.compile",
    "_orig_mod.module.": "torch.compile around DistributedDataParallel",
}


def prefix_rule(pool: KeyPool) -> None:
    """A prefix added to (or removed from) every key of the reference: ``module.``, ...."""
    for added in (True, False):
        source, target = (pool.unexpected, pool.missing) if added else (pool.missing,
                                                                          pool.unexpected)
        if not source or not target:
            continue
        for prefix in _candidate_prefixes(source, target):
            cut = len(prefix)
            pairs = [(key, key[cut:]) for key in sorted(source)
                     if key.startswith(prefix) and key[cut:] in target]
            if len(pairs) >= 2 or (pairs and len(pairs) == len(source)):
                _claim_prefix(pool, prefix, pairs, added)


def _candidate_prefixes(source: set[str], target: set[str]) -> list[str]:
    """Prefixes that map some keys of ``source`` onto ``target``, most frequent first.

    Voting on an evenly spaced sample keeps this fast on 100k-key manifests; every candidate
    is then checked against all keys.
    """
    ordered = sorted(source)
    sample = ordered[:: max(1, len(ordered) // PREFIX_SAMPLE)]
    votes: Counter[str] = Counter()
    for key in sample:
        position, depth = key.find("."), 0
        while position != -1 and depth < MAX_PREFIX_DEPTH:
            if key[position + 1 :] in target:
                votes[key[: position + 1]] += 1
            position, depth = key.find(".", position + 1), depth + 1
    return [prefix for prefix, _ in sorted(votes.items(), key=lambda item: (-item[1], item[0]))]


def _claim_prefix(pool: KeyPool, prefix: str, pairs: list[tuple[str, str]],
                  added: bool) -> None:
    origin = _ORIGINS.get(prefix)
    why = f" (saved from a model wrapped in {origin})" if origin and added else (
        f" (the {pool.current_name} is wrapped in {origin})" if origin else "")
    if added:
        hint = (f"every key in the {pool.name} carries the prefix '{prefix}'{why}; strip it: "
                f"torch.nn.modules.utils.consume_prefix_in_state_dict_if_present(state_dict, "
                f"'{prefix}')")
        mapping = [(key, rest) for key, rest in pairs]
    else:
        hint = (f"the {pool.current_name}'s keys carry the prefix '{prefix}'{why} that the "
                f"{pool.name}'s do "
                f"not; load into the unwrapped module, or add the prefix")
        mapping = [(rest, key) for key, rest in pairs]
    example = mapping[0]
    pool.claim(Finding("prefix", tuple(old for old, _ in mapping), hint,
                       (f"{len(mapping)} keys, e.g. {example[0]} -> {example[1]}",)),
               missing=(new for _, new in mapping), unexpected=(old for old, _ in mapping),
               pairs=mapping)


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
    present = {row.key.rpartition(".")[0] for row in pool.reference}
    absent = sorted(key for key in pool.missing if pool.current[key].kind == BUFFER
                    and key.rpartition(".")[0] in present)
    if absent:
        batchnorm = any(key.endswith("num_batches_tracked") for key in absent)
        pool.claim(Finding(
            "buffer_persistence", tuple(absent),
            f"a persistent buffer of the {pool.current_name} that the {pool.name} lacks "
            "although it holds "
            "the rest of the module" + (" (BatchNorm's num_batches_tracked: old checkpoints "
                                        "predate it)" if batchnorm else "")), missing=absent)


def rename_rule(pool: KeyPool) -> None:
    """Missing/unexpected pairs that differ in one path segment, with equal shapes and dtypes.

    One cause, one finding: a rename repeated in every layer (``layers.{0..31}.q`` ->
    ``layers.{0..31}.query``) or the same attribute renamed under different parents
    (``LayerNorm`` -> ``layer_norm`` in the embeddings and in every layer's output).
    """
    if not pool.missing or not pool.unexpected or (
            len(pool.missing) + len(pool.unexpected) > MAX_RENAME_KEYS):
        return
    groups = _rename_candidates(pool)
    by_old: dict[tuple[str, str], set[str]] = {}
    by_new: dict[tuple[str, str], set[str]] = {}
    for (base, old, new) in groups:
        by_old.setdefault((base, old), set()).add(new)
        by_new.setdefault((base, new), set()).add(old)
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
            if part.isascii() and part.isdigit() and part == str(int(part)):
                numbers.setdefault(position, set()).add(int(part))
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
    index: dict[tuple[int, str, str], list[tuple[str, str]]] = {}
    for key in pool.missing:
        for position, base, rest, segment in _splits(key):
            index.setdefault((position, base, rest), []).append((segment, key))
    groups: dict[tuple[str, str, str], list[tuple[str, str]]] = {}
    old_rows, new_rows = pool.reference.row_map(), pool.current.row_map()
    signature = attrgetter("shape", "dtype")
    for key in pool.unexpected:
        old = signature(old_rows[key])
        for position, base, rest, segment in _splits(key):
            for new_segment, new_key in index.get((position, base, rest), ()):
                if old == signature(new_rows[new_key]):
                    groups.setdefault((base, segment, new_segment), []).append((key, new_key))
    return groups


def _splits(key: str) -> Iterable[tuple[int, str, str, str]]:
    """(position, the part before segment, the part after it, segment) for every segment."""
    start = 0
    for position, segment in enumerate(key.split(".")):
        end = start + len(segment)
        yield position, key[: max(start - 1, 0)], key[end + 1 :], segment
        start = end + 1


def _join(base: str, segment: str) -> str:
    return f"{base}.{segment}" if base else segment


def prefix_swap_rule(pool: KeyPool) -> None:
    """One prefix replaced by another for many keys, not at a segment boundary: a key remap
    that is off by a character (``text_model`` -> ``text_branch.``).

    One of the two prefixes is whole segments (the remap's intended string); two keys that
    merely share trailing characters (``cls.predictions.decod|er.weight``,
    ``classifi|er.weight``) are not a remap.
    """
    if not pool.missing or not pool.unexpected or (
            len(pool.missing) + len(pool.unexpected) > MAX_RENAME_KEYS):
        return
    by_suffix: dict[str, list[str]] = {}
    for key in pool.missing:
        for _, _, rest, segment in _splits(key):
            by_suffix.setdefault(f"{segment}.{rest}" if rest else segment, []).append(key)
    votes: Counter[tuple[str, str]] = Counter()
    for key in sorted(pool.unexpected)[:PREFIX_SAMPLE]:
        for _, _, rest, _ in _splits(key):
            for other in by_suffix.get(rest, ())[:4] if rest else ():
                # the shared tail ends where the shared head does: 'audio_branch..0.bias'
                # vs 'audio_branch.0.bias' is the prefix 'audio_branch..' -> 'audio_branch.'
                head = _common_prefix(key, other)
                common = min(_common_suffix(key, other), min(len(key), len(other)) - head)
                old, new = key[: len(key) - common], other[: len(other) - common]
                if _is_remap_slip(old, key, new, other):
                    votes[(old, new)] += 1
    for (old, new), _ in votes.most_common(3):
        pairs = [(key, new + key[len(old):]) for key in sorted(pool.unexpected)
                 if key.startswith(old) and new + key[len(old):] in pool.missing
                 and _is_remap_slip(old, key, new, new + key[len(old):])]
        if len(pairs) >= 2:
            pool.claim(Finding(
                "prefix", tuple(old_key for old_key, _ in pairs),
                f"the {pool.name}'s keys start with '{old}' where the {pool.current_name}'s "
                "start with "
                f"'{new}': a key remap that is off (check the strings it replaces)",
                (f"{len(pairs)} keys, e.g. {pairs[0][0]} -> {pairs[0][1]}",)),
                missing=(new_key for _, new_key in pairs),
                unexpected=(old_key for old_key, _ in pairs), pairs=pairs)


def _is_remap_slip(old: str, key: str, new: str, other: str) -> bool:
    """``key`` = ``old`` + tail and ``other`` = ``new`` + tail is a remap off by a character:
    both prefixes given, at least one of them whole segments, and not a clean swap of whole
    segments on both sides (the rename rule's case)."""
    old_whole = old.endswith(".") or key[len(old):].startswith(".")
    new_whole = new.endswith(".") or other[len(new):].startswith(".")
    clean = key[len(old):].startswith(".") and other[len(new):].startswith(".")
    return bool(old and new) and (old_whole or new_whole) and not clean


def _common_prefix(left: str, right: str) -> int:
    """How many leading characters two strings share."""
    count = 0
    for a, b in zip(left, right, strict=False):
        if a != b:
            break
        count += 1
    return count


def _common_suffix(left: str, right: str) -> int:
    """How many trailing characters two strings share."""
    count = 0
    for a, b in zip(reversed(left), reversed(right), strict=False):
        if a != b:
            break
        count += 1
    return count
