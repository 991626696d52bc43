"""The keys a diagnosis has not explained yet, and the findings so far: what every rule
reads and claims from (rules import this module, never the engine)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from pytest_ckpt.checkpoint.facts import ModelFacts
from pytest_ckpt.checkpoint.manifest import Manifest
from pytest_ckpt.diagnosis.findings import Finding


@dataclass
class KeyPool:
    """The keys not yet explained, and the findings so far."""

    reference: Manifest
    current: Manifest
    facts: ModelFacts
    name: str  # what the reference is called in messages: "checkpoint", "snapshot", ...
    missing: set[str]
    unexpected: set[str]
    findings: list[Finding] = field(default_factory=list)
    pairs: list[tuple[str, str]] = field(default_factory=list)  # (reference key, model key)
    current_name: str = "model"  # what the current side is called: "model", "checkpoint B"

    def sorted_missing(self) -> list[str]:
        """``sorted(self.missing)`` in linear time: the missing keys are keys of ``current``,
        whose rows are sorted."""
        return [key for key in self.current.row_map() if key in self.missing]

    def sorted_unexpected(self) -> list[str]:
        """``sorted(self.unexpected)`` in linear time: they are keys of ``reference``."""
        return [key for key in self.reference.row_map() if key in self.unexpected]

    def model_keys(self) -> list[str]:
        """Every key of the model, sorted, also those a caller left out of ``current`` (a
        load diagnosed on the keys it missed only)."""
        if self.facts.state_keys <= self.current.key_set():
            return self.current.keys()
        return sorted(self.facts.state_keys.union(self.current.key_set()))

    def claim(self, finding: Finding, *, missing: Iterable[str] = (),
              unexpected: Iterable[str] = (), pairs: Iterable[tuple[str, str]] = ()) -> None:
        """Record ``finding`` as the cause of these keys; they are not reported again."""
        missing, unexpected = tuple(missing), tuple(unexpected)
        self.missing.difference_update(missing)
        self.unexpected.difference_update(unexpected)
        self.pairs.extend(pairs)
        keys = set(finding.keys)
        other = missing if keys.issubset(unexpected) else unexpected
        related = tuple(sorted(key for key in other if key not in keys))
        self.findings.append(replace(finding, related=related) if related else finding)


Rule = Callable[[KeyPool], None]
