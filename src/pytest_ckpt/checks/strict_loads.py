"""The strict-load guard: while a test runs, every ``nn.Module.load_state_dict(...,
strict=False)`` is watched; a call that drops keys nobody declared is recorded, and the test
fails after it ran. What the caller receives is unchanged; the patch is removed after the
test's fixtures are torn down, and only if it is still in place."""

from __future__ import annotations

import traceback
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pytest_ckpt.checks.loads import matched
from pytest_ckpt.checks.own_loads import in_own_load
from pytest_ckpt.diagnosis.findings import Finding, render_failure

if TYPE_CHECKING:
    import torch

    from pytest_ckpt.checkpoint.container import ContainerLayout


GUARD_FIX = ("fix: fix the key mapping, or declare the expected gaps with "
             "@pytest.mark.ckpt_strict_loads(allow_missing=[...], allow_unexpected=[...])")


@dataclass(frozen=True)
class SilentLoad:
    """One non-strict load that left keys out, and where it was called."""

    model: str
    location: str
    findings: tuple[Finding, ...]
    changed: int = 0  # model tensors whose values the load changed
    tensors: int = 0


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
            strict = kwargs.get("strict", args[0] if args else True)
            if not guard.watching or strict or in_own_load():
                return original(module, state_dict, *args, **kwargs)
            before = _prints(module)
            result = original(module, state_dict, *args, **kwargs)
            guard._inspect(module, state_dict, result, before)
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

    def _inspect(self, module: torch.nn.Module, state_dict: Any, result: Any,
                 before: dict[str, Any]) -> None:
        from pytest_ckpt.checkpoint.facts import ModelFacts
        from pytest_ckpt.checkpoint.manifest import Manifest
        from pytest_ckpt.diagnosis.engine import diagnose

        missing = set(result.missing_keys) - matched(self.allow_missing, result.missing_keys)
        unexpected = set(result.unexpected_keys) - matched(self.allow_unexpected,
                                                           result.unexpected_keys)
        if not missing and not unexpected:
            return
        model = Manifest.from_module(module)
        layout = _whole_checkpoint(state_dict, module)
        container = _container_finding(layout) if layout is not None else None
        weights = dict(state_dict[layout.weights_entry]) if layout is not None else {
            k: v for k, v in state_dict.items() if k in unexpected}
        findings = diagnose(Manifest.from_state_dict(weights),
                            Manifest(tuple(row for row in model if row.key in missing)),
                            facts=ModelFacts.from_module(module))
        findings = [_as_not_loaded(f) if f.kind == "missing" else f for f in findings]
        if container is not None:
            findings.insert(0, container)
        changed = _changed(module, before)
        self.silent_loads.append(SilentLoad(type(module).__name__, _caller(), tuple(findings),
                                            changed, len(before)))

    def report(self, nodeid: str, *, color: bool = False) -> str:
        parts = []
        for load in self.silent_loads:
            parts.append(render_failure(
                f"load_state_dict(strict=False) into {load.model} silently dropped keys: "
                f"{load.changed} of {load.tensors} tensors changed (called at "
                f"{load.location})", load.findings,
                next((finding.fix for finding in load.findings if finding.fix), GUARD_FIX),
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


def _prints(module: torch.nn.Module) -> dict[str, Any]:
    """A fingerprint of each model tensor, to count what a load changed."""
    import torch

    from pytest_ckpt.checkpoint.values import fingerprint

    return {key: fingerprint(value) for key, value in module.state_dict().items()
            if isinstance(value, torch.Tensor) and value.device.type != "meta"}


def _changed(module: torch.nn.Module, before: dict[str, Any]) -> int:
    import torch

    now = _prints(module)
    return sum(1 for key, print_ in before.items()
               if key not in now or now[key].shape != print_.shape
               or not bool(torch.equal(now[key], print_)))


def _whole_checkpoint(state_dict: Any, module: torch.nn.Module) -> ContainerLayout | None:
    """The layout of a whole training checkpoint given to ``load_state_dict`` (its weights
    sit under an entry; of several, the one matching ``module`` best), or ``None`` for a
    state_dict."""
    import torch

    from pytest_ckpt.checkpoint.container import container_layout

    if all(isinstance(value, torch.Tensor) for value in state_dict.values()):
        return None
    layout = container_layout(state_dict, model_keys=module.state_dict().keys())
    return layout if layout is not None and layout.weights_entry is not None else None


def _container_finding(layout: ContainerLayout) -> Finding:
    said = f" {layout.why()}" if layout.why() else ""
    return Finding("not_loaded", (), (
        f"load_state_dict was given the whole checkpoint ({layout.describe()}): its weights "
        f"sit under [{layout.weights_entry!r}]{said}, so nothing matched"),
        fix=(f"fix: pass checkpoint[{layout.weights_entry!r}] to load_state_dict (with any "
             "prefix the findings name stripped)"))
