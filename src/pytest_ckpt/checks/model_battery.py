"""The zero-code check: ``pytest --ckpt-model=package.module:factory`` (or the ini list
``ckpt_models``) adds one test item per factory, ``ckpt-model[package.module:factory]``, that
runs the round-trip battery on ``factory()``: formats torch and safetensors, the weight_norm
layouts when the model has weight-normed modules, a build on the meta device, and the
manifest snapshot, stored in ``<rootdir>/__ckpt_models__/``.

The round-trip is the marker's (``roundtrip`` with ``second_call`` as the target), so the
messages and snapshots are the marker's; what differs is how the factory is found and the
update command (a node id like this one is no path, so the command selects it with ``-k``).
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast, final

import pytest

from pytest_ckpt.checks.context import UPDATE_FLAG, CheckContext, CkptSessionState
from pytest_ckpt.checks.markers import second_call
from pytest_ckpt.checks.outputs import check_inputs
from pytest_ckpt.checks.roundtrip import failure_message, on_meta, roundtrip, run_roundtrip
from pytest_ckpt.checks.roundtrip_format import RoundtripSpec
from pytest_ckpt.checks.user_code import raised_line
from pytest_ckpt.errors import CkptUsageError
from pytest_ckpt.record.snapshots import hold_unused

if TYPE_CHECKING:
    import torch

OPTION = "--ckpt-model"
INI = "ckpt_models"
ITEM_PREFIX = "ckpt-model"
BATTERY_FORMATS = ("torch", "safetensors")
_SPEC = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*")


def factory_specs(ini: Sequence[str], given: Sequence[str]) -> list[str]:
    """The factories to check: the ini list, then the command line's, each once; a value
    that is not ``package.module:factory`` is a usage error naming it."""
    specs: list[str] = []
    for source, values in ((f"ini {INI}", ini), (OPTION, given)):
        for value in values:
            spec = value.strip()
            if not _SPEC.fullmatch(spec):
                where = f"{OPTION}={value}" if source == OPTION else f"{source} entry {value!r}"
                raise pytest.UsageError(
                    f"{where} is not a module:factory spec\n"
                    "fix: name the module and the function that builds the model, e.g. "
                    f"{OPTION}=mypackage.models:tiny_model")
            if spec not in specs:
                specs.append(spec)
    return specs


@dataclass(frozen=True)
class Factory:
    """A resolved spec: the callable, its dotted name and the inputs found beside it."""

    spec: str
    build: Callable[[], Any]
    qualname: str  # package.module.factory
    inputs: Any = None  # <factory>_inputs in its module, or factory.ckpt_inputs


class FactoryError(Exception):
    """A spec that cannot be imported, names no callable, or whose inputs are unusable; the
    message is the paragraph the user reads."""


def resolve(spec: str, rootdir: Path) -> Factory:
    """Import ``module`` of ``module:factory`` (the rootdir is searched last) and find the
    factory and its inputs."""
    module_name, _, attribute = spec.partition(":")
    try:
        module = _import(module_name, rootdir)
    except ModuleNotFoundError as error:
        if not _names_the_spec(error, module_name):
            raise FactoryError(_import_failure(spec, module_name, error)) from None
        raise FactoryError(
            f"{OPTION}={spec}: no module named {module_name!r} (searched sys.path and the "
            f"rootdir {rootdir})\n"
            "fix: correct the module in the spec, or make it importable: install the project "
            "(pip install -e .) or add its folder to the `pythonpath` ini option") from None
    except Exception as error:
        raise FactoryError(_import_failure(spec, module_name, error)) from None
    qualname = f"{module_name}.{attribute}"
    if not hasattr(module, attribute):
        defined = sorted(name for name, value in vars(module).items()
                         if callable(value) and getattr(value, "__module__", None) == module_name
                         and not name.startswith("_"))
        listed = f"; it defines {', '.join(defined[:12])}" if defined else ""
        raise FactoryError(f"{OPTION}={spec}: module {module_name} has no attribute "
                           f"{attribute!r}{listed}\n"
                           "fix: name the function (or class) that builds the model")
    build = getattr(module, attribute)
    if not callable(build):
        raise FactoryError(f"{OPTION}={spec}: {qualname} is a {type(build).__name__}, not a "
                           "callable\nfix: name the function (or class) that builds the model "
                           "when called with no arguments")
    inputs = getattr(module, f"{attribute}_inputs", None)
    inputs = inputs if inputs is not None else getattr(build, "ckpt_inputs", None)
    try:
        check_inputs(inputs, f"{qualname}_inputs" if hasattr(module, f"{attribute}_inputs")
                     else f"{qualname}.ckpt_inputs")
    except CkptUsageError as error:
        raise FactoryError(f"{OPTION}={spec}: {error}") from None
    return Factory(spec, build, qualname, inputs)


def _import(module_name: str, rootdir: Path) -> Any:
    import importlib
    import sys

    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if not _names_the_spec(error, module_name) or str(rootdir) in sys.path:
            raise
    sys.path.append(str(rootdir))  # last: it never shadows what is installed
    return importlib.import_module(module_name)


def _names_the_spec(error: ModuleNotFoundError, module_name: str) -> bool:
    """Whether the module missing is the spec's own (or a package above it), not a module
    the spec's module imports."""
    missing = error.name or ""
    return module_name == missing or module_name.startswith(f"{missing}.")


