"""``@pytest.mark.ckpt_roundtrip`` as users meet it: real test files run through pytester."""

from __future__ import annotations

import pytest

from tests.conftest import lines

GOOD = '''
import pytest, torch
from nets import Net

@pytest.mark.ckpt_roundtrip(inputs=lambda: torch.randn(3, 4), formats=("torch", "safetensors"))
def test_net():
    return Net()
'''


def test_marked_model_round_trips_once_its_snapshot_exists(project, mode):
    project.makepyfile(test_a=GOOD)
    first = project.runpytest(*mode)
    first.assert_outcomes(failed=1)
    first.stdout.fnmatch_lines(lines(
        "*no manifest snapshot for this test yet (__snapshots__/test_a/test_net.manifest.txt)",
        "create it with: pytest --ckpt-snapshot-update 'test_a.py::test_net'",
    ))
    project.runpytest("--ckpt-snapshot-update", *mode).assert_outcomes(passed=1)
    project.runpytest(*mode).assert_outcomes(passed=1)


def test_strict_false_load_that_skips_a_branch_is_reported_as_not_loaded(project, mode):
    project.makepyfile(test_a='''
        import pytest
        from nets import Net

        def load_encoder_only(model, state):
            wanted = {k: v for k, v in state.items() if k.startswith("encoder.")}
            model.load_state_dict(wanted, strict=False)

        @pytest.mark.ckpt_roundtrip(load=load_encoder_only, snapshot=False)
        def test_net():
            return Net()
    ''')
    result = project.runpytest(*mode)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(lines(
        "checkpoint round-trip of Net through 'torch' failed: not_loaded",
        # torch < 2.2 sets a missing num_batches_tracked to 0 itself: 6 keys there, 7 here
        "  [not_loaded] * keys: still at the target's initial (poisoned) value after the load*",
        "      head.bias",
        "      head.weight",
        "      norm.bias",
        "      norm.running_mean",
        "      norm.running_var",
        "      norm.weight",
        "fix: make the load path write every tensor*",
    ))


def test_load_path_that_alters_values_is_reported_with_error_counts(project):
    project.makepyfile(test_a='''
        import pytest, torch
        from nets import Net

        def load_and_scale(model, state):
            model.load_state_dict(state)
            with torch.no_grad():
                model.head.weight.mul_(2)

        @pytest.mark.ckpt_roundtrip(load=load_and_scale, snapshot=False)
        def test_net():
            return Net()
    ''')
    result = project.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(lines(
        "*failed: value",
        "  [value] 1 key: loaded value differs bitwise from the saved value",
        "      head.weight",
        "      head.weight: 16 of 16 elements differ, max abs error *, max rel error 1",
    ))


def test_output_drift_from_an_unsaved_buffer_is_reported(project):
    project.makepyfile(test_a='''
        import pytest, torch
        from torch import nn

        class Shifted(nn.Module):
            def __init__(self):
                super().__init__()
                self.lin = nn.Linear(4, 2)
                self.register_buffer("shift", torch.randn(2), persistent=False)

            def forward(self, x):
                return self.lin(x) + self.shift

        @pytest.mark.ckpt_roundtrip(inputs=lambda: torch.randn(3, 4), snapshot=False)
        def test_shifted():
            return Shifted()
    ''')
    result = project.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(lines(
        "checkpoint round-trip of Shifted through 'torch' failed: output",
        "  [output] 1 key: eval-mode outputs on inputs= differ*",
        "      output",
        "      output: 6 of 6 elements differ*",
        "fix: the loaded model must compute the same function*",
    ))


@pytest.mark.parametrize(("marker", "expected"), [
    ("ckpt_roundtrip(format='torch')",
     "@pytest.mark.ckpt_roundtrip on test_a.py::test_net has unknown options: format"),
    ("ckpt_roundtrip('torch')",
     "@pytest.mark.ckpt_roundtrip on test_a.py::test_net has unknown options: 'torch'"),
    ("ckpt_roundtrip(formats=('onnx',))",
     "ckpt used wrongly in test_a.py::test_net: unknown checkpoint format 'onnx'*"),
    ("ckpt_roundtrip(inputs=lambda: torch.randn(3, 5))",
     "ckpt_roundtrip used wrongly in test_a.py::test_net: inputs= could not run through the "
     "model returned by the test: RuntimeError*"),
])
def test_wrong_marker_use_names_the_test_and_the_problem(project, marker, expected):
    project.makepyfile(test_a=f'''
        import pytest, torch
        from nets import Net

        @pytest.mark.{marker}
        def test_net():
            return Net()
    ''')
    result = project.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(lines(expected))


def test_marked_test_that_returns_nothing_is_a_clear_error(project, mode):
    project.makepyfile(test_a='''
        import pytest
        from nets import Net

        @pytest.mark.ckpt_roundtrip
        def test_net():
            Net()
    ''')
    result = project.runpytest(*mode)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(lines(
        "test_a.py::test_net is marked ckpt_roundtrip but returned NoneType, not a "
        "torch.nn.Module",
        "fix: end the test with `return model`",
    ))


def test_marker_target_is_a_second_call_with_a_different_seed(project):
    project.makepyfile(test_a='''
        import pytest, torch
        from nets import Net

        CALLS = []

        @pytest.mark.ckpt_roundtrip(snapshot=False)
        def test_net():
            model = Net()
            CALLS.append(model.head.weight.detach().clone())
            return model

        def test_called_twice_with_different_init():
            assert len(CALLS) == 2
            assert not torch.equal(CALLS[0], CALLS[1])
    ''')
    project.runpytest("-p", "no:randomly").assert_outcomes(passed=2)


