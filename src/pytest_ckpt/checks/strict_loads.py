"""The strict-load guard: while a test runs, every ``nn.Module.load_state_dict(...,
strict=False)`` is watched; a call that drops keys nobody declared is recorded, and the test
fails after it ran. What the caller receives is unchanged; the patch is removed after the
test's fixtures are torn down, and only if it is still in place."""

from __future__ import annotations

import traceback
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pytest_ckpt.checks.loads import matched
from pytest_ckpt.diagnosis.findings import Finding, render_failure

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class SilentLoad:
    """One non-strict load that left keys out, and where it was called."""

    model: str
    location: str
    findings: tuple[Finding, ...]


@dataclass
class StrictLoadGuard:
    """:meth:`install` before the test body, :meth:`stop` after it (loads in fixture
    teardown are not the test's), :meth:`uninstall` after the test's fixtures are torn down
    (a ``monkeypatch`` of ``load_state_dict`` is undone only then)."""

    allow_missing: tuple[str, ...] = ()
    allow_unexpected: tuple[str, ...] = ()
    silent_loads: list[SilentLoad] = field(default_factory=list)
    watching: bool = False
    _original: Any = None
    _wrapper: Any = None

    def install(self) -> None:
        import torch

        self._original = torch.nn.Module.load_state_dict
        guard, original = self, self._original

        def load_state_dict(module: torch.nn.Module, state_dict: Any, *args: Any,
                            **kwargs: Any) -> Any:
            result = original(module, state_dict, *args, **kwargs)
            strict = kwargs.get("strict", args[0] if args else True)
            if guard.watching and not strict:
                guard._inspect(module, state_dict, result)
            return result

        self._wrapper = load_state_dict
        self.watching = True
        torch.nn.Module.load_state_dict = load_state_dict  # type: ignore[assignment,method-assign]

    def stop(self) -> None:
        self.watching = False

    def uninstall(self) -> None:
        """Put back what was there, if the wrapper is still what is there (whatever replaced
        it since is left alone, and the wrapper, if still called, only passes through)."""
        import torch

        self.watching = False
        if self._original is not None and torch.nn.Module.load_state_dict is self._wrapper:
            torch.nn.Module.load_state_dict = self._original  # type: ignore[method-assign]
        self._original = self._wrapper = None

    def _inspect(self, module: torch.nn.Module, state_dict: Any, result: Any) -> None:
        from pytest_ckpt.checkpoint.facts import ModelFacts
        from pytest_ckpt.checkpoint.manifest import Manifest
        from pytest_ckpt.diagnosis.engine import diagnose

        missing = set(result.missing_keys) - matched(self.allow_missing, result.missing_keys)
        unexpected = set(result.unexpected_keys) - matched(self.allow_unexpected,
                                                           result.unexpected_keys)
        if not missing and not unexpected:
            return
        model = Manifest.from_module(module)
        findings = diagnose(
            Manifest.from_state_dict({k: v for k, v in state_dict.items() if k in unexpected}),
            Manifest(tuple(row for row in model if row.key in missing)),
            facts=ModelFacts.from_module(module))
        findings = [_as_not_loaded(f) if f.kind == "missing" else f for f in findings]
        self.silent_loads.append(SilentLoad(type(module).__name__, _caller(), tuple(findings)))

    def report(self, nodeid: str, *, color: bool = False) -> str:
        parts = []
        for load in self.silent_loads:
            parts.append(render_failure(
                f"load_state_dict(strict=False) into {load.model} silently dropped keys "
                f"(called at {load.location})", load.findings,
                "fix: fix the key mapping, or declare the expected gaps with "
                "@pytest.mark.ckpt_strict_loads(allow_missing=[...], allow_unexpected=[...])",
                color=color))
        return f"{nodeid}: " + "\n\n".join(parts)


def _as_not_loaded(finding: Finding) -> Finding:
    return Finding("not_loaded", finding.keys,
                   "left at their initial value: the state_dict did not provide them",
                   finding.details, finding.related)


def _caller() -> str:
    """The innermost frame outside torch, this plugin and pytest: the user's call."""
    skip = ("/torch/", "pytest_ckpt", "/_pytest/", "/pluggy/")
    frames = [f for f in traceback.extract_stack()[:-1]
              if not any(part in f.filename for part in skip)]
    frame = frames[-1] if frames else None
    return f"{frame.filename}:{frame.lineno}" if frame else "?"
