"""The ``ckpt.golden`` check (a part of :class:`~pytest_ckpt.checks.CheckpointChecks`):
write this torch version's golden on update, then load every golden of the test."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_ckpt.check_plumbing import CheckPlumbing
from pytest_ckpt.errors import CheckpointReadError, CkptUsageError
from pytest_ckpt.findings import Finding, render_failure
from pytest_ckpt.snapshots import SnapshotWriteError, relative

if TYPE_CHECKING:
    import torch

    from pytest_ckpt.golden import GoldenOutcome


class GoldenChecks(CheckPlumbing):
    """Golden checkpoints for the ``ckpt`` fixture; the shared plumbing (``_fail``,
    ``_record``, ``_usage``, snapshot claims) comes from ``CheckpointChecks``."""

    def golden(self, model: torch.nn.Module, *, name: str | None = None,
               inputs: Callable[[], Any] | None = None, load: Callable[..., Any] | None = None,
               factory: Callable[[], torch.nn.Module] | None = None,
               max_bytes: int | str | None = None) -> list[GoldenOutcome]:
        """Load every golden checkpoint of this test (one per torch minor version) into a
        fresh ``factory()`` (default: a poisoned copy of ``model``) through ``load`` and
        require keys, values and the output fingerprint on ``inputs`` to match; with
        --ckpt-snapshot-update, first write this torch version's golden of ``model``."""
        __tracebackhide__ = True
        import torch

        return self._golden(model, name=name, inputs=inputs, load=load, factory=factory,
                            max_bytes=max_bytes, seed=torch.initial_seed())

    def _golden(self, model: torch.nn.Module, *, name: str | None, inputs: Any, load: Any,
                factory: Any, max_bytes: int | str | None, seed: int) -> list[GoldenOutcome]:
        __tracebackhide__ = True
        from pytest_ckpt import golden as goldens
        from pytest_ckpt.roundtrip import make_inputs, poisoned_copy

        limit = self._usage(_size_option, self._state.golden_max_bytes
                            if max_bytes is None else max_bytes)
        self._usage(_real_module, model)
        directory = goldens.golden_directory(self._claim_golden(name))
        sample = self._usage(make_inputs, inputs)
        if self._update:
            self._write_golden(model, sample, directory, limit, seed)
        found = goldens.goldens_in(directory)
        if not found:
            self._fail(f"no golden checkpoint for this test yet ({relative(directory)})\n"
                       f"create it with: {self.update_command}", check="golden")
        outcomes = []
        for golden in found:
            target = factory() if factory is not None else poisoned_copy(model)
            try:
                outcome = self._usage(goldens.check_golden, golden, target, sample, load)
            except CheckpointReadError as error:
                outcome = goldens.GoldenOutcome(golden, "?", _refusal_findings(error),
                                                unreadable=error.headline)
            self._record(f"golden[{golden.label}]", outcome.findings,
                         outcome.error or outcome.unreadable, outcome.note)
            outcomes.append(outcome)
        failed = [outcome for outcome in outcomes if not outcome.ok]
        if failed:
            self._fail("\n\n".join(self._golden_message(model, outcome) for outcome in failed))
        return outcomes

    def _write_golden(self, model: torch.nn.Module, sample: Any, directory: Path, limit: int,
                      seed: int) -> None:
        __tracebackhide__ = True
        from pytest_ckpt import golden as goldens
        from pytest_ckpt.roundtrip import model_outputs

        outputs = self._usage(model_outputs, model, sample, "the model given to golden")
        data, sidecar = goldens.serialise(model, sample, test=self._nodeid, seed=seed,
                                          outputs=outputs)
        try:
            goldens.write_golden(directory, data, sidecar, max_bytes=limit)
        except SnapshotWriteError as error:
            self._fail(str(error), check="golden")
        except goldens.GoldenTooLarge as error:
            self._fail(f"{error}: goldens are meant to be small and committed\n"
                       "fix: build the golden's model from a tiny config (few layers, small "
                       "widths), or raise the limit with max_bytes= or the ini option "
                       "ckpt_golden_max_bytes", check="golden")

    def _golden_message(self, model: torch.nn.Module, outcome: GoldenOutcome) -> str:
        golden = outcome.golden
        if outcome.unreadable is not None:
            return render_failure(
                f"golden checkpoint {golden.label} ({relative(golden.path)}) cannot be read: "
                f"{outcome.unreadable}", outcome.findings,
                f"fix: restore {golden.path.name} and {golden.sidecar.name} from version "
                f"control, or rewrite both under {golden.label.replace('-', ' ')} with: "
                f"{self.update_command}", color=self._color)
        kinds = ", ".join(dict.fromkeys(finding.kind for finding in outcome.findings))
        raised = f"the load raised {outcome.error.rstrip(':')}" if outcome.error else ""
        why = f"{kinds} ({raised})" if kinds and raised else kinds or raised
        headline = (f"golden checkpoint {golden.label} ({relative(golden.path)}, written with "
                    f"{outcome.written_with}) no longer loads into {type(model).__name__} as "
                    f"it did: {why}")
        fix = (f"fix: keep this published checkpoint loading (remap old keys in load=..., or "
               f"accept old layouts, e.g. pytest_ckpt.compat.accept_any_weight_norm); if "
               f"breaking it is intended, delete {golden.path.name} or rewrite it under "
               f"{golden.label.replace('-', ' ')} with: {self.update_command}")
        return render_failure(headline, outcome.findings, fix, color=self._color)

    def _claim_golden(self, name: str | None) -> Path:
        """The manifest location the goldens are named after, claimed for this test."""
        __tracebackhide__ = True
        from pytest_ckpt.golden import golden_directory
        from pytest_ckpt.snapshots import golden_manifest_location

        location = golden_manifest_location(self._assertion, name)
        directory = golden_directory(location)
        self._claim_path(directory, name, folder=directory)
        return location


def _refusal_findings(error: CheckpointReadError) -> tuple[Finding, ...]:
    """A weights_only refusal of a golden as its ``unsafe_pickle`` finding."""
    from pytest_ckpt.formats.torch_zip import read_failure

    return tuple(read_failure(error)[1]) if error.unsafe else ()


def _size_option(value: int | str) -> int:
    from pytest_ckpt.golden import parse_size

    try:
        return parse_size(value)
    except ValueError as error:
        raise CkptUsageError(f"max_bytes / ckpt_golden_max_bytes: {error}") from None


def _real_module(model: Any) -> None:
    import torch

    if not isinstance(model, torch.nn.Module):
        raise CkptUsageError(f"golden needs a torch.nn.Module, got {type(model).__name__}")
    if any(tensor.is_meta for tensor in model.state_dict().values()
           if isinstance(tensor, torch.Tensor)):
        raise CkptUsageError("golden needs a model with real tensors, not one built on the "
                             "meta device (use a tiny config on the CPU)")
