"""A model's outputs on ``inputs=`` (a callable run under a fixed seed), in eval mode, named
by position (``output[0]``, ``output['logits']``), and their bitwise comparison."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from pytest_ckpt.checkpoint.values import bitwise_equal, flatten_outputs, mismatch_summary
from pytest_ckpt.diagnosis.findings import Finding
from pytest_ckpt.errors import CkptUsageError

if TYPE_CHECKING:
    import torch


def make_inputs(inputs: Callable[[], Any] | None) -> Any:
    import torch

    if inputs is None:
        return None
    if not callable(inputs):
        raise CkptUsageError("inputs= must be a callable returning the model's input "
                             "(e.g. inputs=lambda: torch.randn(1, 80, 32))")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        try:
            return inputs()
        except Exception as error:
            raise CkptUsageError(f"inputs= raised {type(error).__name__}: {error}") from None


def model_outputs(model: torch.nn.Module, inputs: Any,
                  what: str) -> dict[str, torch.Tensor] | None:
    import torch

    if inputs is None:
        return None
    with _eval_mode(model), torch.no_grad():
        try:
            if isinstance(inputs, dict):
                result = model(**inputs)
            elif isinstance(inputs, tuple):
                result = model(*inputs)
            else:
                result = model(inputs)
        except Exception as error:
            raise CkptUsageError(f"inputs= could not run through {what}: "
                                 f"{type(error).__name__}: {error}") from None
    return flatten_outputs(result)


@contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[None]:
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def output_findings(expected: dict[str, torch.Tensor],
                     actual: dict[str, torch.Tensor] | None) -> list[Finding]:
    actual = actual or {}
    differ = [name for name, value in expected.items()
              if name not in actual or not bitwise_equal(value, actual[name])]
    if not differ:
        return []
    details = tuple(f"{name}: {mismatch_summary(expected[name], actual[name])}"
                    if name in actual else f"{name}: not produced by the target"
                    for name in differ)
    return [Finding("output", tuple(differ),
                    "eval-mode outputs on inputs= differ between the saved and the loaded model",
                    details)]