SHIFTED = '''
import torch
from torch import nn


class Shifted(nn.Module):
    """Outputs depend on a buffer that is not saved: every reload computes another function."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 2)
        self.register_buffer("shift", torch.randn(2), persistent=False)

    def forward(self, x, scale=1.0):
        return self.lin(x) * scale + self.shift


class Doubling(nn.Module):
    """Changes its input in place, as some preprocessing layers do."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 2)

    def forward(self, x):
        return self.lin(x.mul_(2))
'''


@pytest.mark.parametrize("inputs", [
    "torch.randn(3, 4)",
    "(torch.randn(3, 4), 2.0)",
    "[torch.randn(3, 4)]",
    "{'x': torch.randn(3, 4), 'scale': 2.0}",
    "lambda: [torch.randn(3, 4), 2.0]",
])
def test_inputs_given_as_a_tensor_arguments_or_keywords_reach_the_output_check(project, inputs):
    project.makepyfile(shifted=SHIFTED, test_a=f'''
        import pytest, torch
        from shifted import Shifted

        @pytest.mark.ckpt_roundtrip(inputs={inputs}, snapshot=False)
        def test_shifted():
            return Shifted()
    ''')
    result = project.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(lines(
        "checkpoint round-trip of Shifted through 'torch' failed: output",
        "  [output] 1 key: eval-mode outputs on inputs= differ*",
    ))


def test_a_given_tensor_is_copied_for_every_call_so_a_model_that_changes_it_passes(project, mode):
    project.makepyfile(shifted=SHIFTED, test_a='''
        import pytest, torch
        from shifted import Doubling

        X = torch.ones(3, 4)

        @pytest.mark.ckpt_roundtrip(inputs=X, formats=("torch", "safetensors"), snapshot=False)
        def test_given_tensor():
            return Doubling()

        @pytest.mark.ckpt_roundtrip(inputs=lambda: torch.ones(3, 4), snapshot=False)
        def test_tensor_from_a_callable():
            return Doubling()

        def test_the_given_tensor_is_unchanged():
            assert torch.equal(X, torch.ones(3, 4))
    ''')
    project.runpytest("-p", "no:randomly", *mode).assert_outcomes(passed=3)


def test_inputs_of_another_kind_is_a_usage_error_naming_the_test_and_the_forms(project, mode):
    project.makepyfile(test_a='''
        import pytest
        from nets import Net

        @pytest.mark.ckpt_roundtrip(inputs=3, snapshot=False)
        def test_net():
            return Net()
    ''')
    result = project.runpytest(*mode)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "ckpt_roundtrip used wrongly in test_a.py::test_net: inputs= must be a tensor (one "
        "positional argument), a tuple or list (positional arguments), a dict (keyword "
        "arguments), or a callable returning one of those; got int",
        "fix: pass the model's input, e.g. inputs=torch.randn(1, 80, 32), or "
        "inputs=lambda: torch.randn(1, 80, 32)",
    ])


def test_targets_built_without_initialisers_keep_their_computed_non_persistent_buffers(
        project, mode):
    # the target is built with torch.nn.init skipped; rotary inv_freq and position_ids come
    # out of __init__ as the source has them, a buffer drawn by nn.init sends the build back
    project.makepyfile(test_a='''
        import pytest, torch

        class Rotary(torch.nn.Module):
            def __init__(self, dim=8, positions=16):
                super().__init__()
                self.proj = torch.nn.Linear(dim, dim)
                inv_freq = 1.0 / (10000 ** (torch.arange(0, dim, 2).float() / dim))
                self.register_buffer("inv_freq", inv_freq, persistent=False)
                self.register_buffer("position_ids", torch.arange(positions).expand((1, -1)),
                                     persistent=False)

            def forward(self, x):
                angles = self.position_ids[0, : x.shape[0], None].float() * self.inv_freq
                return self.proj(x) * angles.cos().sum()

        class Noisy(torch.nn.Module):
            def __init__(self):
                super().__init__()
                torch.manual_seed(0)
                self.proj = torch.nn.Linear(8, 8)
                self.register_buffer("noise", torch.nn.init.normal_(torch.empty(8)),
                                     persistent=False)

            def forward(self, x):
                return self.proj(x) + self.noise

        @pytest.mark.ckpt_roundtrip(inputs=lambda: torch.randn(5, 8), snapshot=False,
                                    formats=("torch", "safetensors"))
        def test_rotary():
            return Rotary()

        def test_noisy(ckpt):
            ckpt.roundtrip(Noisy(), factory=Noisy, inputs=torch.randn(5, 8), snapshot=False,
                           formats=("torch", "safetensors"))
    ''')
    project.runpytest(*mode).assert_outcomes(passed=2)


def test_a_passing_format_s_file_is_removed_and_a_failing_one_s_is_kept(project, mode):
    project.makepyfile(test_a='''
        import pytest, torch
        from nets import Net

        def shifted(model, state):
            model.load_state_dict(state)
            with torch.no_grad():
                model.head.bias[0] += 1

        @pytest.mark.ckpt_roundtrip(formats=("torch", "safetensors"), snapshot=False)
        def test_passes():
            return Net()

        @pytest.mark.ckpt_roundtrip(formats=("torch", "safetensors"), load=shifted,
                                    snapshot=False)
        def test_fails():
            return Net()
    ''')
    result = project.runpytest("--basetemp", str(project.path / "tmp"), *mode)
    result.assert_outcomes(passed=1, failed=1)
    files = sorted(f"{path.parent.parent.name.rstrip('0')}/{path.name}"
                   for path in (project.path / "tmp").rglob("roundtrip*"))
    assert files == ["test_fails/roundtrip.pt", "test_fails/roundtrip.safetensors"]
