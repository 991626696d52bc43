"""What the markers do with a test's return value: ``ckpt_roundtrip`` round-trips the model
(the test called again, under another seed, builds the target) and, with ``golden=True``,
checks its goldens; ``ckpt_resume`` checks resuming the returned training harness."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest

from pytest_ckpt.checks.context import CheckContext
from pytest_ckpt.checks.golden import golden
from pytest_ckpt.checks.resume import assert_resumes
from pytest_ckpt.checks.roundtrip import roundtrip

if TYPE_CHECKING:
    import torch

TARGET_SEED = 0x5EED  # the second call of a marked test builds its target under this seed
GOLDEN_SEED = 0  # with golden=True, the first call of a marked test runs under this seed


def run_marked_test(context: CheckContext, function: Callable[..., Any],
                    arguments: dict[str, Any], options: dict[str, Any]) -> None:
    """Call a ``ckpt_roundtrip`` test for its model; call it again (other seed) as target;
    with ``golden=True`` the first call runs under ``GOLDEN_SEED`` and the model is also
    checked against its golden checkpoints."""
    __tracebackhide__ = True
    import torch

    with_golden = options.pop("golden", False)
    if with_golden not in (True, False):
        context.fail(f"ckpt_roundtrip used wrongly in {context.nodeid}: golden= takes True or "
                     f"False, got {with_golden!r}")
    with torch.random.fork_rng(devices=[], enabled=with_golden):
        if with_golden:
            torch.manual_seed(GOLDEN_SEED)
        model = function(**arguments)
    if not isinstance(model, torch.nn.Module):
        context.fail(f"{context.nodeid} is marked ckpt_roundtrip but returned "
                     f"{type(model).__name__}, not a torch.nn.Module\n"
                     "fix: end the test with `return model`")

    fresh_instance = second_call(function, arguments)
    failures = []
    try:
        roundtrip(context, model, factory=fresh_instance, **options)
    except pytest.fail.Exception as failure:  # still check the goldens: report both
        failures.append(str(failure.msg))
    if with_golden:
        try:
            golden(context, model, name=options.get("name"), inputs=options.get("inputs"),
                   load=options.get("load"), factory=fresh_instance, seed=GOLDEN_SEED,
                   save_to=options.get("save_to"), load_from=options.get("load_from"))
        except pytest.fail.Exception as failure:
            failures.append(str(failure.msg))
    if failures:
        context.fail("\n\n".join(failures))


def second_call(function: Callable[..., Any],
                arguments: dict[str, Any]) -> Callable[[], torch.nn.Module]:
    """The load target of a marked test (or a ``--ckpt-model`` factory): ``function`` called
    again, under ``TARGET_SEED``, so that its random init differs from the first call's."""
    import torch

    def fresh_instance() -> torch.nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(TARGET_SEED)
            target: torch.nn.Module = function(**arguments)
            return target

    return fresh_instance


def run_marked_resume(context: CheckContext, function: Callable[..., Any],
                      arguments: dict[str, Any], options: dict[str, Any]) -> None:
    """Call a ``ckpt_resume`` test for its training harness, then check resuming."""
    __tracebackhide__ = True
    harness = function(**arguments)
    if harness is None:
        context.fail(f"{context.nodeid} is marked ckpt_resume but returned None\n"
                     "fix: return an object with build, step, save and resume methods")
    assert_resumes(context, harness, **options)
