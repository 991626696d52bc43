"""Findings, key folding and rendering: every failure message is built here (pure, no torch).

A :class:`Finding` names one cause (``kind`` from the design vocabulary), the keys it
explains and a one-line hint. :func:`render_failure` turns findings into the message users
read: first line what broke, then one block per finding with keys folded by layer index
(``decoder.layers.{0..11}.attn.q_proj.weight``), last line the fix.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

KINDS = (
    "missing", "unexpected", "fsdp_local_shards", "missing_component", "prefix", "rename",
    "weight_norm_layout",
    "parametrization", "buffer_persistence", "mha_packing", "tied_weights", "shape", "dtype",
    "not_loaded", "value", "output", "unsafe_pickle", "training_state",
)
# The order in which findings are shown: keys first, then shapes/dtypes, then values.
_ORDER = {kind: position for position, kind in enumerate(KINDS)}

MAX_KEY_LINES = 8
MAX_DETAIL_LINES = 6


@dataclass(frozen=True)
class Finding:
    """One diagnosed cause of an incompatibility."""

    kind: str
    keys: tuple[str, ...]
    hint: str
    details: tuple[str, ...] = field(default=())
    # the keys on the model's side that the same cause explains (a rename's new names, ...)
    related: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.kind not in _ORDER:
            raise ValueError(f"unknown finding kind {self.kind!r}; expected one of {KINDS}")

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "keys": list(self.keys), "folded": fold_keys(self.keys),
                "hint": self.hint, "details": list(self.details), "related": list(self.related)}


def sort_findings(findings: Iterable[Finding]) -> list[Finding]:
    return sorted(findings, key=lambda finding: _ORDER[finding.kind])  # stable: rule order


# -- folding -----------------------------------------------------------------------------

Segment = str | frozenset[int]


def _segment(text: str) -> Segment:
    if text.isascii() and text.isdigit() and text == str(int(text)):
        return frozenset({int(text)})
    return text


def fold_keys(keys: Iterable[str]) -> list[str]:
    """Fold keys that differ only in integer segments: ``layers.{0..11}.attn.weight``.

    Folding is exact: :func:`expand_folded` of the result gives back the input keys.
    """
    items = {tuple(_segment(part) for part in key.split(".")) for key in keys}
    longest = max((len(item) for item in items), default=0)
    for position in range(longest):
        items = _fold_position(items, position)
    return sorted((_render_segments(item) for item in items),
                  key=lambda text: (_natural_key(text), text))


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


def _natural_key(text: str) -> list[Any]:
    return [(0, int(part), "") if part.isascii() and part.isdigit() else (1, 0, part)
            for part in re.split(r"([0-9]+)", text)]


# -- rendering ---------------------------------------------------------------------------

_RED, _YELLOW, _BOLD, _RESET = "\x1b[31m", "\x1b[33m", "\x1b[1m", "\x1b[0m"


def render_keys(keys: Sequence[str], limit: int = MAX_KEY_LINES) -> list[str]:
    folded = fold_keys(keys)
    shown = folded[:limit]
    if len(folded) > limit:
        shown.append(f"... and {len(folded) - limit} more folded groups")
    return shown


def render_finding(finding: Finding, *, color: bool = False) -> list[str]:
    count = len(finding.keys)
    noun = ("entry" if count == 1 else "entries") if finding.kind == "unsafe_pickle" else (
        "key" if count == 1 else "keys")  # unsafe_pickle names places in a container
    label = f"[{finding.kind}]"
    if color:
        label = f"{_RED if finding.kind != 'not_loaded' else _YELLOW}{label}{_RESET}"
    head = f"  {label} {count} {noun}: {finding.hint}" if count else f"  {label} {finding.hint}"
    lines = [head]
    if finding.kind not in ("missing_component", "unsafe_pickle"):  # shown by hint or details
        lines += [f"      {line}" for line in render_keys(finding.keys)]
    details = list(finding.details[:MAX_DETAIL_LINES])
    if len(finding.details) > MAX_DETAIL_LINES:
        details.append(f"... and {len(finding.details) - MAX_DETAIL_LINES} more")
    lines += [f"      {line}" for line in details]
    return lines


def render_failure(headline: str, findings: Iterable[Finding], fix: str, *,
                   color: bool = False) -> str:
    """First line what broke, then each finding (folded), last line the fix."""
    first = f"{_BOLD}{headline}{_RESET}" if color else headline
    body = [line for finding in sort_findings(findings)
            for line in render_finding(finding, color=color)]
    return "\n".join([first, *body, fix])


FIXES = {  # the last line of a failure, by the first finding's kind
    "missing": "fix: restore the old attribute names, or remap old keys in your load path "
               "(load=...); if the new layout is intended, run: {update}",
    "unexpected": "fix: restore the old attribute names, or remap old keys in your load path "
                  "(load=...); if the new layout is intended, run: {update}",
    "tied_weights": "fix: re-tie shared tensors after loading (or load with "
                    "safetensors.torch.load_model), or save every key",
    "not_loaded": "fix: make the load path write every tensor (check key remapping and "
                  "strict=False calls)",
    "value": "fix: the load path must copy values unchanged (no casts, no in-place edits)",
    "output": "fix: the loaded model must compute the same function: check buffers that are "
              "not saved (persistent=False) and code that depends on load order",
    "unsafe_pickle": "fix: save plain tensors and containers only, so weights_only=True loads it",
    "training_state": "fix: restore the entries the resume path needs, or make it tolerate "
                      "their absence; if this change is intended, run: {update}",
    "weight_norm_layout": "fix: see the fix line of each layout above, or narrow the check "
                          "with weight_norm=(...) / loaders=(...)",
}


def fix_for(findings: list[Finding], update_command: str) -> str:
    """The fix line for ``findings``; ``update_command`` where accepting the change is one."""
    for finding in findings:
        if finding.kind in FIXES:
            return FIXES[finding.kind].format(update=update_command)
    return (f"fix: keep published checkpoints loading as the hints say; if this change is "
            f"intended, run: {update_command}")
