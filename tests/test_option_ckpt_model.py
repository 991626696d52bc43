"""``--ckpt-model=module:factory`` and ini ``ckpt_models``: the round-trip battery on a model
factory, with no test file."""

from __future__ import annotations

import json
import re
import shlex
import textwrap
from unittest.mock import ANY

import pytest

from tests.conftest import lines, snapshot_files

ZOO = '''
import warnings
import torch
from torch import nn
from nets import Net

HEAD = "head"
CONFIG = {"hidden": 8}


def make_net():
    return Net(head_name=HEAD)


def make_config():
    return dict(CONFIG)


def needs(hidden):
    return Net(hidden)


def legacy_normed():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return nn.Sequential(nn.utils.weight_norm(nn.Linear(4, 4)), nn.ReLU())


def normed():
    return nn.Sequential(nn.utils.parametrizations.weight_norm(nn.Linear(4, 4)), nn.ReLU())


class Shifted(nn.Module):
    """Outputs depend on a buffer that is not saved."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 2)
        self.register_buffer("shift", torch.randn(2), persistent=False)

    def forward(self, x):
        return self.lin(x) + self.shift


def shifted():
    return Shifted()


shifted_inputs = torch.randn(3, 4)


def shifted_too():
    return Shifted()


shifted_too.ckpt_inputs = lambda: {"x": torch.randn(3, 4)}


def shifted_quietly():  # no inputs beside it: outputs are not compared
    return Shifted()


class Scaled(nn.Module):
    """Reads a value in __init__, which a build on the meta device cannot."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 2)
        self.scale = float(torch.ones(1).item())


def scaled():
    return Scaled()
'''

INI = """
[pytest]
addopts = --strict-markers -p no:cacheprovider
filterwarnings =
    error
    ignore:TypedStorage is deprecated:UserWarning
"""


@pytest.fixture
def zoo(project: pytest.Pytester) -> pytest.Pytester:
    """The ``project`` with a module of model factories, ``zoo.py``."""
    project.makepyfile(zoo=ZOO)
    return project


def _ini(project: pytest.Pytester, *specs: str) -> None:
    listed = "".join(f"\n    {spec}" for spec in specs)
    project.makeini(textwrap.dedent(INI) + f"ckpt_models ={listed}\n")


def _update_command(result: pytest.RunResult, spec: str) -> list[str]:
    """The arguments of the ``create it with: pytest ...`` line the run printed for ``spec``."""
    line = next(line for line in result.stdout.lines
                if line.startswith("create it with: ") and f"={spec} " in line)
    return shlex.split(line.removeprefix("create it with: "))[1:]


def _section(result: pytest.RunResult, title: str) -> list[str]:
    """The lines of one test's failure section (without xdist's worker line)."""
    text = result.stdout.lines
    start = next(index for index, line in enumerate(text)
                 if re.fullmatch(rf"_+ {re.escape(title)} _+", line))
    section = []
    for line in text[start + 1:]:
        if line.startswith(("___", "---", "===")):
            break
        if not line.startswith("[gw"):
            section.append(line)
    return section


def test_factory_fails_until_the_printed_command_writes_its_snapshot_then_passes(zoo, mode):
    _ini(zoo, "zoo:make_net", "zoo:normed")
    first = zoo.runpytest(*mode)
    first.assert_outcomes(failed=2)
    first.stdout.fnmatch_lines(lines(
        "no manifest snapshot for this test yet (__ckpt_models__/zoo.make_net."
        "manifest.txt)",
        "create it with: pytest --ckpt-snapshot-update --ckpt-model=zoo:make_net "
        "-k 'ckpt-model[zoo:make_net]'",
    ))
    update = zoo.runpytest(*_update_command(first, "zoo:make_net"), *mode)
    update.assert_outcomes(passed=1)  # the other factory is deselected
    snapshots = snapshot_files(zoo.path)
    assert list(snapshots) == ["__ckpt_models__/zoo.make_net.manifest.txt"]
    assert "head.weight float32 [2,8] param" in snapshots[
        "__ckpt_models__/zoo.make_net.manifest.txt"].splitlines()

    again = zoo.runpytest("-rA", "-k", "make_net", *mode)
    again.assert_outcomes(passed=1)  # the other factory is deselected
    again.stdout.fnmatch_lines(lines("PASSED ckpt-model[zoo:make_net]"))