def _import_failure(spec: str, module_name: str, error: BaseException) -> str:
    return (f"{OPTION}={spec}: importing {module_name} raised {raised_line(error)}\n"
            f"fix: make `import {module_name}` work (the error is raised while importing it)")


@final
@dataclass
class FactoryCheckContext(CheckContext):
    """A check context whose update command selects one factory item."""

    spec: str = ""

    @property
    def update_command(self) -> str:
        return (f"pytest {UPDATE_FLAG} {OPTION}={self.spec} "
                f"-k '{item_name(self.spec)}'")


def item_name(spec: str) -> str:
    """The node id (and name) of a factory's item: ``ckpt-model[package.module:factory]``."""
    return f"{ITEM_PREFIX}[{spec}]"


@final
class FactoryCollector(pytest.Collector):
    """The ``--ckpt-model`` factories (node id ``ckpt-model``), collected beside the session's
    own collectors: the items are made from the specs alone, the same on every xdist worker;
    a factory is imported when its item runs."""

    def __init__(self, *, specs: Sequence[str], state: Callable[[], CkptSessionState],
                 report_property: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.specs = tuple(specs)
        self._state = state
        self._report_property = report_property

    @classmethod
    def for_specs(cls, session: pytest.Session, specs: Sequence[str], *,
                  state: Callable[[], CkptSessionState],
                  report_property: str) -> FactoryCollector:
        collector: FactoryCollector = cls.from_parent(
            session, name=ITEM_PREFIX, nodeid=ITEM_PREFIX, specs=specs, state=state,
            report_property=report_property)
        return collector

    def collect(self) -> list[pytest.Item]:
        return [FactoryItem.from_parent(self, name=item_name(spec), nodeid=item_name(spec),
                                        spec=spec, state=self._state,
                                        report_property=self._report_property)
                for spec in self.specs]


@final
class FactoryItem(pytest.Item):
    """One ``--ckpt-model`` factory: its battery is the test."""

    def __init__(self, *, spec: str, state: Callable[[], CkptSessionState],
                 report_property: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.spec = spec
        self._state = state
        self._report_property = report_property

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, self.name

    def runtest(self) -> None:
        __tracebackhide__ = True
        try:
            factory = resolve(self.spec, self.config.rootpath)
        except FactoryError as error:
            failure = str(error)
        else:
            return self._run(factory)
        pytest.fail(failure, pytrace=False)

    def _run(self, factory: Factory) -> None:
        __tracebackhide__ = True
        with tempfile.TemporaryDirectory(prefix="ckpt-model-") as folder:
            context = self._context(Path(folder), factory)
            try:
                run_battery(context, factory)
            except pytest.fail.Exception:
                hold_unused(context.assertion)  # not compared: not unused either
                raise

    def _context(self, folder: Path, factory: Factory) -> FactoryCheckContext:
        __tracebackhide__ = True
        from syrupy.assertion import SnapshotAssertion
        from syrupy.location import PyTestLocation

        from pytest_ckpt.record.snapshots import FactorySnapshotExtension

        session = getattr(self.config, "_syrupy", None)
        if session is None:
            pytest.fail(f"{self.nodeid} needs syrupy, which stores its snapshot\n"
                        "fix: do not disable the syrupy plugin (-p no:syrupy)", pytrace=False)
        state = self._state()
        update = state.update or bool(getattr(self.config.option, "update_snapshots", False))
        site = SnapshotSite(self, factory.qualname)
        assertion = SnapshotAssertion(
            update_snapshots=update, extension_class=FactorySnapshotExtension,
            test_location=PyTestLocation(cast(Any, site)), session=session)
        properties = self.user_properties

        def record(entry: dict[str, Any]) -> None:
            properties.append((self._report_property, entry))

        return FactoryCheckContext(
            nodeid=self.nodeid, update=update, assertion=assertion, schema_assertion=assertion,
            tmp_path=folder, state=state, color=self.config.get_terminal_writer().hasmarkup,
            recorder=record, spec=factory.spec)


class SnapshotSite:
    """What syrupy reads of a test item to place its snapshots (as syrupy's own stand-in
    for items from xdist workers): a factory's snapshot is
    ``<rootdir>/__ckpt_models__/<package.module.factory>.manifest.txt``."""

    def __init__(self, item: FactoryItem, qualname: str) -> None:
        self.nodeid = f"ckpt_models::{qualname}"
        self.name = qualname
        self.path = item.config.rootpath / "ckpt_models"  # a stand-in test file
        self.obj = _Named(item.spec.partition(":")[0], qualname)
        self.stash = item.stash


class _Named:
    """A stand-in for ``item.obj``: the two names syrupy reads of it."""

    def __init__(self, module: str, name: str) -> None:
        self.__module__ = module
        self.__name__ = name


def run_battery(context: CheckContext, factory: Factory) -> None:
    """The round-trip of ``factory()`` in both formats (with the weight_norm layouts when it
    has weight-normed modules) and its manifest snapshot, as the marker runs it; then a
    build on the meta device. Every failure is reported together."""
    __tracebackhide__ = True
    model = _built(context, factory)
    failures = []
    try:
        roundtrip(context, model, factory=second_call(factory.build, {}),
                  formats=BATTERY_FORMATS, inputs=factory.inputs)
    except pytest.fail.Exception as failure:
        failures.append(str(failure.msg))
    if not on_meta(model):
        failures.extend(_meta_build(context, factory))
    if failures:
        context.fail("\n\n".join(failures))


def _built(context: CheckContext, factory: Factory) -> torch.nn.Module:
    __tracebackhide__ = True
    import torch

    try:
        model = factory.build()
    except Exception as error:
        failure = error
    else:
        if isinstance(model, torch.nn.Module):
            return model
        context.fail(f"{OPTION}={factory.spec}: {factory.qualname}() returned "
                     f"{type(model).__name__}, not a torch.nn.Module\n"
                     "fix: name a function that returns the model", check="roundtrip")
    context.fail(f"{OPTION}={factory.spec}: {factory.qualname}() raised {raised_line(failure)}\n"
                 "fix: the factory is called with no arguments: give its parameters defaults, "
                 "or name a function that builds a small model", check="roundtrip")


def _meta_build(context: CheckContext, factory: Factory) -> list[str]:
    """The factory built under ``torch.device("meta")``, its state_dict loaded into a second
    meta build through ``load_state_dict(assign=True)``: keys, shapes, dtypes and ties. A
    factory that cannot build on meta is a note, not a failure."""
    import torch

    def meta_target() -> torch.nn.Module:
        with torch.device("meta"):
            return second_call(factory.build, {})()

    try:
        with torch.random.fork_rng(devices=[]), torch.device("meta"):
            model = factory.build()
    except Exception as error:
        failure = error
    else:
        if isinstance(model, torch.nn.Module) and on_meta(model):
            return _meta_roundtrip(context, model, meta_target)
        if isinstance(model, torch.nn.Module) and not model.state_dict():
            return []  # no tensors: nothing to build on any device
        context.record("roundtrip[meta]", note=f"not built on the meta device: "
                       f"{factory.qualname}() builds its tensors elsewhere under "
                       "torch.device('meta')")
        return []
    context.record("roundtrip[meta]", note=f"not built on the meta device: "
                   f"{factory.qualname}() raised {raised_line(failure)} under "
                   "torch.device('meta')")
    return []


def _meta_roundtrip(context: CheckContext, model: torch.nn.Module,
                    meta_target: Callable[[], torch.nn.Module]) -> list[str]:
    """The marker's meta round-trip of ``model``; its failure paragraph, if any."""
    outcome = context.usage(lambda: run_roundtrip(model, meta_target, RoundtripSpec(
        weight_norm=False), context.folder("ckpt-meta"))[0], label="ckpt_roundtrip",
        check="roundtrip[meta]")
    context.record("roundtrip[meta]", outcome.findings, outcome.error)
    return [] if outcome.ok else [failure_message(context, model, outcome)]
