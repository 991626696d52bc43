"""Diagnosis rules about where keys live: prefixes, renames, whole components, buffers."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from pytest_ckpt.diagnose import KeyPool, Rule
from pytest_ckpt.findings import Finding
from pytest_ckpt.manifest import BUFFER

MAX_PREFIX_DEPTH = 3  # a wrapper prefix has at most this many segments (module._orig_mod.)
MAX_RENAME_KEYS = 50_000  # above this many unexplained keys the rename search is skipped

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
        votes = _prefix_votes(source, target)
        for prefix in sorted(votes, key=lambda p: (-len(votes[p]), p)):
            pairs = [(key, rest) for key, rest in votes[prefix] if key in source and rest in target]
            if len(pairs) < 2 and len(pairs) != len(source):
                continue
            _claim_prefix(pool, prefix, pairs, added)


def _prefix_votes(source: set[str], target: set[str]) -> dict[str, list[tuple[str, str]]]:
    votes: dict[str, list[tuple[str, str]]] = {}
    for key in source:
        position, depth = key.find("."), 0
        while position != -1 and depth < MAX_PREFIX_DEPTH:
            rest = key[position + 1 :]
            if rest in target:
                votes.setdefault(key[: position + 1], []).append((key, rest))
            position, depth = key.find(".", position + 1), depth + 1
    return votes


def _claim_prefix(pool: KeyPool, prefix: str, pairs: list[tuple[str, str]],
                  added: bool) -> None:
    origin = _ORIGINS.get(prefix)
    why = f" (saved from a model wrapped in {origin})" if origin and added else (
        f" (the model is wrapped in {origin})" if origin else "")
    if added:
        hint = (f"every key in the {pool.name} carries the prefix '{prefix}'{why}; strip it: "
                f"torch.nn.modules.utils.consume_prefix_in_state_dict_if_present(state_dict, "
                f"'{prefix}')")
        mapping = [(key, rest) for key, rest in pairs]
    else:
        hint = (f"the model's keys carry the prefix '{prefix}'{why} that the {pool.name}'s do "
                f"not; load into the unwrapped module, or add the prefix")
        mapping = [(rest, key) for key, rest in pairs]
    example = min(mapping)
    pool.claim(Finding("prefix", tuple(sorted(old for old, _ in mapping)), hint,
                       (f"{len(mapping)} keys, e.g. {example[0]} -> {example[1]}",)),
               missing=(new for _, new in mapping), unexpected=(old for old, _ in mapping),
               pairs=mapping)


def buffer_rule(pool: KeyPool) -> None:
    """Buffers whose persistence differs between the reference and the model."""
    dropped = sorted(key for key in pool.unexpected if key in pool.facts.nonpersistent_buffers)
    if dropped:
        pool.claim(Finding(
            "buffer_persistence", tuple(dropped),
            f"a non-persistent buffer in the model (persistent=False) that the {pool.name} "
            "still holds: a newer version stopped saving it; drop these keys before a strict "
            "load"), unexpected=dropped)
    present = {row.key.rpartition(".")[0] for row in pool.reference}
    absent = sorted(key for key in pool.missing if pool.current[key].kind == BUFFER
                    and key.rpartition(".")[0] in present)
    if absent:
        batchnorm = any(key.endswith("num_batches_tracked") for key in absent)
        pool.claim(Finding(
            "buffer_persistence", tuple(absent),
            f"a persistent buffer of the model that the {pool.name} lacks although it holds "
            "the rest of the module" + (" (BatchNorm's num_batches_tracked: old checkpoints "
                                        "predate it)" if batchnorm else "")), missing=absent)


def rename_rule(pool: KeyPool) -> None:
    """Missing/unexpected pairs that differ in one path segment, with equal shapes and dtypes."""
    if len(pool.missing) + len(pool.unexpected) > MAX_RENAME_KEYS:
        return
    groups = _rename_candidates(pool)
    by_old: dict[tuple[str, str], set[str]] = {}
    by_new: dict[tuple[str, str], set[str]] = {}
    for (base, old, new) in groups:
        by_old.setdefault((base, old), set()).add(new)
        by_new.setdefault((base, new), set()).add(old)
    ambiguous = []
    for (base, old, new), pairs in sorted(groups.items()):
        if len(by_old[(base, old)]) > 1 or len(by_new[(base, new)]) > 1:
            choices = " or ".join(sorted(by_old[(base, old)]))
            ambiguous.append(f"{_join(base, old)} could be {choices}")
            continue
        pool.claim(Finding(
            "rename", tuple(sorted(old_key for old_key, _ in pairs)),
            f"{_join(base, old)}.* in the {pool.name} is {_join(base, new)}.* in the model "
            "(same shapes and dtypes): rename the attribute back, or map the old keys in the "
            "load path", (f"{_join(base, old)} -> {_join(base, new)}: {len(pairs)} keys",)),
            missing=(new_key for _, new_key in pairs),
            unexpected=(old_key for old_key, _ in pairs), pairs=pairs)
    if ambiguous:
        pool.findings.append(Finding(
            "rename", (), "ambiguous renames (several same-shaped candidates), not applied",
            tuple(dict.fromkeys(ambiguous))))


def _rename_candidates(pool: KeyPool) -> dict[tuple[str, str, str], list[tuple[str, str]]]:
    index: dict[tuple[int, str, str], list[tuple[str, str]]] = {}
    for key in pool.missing:
        for position, base, rest, segment in _splits(key):
            index.setdefault((position, base, rest), []).append((segment, key))
    groups: dict[tuple[str, str, str], list[tuple[str, str]]] = {}
    for key in pool.unexpected:
        for position, base, rest, segment in _splits(key):
            for new_segment, new_key in index.get((position, base, rest), ()):
                old, new = pool.reference[key], pool.current[new_key]
                if (old.shape, old.dtype) == (new.shape, new.dtype):
                    groups.setdefault((base, segment, new_segment), []).append((key, new_key))
    return groups


def _splits(key: str) -> Iterable[tuple[int, str, str, str]]:
    parts = key.split(".")
    for position in range(len(parts)):
        yield (position, ".".join(parts[:position]), ".".join(parts[position + 1 :]),
               parts[position])


def _join(base: str, segment: str) -> str:
    return f"{base}.{segment}" if base else segment


def component_rule(pool: KeyPool) -> None:
    """Whole submodules absent from one side, one finding per component."""
    for keys, side in ((pool.missing, "model"), (pool.unexpected, pool.name)):
        everything = pool.current.keys() if side == "model" else pool.reference.keys()
        for component, members in sorted(_components(keys, everything).items()):
            other = pool.name if side == "model" else "model"
            kind = "missing_component" if side == "model" else "unexpected"
            hint = (f"component `{component}` ({len(members)} tensors) of the {side} is absent "
                    f"from the {other}")
            if kind == "missing_component":
                hint += " (a partial checkpoint, e.g. a fine-tune that saved only what it trained)"
                pool.claim(Finding(kind, tuple(members), hint), missing=members)
            else:
                pool.claim(Finding(kind, tuple(members), hint), unexpected=members)


def _components(keys: set[str], everything: Iterable[str]) -> dict[str, list[str]]:
    """Group ``keys`` by the shortest prefix all of whose keys are in ``keys``."""
    wanted = Counter(prefix for key in keys for prefix in _prefixes(key))
    total = Counter(prefix for key in everything for prefix in _prefixes(key) if prefix in wanted)
    components: dict[str, list[str]] = {}
    for key in keys:
        for prefix in _prefixes(key):
            if wanted[prefix] == total[prefix]:
                components.setdefault(prefix, []).append(key)
                break
    return {prefix: sorted(members) for prefix, members in components.items()
            if len(members) >= 2}


def _prefixes(key: str) -> Iterable[str]:
    position = key.find(".")
    while position != -1:
        yield key[:position]
        position = key.find(".", position + 1)


STRUCTURE_RULES: list[Rule] = [prefix_rule, buffer_rule, rename_rule, component_rule]