def test_ini_list_and_option_give_one_item_per_factory_beside_the_test_files(zoo, mode):
    _ini(zoo, "zoo:make_net", "zoo:normed")
    zoo.makepyfile(test_a="def test_plain():\n    pass\n")
    result = zoo.runpytest("-rA", "--ckpt-model=zoo:make_net", "--ckpt-model=zoo:shifted_quietly",
                           "--ckpt-snapshot-update", *mode)
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines_random(lines(
        "PASSED test_a.py::test_plain",
        "PASSED ckpt-model[zoo:make_net]",
        "PASSED ckpt-model[zoo:normed]",
        "PASSED ckpt-model[zoo:shifted_quietly]",
    ))
    assert sorted(snapshot_files(zoo.path)) == [
        "__ckpt_models__/zoo.make_net.manifest.txt",
        "__ckpt_models__/zoo.normed.manifest.txt",
        "__ckpt_models__/zoo.shifted_quietly.manifest.txt",
    ]


def test_the_battery_is_both_formats_the_layouts_a_meta_build_and_the_snapshot(zoo):
    result = zoo.runpytest("--ckpt-model=zoo:make_net", "--ckpt-model=zoo:normed",
                           "--ckpt-snapshot-update", "--ckpt-report=report.json")
    result.assert_outcomes(passed=2)
    checks = json.loads((zoo.path / "report.json").read_text())["checks"]
    assert [(check["test"], check["check"], check["outcome"]) for check in checks] == [
        ("ckpt-model[zoo:make_net]", "manifest", "passed"),
        ("ckpt-model[zoo:make_net]", "roundtrip[meta]", "passed"),
        ("ckpt-model[zoo:make_net]", "roundtrip[safetensors]", "passed"),
        ("ckpt-model[zoo:make_net]", "roundtrip[torch]", "passed"),
        ("ckpt-model[zoo:normed]", "manifest", "passed"),
        ("ckpt-model[zoo:normed]", "roundtrip[meta]", "passed"),
        ("ckpt-model[zoo:normed]", "roundtrip[safetensors]", "passed"),
        ("ckpt-model[zoo:normed]", "roundtrip[torch]", "passed"),
        ("ckpt-model[zoo:normed]", "roundtrip[weight_norm]", "passed"),
    ]


def test_drift_of_a_factory_fails_with_the_message_the_marker_gives(zoo, mode):
    zoo.makepyfile(test_a='''
        import pytest
        from nets import Net
        import zoo

        @pytest.mark.ckpt_roundtrip
        def test_net():
            return Net(head_name=zoo.HEAD)
    ''')
    zoo.runpytest("--ckpt-model=zoo:make_net", "--ckpt-snapshot-update",
                  *mode).assert_outcomes(passed=2)
    zoo.makepyfile(zoo=ZOO.replace('HEAD = "head"', 'HEAD = "classifier"'))

    result = zoo.runpytest("--ckpt-model=zoo:make_net", *mode)
    result.assert_outcomes(failed=2)
    factory = _section(result, "ckpt-model[zoo:make_net]")
    assert factory[:2] == [
        "manifest differs from snapshot __ckpt_models__/zoo.make_net.manifest.txt "
        "(11 entries in the snapshot, 11 in the model)",
        "  [rename] 2 keys: head.* in the snapshot is classifier.* in the model (same shapes "
        "and dtypes): rename the attribute back, or map the old keys in the load path",
    ]
    assert factory[-1] == (
        "fix: keep published checkpoints loading as the hints say; if this change is intended, "
        "run: pytest --ckpt-snapshot-update --ckpt-model=zoo:make_net "
        "-k 'ckpt-model[zoo:make_net]'")
    marker = _section(result, "test_net")
    as_marker = [line.replace("__ckpt_models__/zoo.make_net.manifest.txt",
                              "__snapshots__/test_a/test_net.manifest.txt")
                 .replace("--ckpt-model=zoo:make_net -k 'ckpt-model[zoo:make_net]'",
                          "'test_a.py::test_net'") for line in factory]
    assert marker == as_marker


def test_weight_normed_factory_is_checked_in_both_layouts(zoo, mode):
    result = zoo.runpytest("--ckpt-model=zoo:legacy_normed", "--ckpt-snapshot-update", *mode)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(lines(
        "weight_norm layouts of Sequential: published checkpoints in some layouts do not load",
        "  [weight_norm_layout] checkpoints in the parametrized weight_norm layout "
        "(parametrizations.weight.original0/1) do not load into Sequential through "
        "load_state_dict",
    ))


def test_outputs_are_compared_on_inputs_found_beside_the_factory(zoo, mode):
    result = zoo.runpytest("-rA", "--ckpt-model=zoo:shifted", "--ckpt-model=zoo:shifted_too",
                           "--ckpt-model=zoo:shifted_quietly", "--ckpt-snapshot-update", *mode)
    result.assert_outcomes(passed=1, failed=2)
    for factory in ("shifted", "shifted_too"):
        assert _section(result, f"ckpt-model[zoo:{factory}]")[:2] == [
            "checkpoint round-trip of Shifted through 'torch' failed: output",
            "  [output] 1 key: eval-mode outputs on inputs= differ between the saved and the "
            "loaded model",
        ]
    result.stdout.fnmatch_lines(lines("PASSED ckpt-model[zoo:shifted_quietly]"))


