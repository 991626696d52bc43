"""A model's outputs on ``inputs=``, in eval mode, named by position (``output[0]``,
``output['logits']``), and their bitwise comparison.

``inputs=`` is a tensor (one positional argument), a tuple or list (positional arguments), a
dict (keyword arguments), or a callable returning one of those, called once under seed 0.
Every call of a model gets its own copy of the input tensors, so a model that changes its
input in place cannot make the source and the target see different inputs."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from pytest_ckpt.checkpoint.values import bitwise_equal, flatten_outputs, mismatch_summary
from pytest_ckpt.diagnosis.findings import Finding
from pytest_ckpt.errors import CkptUsageError

if TYPE_CHECKING:
    import torch

INPUT_FORMS = ("a tensor (one positional argument), a tuple or list (positional arguments), "
               "a dict (keyword arguments), or a callable returning one of those")
INPUT_EXAMPLE = "inputs=torch.randn(1, 80, 32), or inputs=lambda: torch.randn(1, 80, 32)"


def check_inputs(inputs: Any, what: str = "inputs=") -> None:
    """Raise a usage error naming the accepted forms unless ``inputs`` is one of them (or
    ``None``); ``what`` names the value in the message."""
    import torch

    if inputs is None or callable(inputs) or isinstance(
            inputs, (torch.Tensor, tuple, list, Mapping)):
        return
    raise CkptUsageError(f"{what} must be {INPUT_FORMS}; got {type(inputs).__name__}\n"
                         f"fix: pass the model's input, e.g. {INPUT_EXAMPLE}")


def make_inputs(inputs: Any) -> Any:
    """The model input ``inputs=`` stands for: a callable's result (under seed 0), or the
    value itself; ``None`` when there is none."""
    import torch

    check_inputs(inputs)
    if inputs is None or not callable(inputs):
        return inputs
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        try:
            return inputs()
        except Exception as error:
            raise CkptUsageError(f"inputs= raised {type(error).__name__}: {error}") from None


def call_arguments(inputs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The positional and keyword arguments of one model call on ``inputs``, tensors
    copied: a dict is keyword arguments, a tuple or list positional ones, anything else
    the one positional argument."""
    fresh = _copied(inputs)
    if isinstance(fresh, dict):
        return (), fresh
    if isinstance(fresh, (tuple, list)):
        return tuple(fresh), {}
    return (fresh,), {}


def _copied(value: Any) -> Any:
    import torch

    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, Mapping):
        return {key: _copied(item) for key, item in value.items()}
    if isinstance(value, (tuple, list)):
        items = [_copied(item) for item in value]
        return type(value)(*items) if hasattr(value, "_fields") else type(value)(items)
    return value


def model_outputs(model: torch.nn.Module, inputs: Any,
                  what: str) -> dict[str, torch.Tensor] | None:
    import torch

    if inputs is None:
        return None
    with _eval_mode(model), torch.no_grad():
        args, kwargs = call_arguments(inputs)
        try:
            result = model(*args, **kwargs)
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
