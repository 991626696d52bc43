"""Diagnosis rules about prefixes: one added to (or removed from) every key by a wrapper
(DDP's ``module.``, torch.compile's ``_orig_mod.``), and a key remap off by a character."""

from __future__ import annotations

from collections import Counter

from pytest_ckpt.checkpoint.keys import common_prefix_length, common_suffix_length
from pytest_ckpt.diagnosis.findings import Finding
from pytest_ckpt.diagnosis.pool import KeyPool
from pytest_ckpt.diagnosis.rules.structure import MAX_RENAME_KEYS, key_splits

MAX_PREFIX_DEPTH = 3  # a wrapper prefix has at most this many segments (module._orig_mod.)
PREFIX_SAMPLE = 2_000  # keys sampled to find candidate prefixes

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
        ordered = pool.sorted_unexpected() if added else pool.sorted_missing()
        for prefix in _candidate_prefixes(ordered, target):
            cut = len(prefix)
            pairs = [(key, key[cut:]) for key in ordered
                     if key.startswith(prefix) and key[cut:] in target]
            if len(pairs) >= 2 or (pairs and len(pairs) == len(source)):
                _claim_prefix(pool, prefix, pairs, added)


def _candidate_prefixes(ordered: list[str], target: set[str]) -> list[str]:
    """Prefixes that map some keys of ``ordered`` (sorted) onto ``target``, most frequent
    first.

    Voting on an evenly spaced sample keeps this fast on 100k-key manifests; every candidate
    is then checked against all keys.
    """
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
        for _, _, rest, segment in key_splits(key):
            by_suffix.setdefault(f"{segment}.{rest}" if rest else segment, []).append(key)
    votes: Counter[tuple[str, str]] = Counter()
    unexpected = pool.sorted_unexpected()
    for key in unexpected[:PREFIX_SAMPLE]:
        for _, _, rest, _ in key_splits(key):
            for other in by_suffix.get(rest, ())[:4] if rest else ():
                # the shared tail ends where the shared head does: 'audio_branch..0.bias'
                # vs 'audio_branch.0.bias' is the prefix 'audio_branch..' -> 'audio_branch.'
                head = common_prefix_length(key, other)
                common = min(common_suffix_length(key, other), min(len(key), len(other)) - head)
                old, new = key[: len(key) - common], other[: len(other) - common]
                if _is_remap_slip(old, key, new, other):
                    votes[(old, new)] += 1
    for (old, new), _ in votes.most_common(3):
        pairs = [(key, new + key[len(old):]) for key in unexpected
                 if key.startswith(old) and key in pool.unexpected
                 and new + key[len(old):] in pool.missing
                 and _is_remap_slip(old, key, new, new + key[len(old):])]
        if len(pairs) >= 2:
            _claim_remap_slip(pool, old, new, pairs)


def _claim_remap_slip(pool: KeyPool, old: str, new: str, pairs: list[tuple[str, str]]) -> None:
    # keys under the slipped prefix whose right name the model has but did not miss (torch
    # filled BatchNorm's num_batches_tracked itself) are the same slip
    model_keys = pool.facts.state_keys | pool.current.key_set()
    strays = [key for key in pool.sorted_unexpected() if key.startswith(old)
              and new + key[len(old):] in model_keys and (key, new + key[len(old):]) not in pairs]
    keys = tuple(old_key for old_key, _ in pairs) + tuple(strays)
    pool.claim(Finding(
        "prefix", keys,
        f"a key remap that is off{_slip_size(old, new)}: the {pool.name}'s keys start with "
        f"'{old}' where the {pool.current_name}'s start with '{new}', so none of these "
        f"{len(keys)} keys matches a key of the {pool.current_name}",
        (f"{len(keys)} keys, e.g. {pairs[0][0]} -> {pairs[0][1]}",),
        fix=(f"fix: the closest correct mapping replaces '{old}' with '{new}' (e.g. "
             f"{{k.replace({old!r}, {new!r}, 1): v for k, v in state_dict.items()}}); correct "
             "the string or slice your remap uses" + _slice_hint(old, new))),
        missing=(new_key for _, new_key in pairs), unexpected=keys, pairs=pairs)


def _slip_size(old: str, new: str) -> str:
    if old.startswith(new) or new.startswith(old):
        return f" by {_chars(abs(len(old) - len(new)))}"
    return ""


def _slice_hint(old: str, new: str) -> str:
    """What a slice-based remap got wrong, when one prefix extends the other."""
    if old.startswith(new):
        extra = old[len(new):]
        return (f" (it keeps {extra!r} of the old prefix: a slice {_chars(len(extra))} "
                f"short, key[n:] where key[n+{len(extra)}:] was meant)")
    if new.startswith(old):
        lost = new[len(old):]
        return (f" (it cuts {lost!r} off each name: a slice {_chars(len(lost))} too "
                f"long, key[n+{len(lost)}:] where key[n:] was meant)")
    return ""


def _chars(count: int) -> str:
    return f"{count} character{'s' if count > 1 else ''}"


def _is_remap_slip(old: str, key: str, new: str, other: str) -> bool:
    """``key`` = ``old`` + tail and ``other`` = ``new`` + tail is a remap off by a character:
    both prefixes given, at least one of them whole segments, and not a clean swap of whole
    segments on both sides (the rename rule's case)."""
    old_whole = old.endswith(".") or key[len(old):].startswith(".")
    new_whole = new.endswith(".") or other[len(new):].startswith(".")
    clean = key[len(old):].startswith(".") and other[len(new):].startswith(".")
    return bool(old and new) and (old_whole or new_whole) and not clean