def test_a_factory_that_cannot_build_on_meta_passes_and_says_so(zoo, mode):
    result = zoo.runpytest("--ckpt-model=zoo:scaled", "--ckpt-snapshot-update", *mode)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(lines(
        "*pytest-ckpt notes*",
        "ckpt-model[zoo:scaled] roundtrip[meta]: not built on the meta device: zoo.scaled() "
        "raised *Error: * (at zoo.py:*) under torch.device('meta')",
    ))


def test_bad_factory_specs_fail_with_one_paragraph_each_naming_the_spec(zoo, mode):
    zoo.makepyfile(broken='raise RuntimeError("no GPU here")\n')
    specs = ["missing.module:make", "zoo:nothing", "zoo:CONFIG", "zoo:make_config",
             "zoo:needs", "broken:make"]
    result = zoo.runpytest(*(f"--ckpt-model={spec}" for spec in specs), *mode)
    result.assert_outcomes(failed=len(specs))
    sections = {spec: _section(result, f"ckpt-model[{spec}]") for spec in specs}
    assert sections == {
        "missing.module:make": [
            "--ckpt-model=missing.module:make: no module named 'missing.module' (searched "
            f"sys.path and the rootdir {zoo.path})",
            "fix: correct the module in the spec, or make it importable: install the project "
            "(pip install -e .) or add its folder to the `pythonpath` ini option"],
        "zoo:nothing": [
            "--ckpt-model=zoo:nothing: module zoo has no attribute 'nothing'; it defines "
            "Scaled, Shifted, legacy_normed, make_config, make_net, needs, normed, scaled, "
            "shifted, shifted_quietly, shifted_too",
            "fix: name the function (or class) that builds the model"],
        "zoo:CONFIG": [
            "--ckpt-model=zoo:CONFIG: zoo.CONFIG is a dict, not a callable",
            "fix: name the function (or class) that builds the model when called with no "
            "arguments"],
        "zoo:make_config": [
            "--ckpt-model=zoo:make_config: zoo.make_config() returned dict, not a "
            "torch.nn.Module",
            "fix: name a function that returns the model"],
        "zoo:needs": [
            "--ckpt-model=zoo:needs: zoo.needs() raised TypeError: needs() missing 1 required "
            "positional argument: 'hidden'",
            "fix: the factory is called with no arguments: give its parameters defaults, or "
            "name a function that builds a small model"],
        "broken:make": [
            "--ckpt-model=broken:make: importing broken raised RuntimeError: no GPU here (at "
            "broken.py:1)",
            "fix: make `import broken` work (the error is raised while importing it)"],
    }


@pytest.mark.parametrize(("arguments", "ini", "expected"), [
    (["--ckpt-model=zoo"], (),
     "ERROR: --ckpt-model=zoo is not a module:factory spec"),
    ([], ("zoo.make_net",),
     "ERROR: ini ckpt_models entry 'zoo.make_net' is not a module:factory spec"),
])
def test_a_spec_that_is_not_module_colon_factory_is_a_usage_error(zoo, arguments, ini, expected):
    _ini(zoo, *ini)
    result = zoo.runpytest(*arguments)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([
        expected,
        "fix: name the module and the function that builds the model, e.g. "
        "--ckpt-model=mypackage.models:tiny_model",
    ])


def test_syrupys_update_keeps_the_snapshots_of_factories_it_did_not_compare(zoo, mode):
    zoo.runpytest("--ckpt-model=zoo:make_net", "--ckpt-snapshot-update",
                  *mode).assert_outcomes(passed=1)
    before = snapshot_files(zoo.path)
    zoo.runpytest("--ckpt-model=zoo:normed", "--snapshot-update",  # another factory
                  *mode).assert_outcomes(passed=1)
    assert snapshot_files(zoo.path) == {
        **before, "__ckpt_models__/zoo.normed.manifest.txt": ANY}

    zoo.makepyfile(test_a='''
        from nets import Net

        def test_keys(ckpt):
            ckpt.assert_manifest(Net(hidden=3))
    ''')  # a test in the rootdir: syrupy then reads all of __snapshots__/
    zoo.makepyfile(zoo=ZOO + "\nmake_net_inputs = torch.randn(3, 5)\n")
    result = zoo.runpytest("--ckpt-model=zoo:make_net", "--ckpt-model=zoo:normed",
                           "--snapshot-update", *mode)
    result.assert_outcomes(passed=2, failed=1)  # before its snapshot is compared
    result.stdout.fnmatch_lines(["*inputs= could not run through the model*"])
    after = snapshot_files(zoo.path)
    assert {path: after[path] for path in before} == before
    assert "__ckpt_models__/zoo.normed.manifest.txt" in after
