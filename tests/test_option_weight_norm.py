"""The round-trip's ``weight_norm=`` and ``loaders=`` options, through the marker and fixture."""

from __future__ import annotations

import pytest

from tests.conftest import lines

MODELS = '''
import warnings
import torch
from torch import nn
from pytest_ckpt.compat import accept_any_weight_norm


def normed(layer, layout):
    if layout == "legacy":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return nn.utils.weight_norm(layer)
    return nn.utils.parametrizations.weight_norm(layer)


class Head(nn.Module):
    def __init__(self, layout="parametrized", compat=False):
        super().__init__()
        self.proj = nn.ModuleList(normed(nn.Linear(4, 4), layout) for _ in range(3))
        if compat:
            accept_any_weight_norm(self)

    def forward(self, x):
        for layer in self.proj:
            x = layer(x)
        return x
'''


@pytest.fixture
def heads(project):
    project.makepyfile(heads=MODELS)
    return project


def test_parametrized_model_loads_both_layouts_by_default(heads, mode):
    heads.makepyfile(test_a='''
        import pytest, torch
        from heads import Head

        @pytest.mark.ckpt_roundtrip(inputs=lambda: torch.randn(2, 4), snapshot=False,
                                    loaders=("load_state_dict", "assign", "safetensors"))
        def test_head():
            return Head()
    ''')
    heads.runpytest(*mode).assert_outcomes(passed=1)


def test_legacy_model_cannot_load_parametrized_checkpoints_and_says_how_to_fix(heads, mode):
    heads.makepyfile(test_a='''
        import pytest
        from heads import Head

        @pytest.mark.ckpt_roundtrip(snapshot=False)
        def test_head():
            return Head(layout="legacy")
    ''')
    result = heads.runpytest(*mode)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(lines(
        "weight_norm layouts of Head: published checkpoints in some layouts do not load",
        "  [weight_norm_layout] checkpoints in the parametrized weight_norm layout "
        "(parametrizations.weight.original0/1) do not load into Head through load_state_dict",
        "      load_state_dict: RuntimeError: Unexpected key(s) in state_dict: "
        '"proj.0.parametrizations.weight.original0"*',
        "      fix, plain torch, in the model's __init__: self._register_load_state_dict_pre_"
        "hook(hook) (public register_load_state_dict_pre_hook from torch 2.5), where "
        "hook(state_dict, prefix, *_) renames each key ending in "
        "'parametrizations.weight.original0' / 'parametrizations.weight.original1' to "
        "'weight_g' / 'weight_v'",
        "      or, outside model code, pytest_ckpt.weight_norm.map_state_dict(state_dict, "
        "model=model) before loading*",
    ))


def test_the_compat_helper_makes_every_layout_load(heads, mode):
    heads.makepyfile(test_a='''
        import pytest, torch
        from heads import Head

        @pytest.mark.ckpt_roundtrip(inputs=lambda: torch.randn(2, 4), snapshot=False,
                                    weight_norm=("legacy", "parametrized", "removed"),
                                    loaders=("load_state_dict", "assign", "safetensors"))
        def test_legacy_head():
            return Head(layout="legacy", compat=True)

        @pytest.mark.ckpt_roundtrip(inputs=lambda: torch.randn(2, 4), snapshot=False,
                                    weight_norm=("legacy", "parametrized", "removed"))
        def test_parametrized_head():
            return Head(compat=True)
    ''')
    heads.runpytest(*mode).assert_outcomes(passed=2)


def test_dcp_bypasses_load_hooks_and_is_reported_separately(heads):
    heads.makepyfile(test_a='''
        import pytest
        from heads import Head

        @pytest.mark.ckpt_roundtrip(snapshot=False, loaders=("load_state_dict", "dcp"))
        def test_head():
            return Head(compat=True)
    ''')
    result = heads.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(lines(
        "  [weight_norm_layout] checkpoints in the legacy weight_norm layout (weight_g/weight_v) "
        "do not load into Head through dcp (they do through load_state_dict)",
        # torch 2.1 raises KeyError, newer torch RuntimeError('Missing key in checkpoint ...')
        "      dcp: CheckpointException: *proj.0.parametrizations.weight.original0*",
    ))


def test_fixture_form_and_weight_norm_false(heads):
    heads.makepyfile(test_a='''
        from heads import Head

        def test_checked(ckpt):
            ckpt.roundtrip(Head(layout="legacy"), factory=lambda: Head(layout="legacy"),
                           snapshot=False)

        def test_skipped(ckpt):
            ckpt.roundtrip(Head(layout="legacy"), snapshot=False, weight_norm=False)
    ''')
    result = heads.runpytest()
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(["FAILED test_a.py::test_checked - Failed: weight_norm layouts*"])


@pytest.mark.parametrize(("option", "message"), [
    ("weight_norm='fancy'", "weight_norm= must be 'auto', False or layouts from "
                            "('legacy', 'parametrized', 'removed'); got 'fancy'"),
    ("loaders=('pickle',)", "loaders= must name loader paths from ('load_state_dict', "
                            "'assign', 'safetensors', 'dcp'); got ('pickle',)"),
])
def test_bad_options_are_usage_errors(heads, option, message):
    heads.makepyfile(test_a=f'''
        import pytest
        from heads import Head

        @pytest.mark.ckpt_roundtrip(snapshot=False, {option})
        def test_head():
            return Head()
    ''')
    result = heads.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(lines(f"ckpt_roundtrip used wrongly in test_a.py::test_head: "
                                      f"{message}"))
