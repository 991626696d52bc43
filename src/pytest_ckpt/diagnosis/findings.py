"""Findings and their rendering: every failure message is built here (pure, no torch).

A :class:`Finding` names one cause (``kind`` from the design vocabulary), the keys it
explains and a one-line hint. :func:`render_failure` turns findings into the message users
read: first line what broke, then one block per finding with keys folded by layer index
(``decoder.layers.{0..11}.attn.q_proj.weight``), last line the fix.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from pytest_ckpt.checkpoint.keys import fold_keys

KINDS = (
    "head_swap", "missing", "unexpected", "stale_declaration", "fsdp_local_shards",
    "missing_component", "prefix", "rename",
    "weight_norm_layout",
    "parametrization", "buffer_persistence", "mha_packing", "tied_weights", "shape", "dtype",
    "not_loaded", "value", "output", "unsafe_pickle", "training_state",
)
# The order in which findings are shown: keys first (a head swap, which explains keys on
# both sides, before what is left of them), then shapes/dtypes, then values.
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
    fix: str | None = None  # the remedy for this very finding, when the kind's is too general

    def __post_init__(self) -> None:
        if self.kind not in _ORDER:
            raise ValueError(f"unknown finding kind {self.kind!r}; expected one of {KINDS}")

    @cached_property
    def folded(self) -> tuple[str, ...]:
        """The keys folded by layer index, computed once (the message and the report both
        show them)."""
        return tuple(fold_keys(self.keys))

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "keys": list(self.keys), "folded": list(self.folded),
                "hint": self.hint, "details": list(self.details), "related": list(self.related),
                "fix": self.fix}


def sort_findings(findings: Iterable[Finding]) -> list[Finding]:
    return sorted(findings, key=lambda finding: _ORDER[finding.kind])  # stable: rule order


# -- rendering ---------------------------------------------------------------------------

# kinds whose hint or details name what the keys are (components, places in a container)
_KEYS_NAMED_ELSEWHERE = ("missing_component", "head_swap", "unsafe_pickle")
_RED, _YELLOW, _BOLD, _RESET = "\x1b[31m", "\x1b[33m", "\x1b[1m", "\x1b[0m"


def render_keys(folded: Sequence[str], limit: int = MAX_KEY_LINES) -> list[str]:
    """Folded keys, at most ``limit`` lines."""
    shown = list(folded[:limit])
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
    if finding.kind not in _KEYS_NAMED_ELSEWHERE:
        lines += [f"      {line}" for line in render_keys(finding.folded)]
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


# kinds whose own fix undoes a change that may be the point (a new vocabulary, a new kernel)
_MAY_BE_INTENDED = ("shape",)


def fix_for(findings: list[Finding], update_command: str, *, default: str | None = None,
            against_record: bool = True) -> str:
    """The fix line for ``findings``: the first finding's own ``fix`` when it has one, else
    the line for its kind; ``update_command`` where accepting the change is one (a check
    against a recorded snapshot or golden: ``against_record``)."""
    for finding in findings:
        if finding.fix and finding.kind in _MAY_BE_INTENDED and against_record:
            return f"{finding.fix}; if this change is intended, run: {update_command}"
        if finding.fix:
            return finding.fix
        if finding.kind in FIXES:
            return FIXES[finding.kind].format(update=update_command)
    return default or (f"fix: keep published checkpoints loading as the hints say; if this "
                       f"change is intended, run: {update_command}")
