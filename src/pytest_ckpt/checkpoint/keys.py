"""Key folding: keys that differ only in integer segments are shown as one line
(``decoder.layers.{0..11}.attn.q_proj.weight``), exactly invertible. Pure."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

Segment = str | frozenset[int]


# A longer run of digits is a name, not a layer index (and int() refuses more than 4300
# digits, which a file's keys may hold).
MAX_INDEX_DIGITS = 18


def layer_index(text: str) -> int | None:
    """``text`` read as a layer index: ASCII digits without a leading zero, at most
    ``MAX_INDEX_DIGITS`` of them; ``None`` for anything else (``01`` stays a name, so
    folding stays exact)."""
    if text.isascii() and text.isdigit() and len(text) <= MAX_INDEX_DIGITS and (
            text == "0" or text[0] != "0"):
        return int(text)
    return None


def _segment(text: str) -> Segment:
    index = layer_index(text)
    return text if index is None else frozenset({index})


def fold_keys(keys: Iterable[str]) -> list[str]:
    """Fold keys that differ only in integer segments: ``layers.{0..11}.attn.weight``.

    Folding is exact: :func:`expand_folded` of the result gives back the input keys.
    """
    # Keys with one integer segment fold with exactly the keys that read the same with the
    # integer masked (a key with none or several never folds with them): one dict pass, the
    # common case at 100k keys. The rest fold position by position.
    plain: list[str] = []
    single: dict[str, set[int]] = {}
    items: set[tuple[Segment, ...]] = set()
    for key in set(keys):
        found = _INTEGER_SEGMENT.search(key)
        if found is None:
            plain.append(key)
        elif "\0" not in key and _INTEGER_SEGMENT.search(key, found.end()) is None:
            skeleton = f"{key[: found.start()]}\0{key[found.end() :]}"
            single.setdefault(skeleton, set()).add(int(found.group()))
        else:
            items.add(tuple(_segment(part) for part in key.split(".")))
    lines = [*plain, *(skeleton.replace("\0", render_numbers(frozenset(numbers)))
                       for skeleton, numbers in single.items()),
             *(_render_segments(item) for item in fold_by_position(items))]
    return sorted(lines, key=lambda text: (natural_key(text), text))


# a whole segment that layer_index reads as an index
_INTEGER_SEGMENT = re.compile(rf"(?<![^.])(?:0|[1-9][0-9]{{0,{MAX_INDEX_DIGITS - 1}}})(?![^.])")


def fold_by_position(items: set[tuple[Segment, ...]]) -> set[tuple[Segment, ...]]:
    """The general fold: for each position in turn, merge the items equal everywhere else."""
    longest = max((len(item) for item in items), default=0)
    for position in range(longest):
        items = _fold_position(items, position)
    return items


def _fold_position(items: set[tuple[Segment, ...]], position: int) -> set[tuple[Segment, ...]]:
    groups: dict[tuple[Segment, ...], set[int]] = {}
    folded: set[tuple[Segment, ...]] = set()
    for item in items:
        value = item[position] if position < len(item) else None
        if isinstance(value, frozenset):
            skeleton = (*item[:position], "\0", *item[position + 1 :])
            groups.setdefault(skeleton, set()).update(value)
        else:
            folded.add(item)
    for skeleton, numbers in groups.items():
        folded.add((*skeleton[:position], frozenset(numbers), *skeleton[position + 1 :]))
    return folded


def _render_segments(item: tuple[Segment, ...]) -> str:
    return ".".join(part if isinstance(part, str) else render_numbers(part) for part in item)


def render_numbers(numbers: frozenset[int]) -> str:
    ordered = sorted(numbers)
    if len(ordered) == 1:
        return str(ordered[0])
    runs: list[list[int]] = []
    for number in ordered:
        if runs and number == runs[-1][-1] + 1:
            runs[-1].append(number)
        else:
            runs.append([number])
    parts = [f"{run[0]}..{run[-1]}" if len(run) > 2 else ",".join(map(str, run)) for run in runs]
    return "{" + ",".join(parts) + "}"


def expand_folded(pattern: str) -> list[str]:
    """Inverse of :func:`fold_keys` for one folded line."""
    results = [""]
    for token in re.split(r"(\{[0-9.,]+\})", pattern):
        choices = _expand_numbers(token[1:-1]) if token.startswith("{") else [token]
        results = [prefix + choice for prefix in results for choice in choices]
    return results


def _expand_numbers(body: str) -> list[str]:
    numbers: list[str] = []
    for part in body.split(","):
        start, _, stop = part.partition("..")
        numbers.extend(str(n) for n in range(int(start), int(stop or start) + 1))
    return numbers


def natural_key(text: str) -> list[Any]:
    """Sort key that orders runs of digits by value (``layers.2`` before ``layers.10``),
    compared as (length, digits) without leading zeros: no int() of a run of any length."""
    return [(0, len(digits), digits) if part.isascii() and part.isdigit() else (1, 0, part)
            for part in re.split(r"([0-9]+)", text) for digits in (part.lstrip("0"),)]


def common_prefix_length(left: str, right: str) -> int:
    """How many leading characters two strings share."""
    count = 0
    for a, b in zip(left, right, strict=False):
        if a != b:
            break
        count += 1
    return count


def common_suffix_length(left: str, right: str) -> int:
    """How many trailing characters two strings share."""
    count = 0
    for a, b in zip(reversed(left), reversed(right), strict=False):
        if a != b:
            break
        count += 1
    return count
