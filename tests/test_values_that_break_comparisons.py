"""Values that broke the comparison: quantized buffers (a SIGSEGV before), complex NaN, and
checkpoint values equal to a poison (NaN, the integer minimum, uint8 zeros, a flipped bool,
zero-size tensors). A model must round-trip; ``assert_loads`` must leave the model with what
the load wrote; a load path that skips such a tensor must fail."""

from __future__ import annotations

import pytest

from tests.conftest import lines

MODELS = '''
import warnings

import torch
from torch import nn


class Quantized(nn.Module):
    """A float layer beside quantized buffers (per-tensor and per-channel affine)."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 4)
        with warnings.catch_warnings():  # quantized creation functions are deprecated
            warnings.simplefilter("ignore")
            self.register_buffer("q", torch.quantize_per_tensor(
                torch.randn(8), 0.05, 3, torch.quint8))
            self.register_buffer("qc", torch.quantize_per_channel(
                torch.randn(2, 3), torch.tensor([0.1, 0.2], dtype=torch.float64),
                torch.tensor([0, 1]), 0, torch.qint8))

    def forward(self, x):
        return self.linear(x) + self.q.dequantize()[:4]


class Complex(nn.Module):
    def __init__(self):
        super().__init__()
        spectrum = torch.randn(6, dtype=torch.complex128)
        spectrum[1] = complex(float("nan"), 1.0)
        self.register_buffer("spectrum", spectrum)
        self.weight = nn.Parameter(torch.randn(3, dtype=torch.complex64))

    def forward(self, x):
        return x * self.spectrum.real.nan_to_num().sum()


class Poisonous(nn.Module):
    """Buffers whose values are what a naive poison would write."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(2, 2)
        self.register_buffer("nan", torch.full((3,), float("nan")))
        self.register_buffer("int_min", torch.full((2,), torch.iinfo(torch.int64).min))
        self.register_buffer("mask", torch.zeros(4, dtype=torch.uint8))
        self.register_buffer("flags", torch.tensor([True, False, True]))
        self.register_buffer("empty", torch.zeros(0, 3))


def checkpoint_of(model, path, **changes):
    """Save ``model``'s state with some tensors replaced (what the published file holds)."""
    state = model.state_dict()
    state.update(changes)
    torch.save(state, path)
'''


def _weights_only_loads_quantized() -> bool:
    """torch 2.1's weights_only unpickler refuses quantized tensors (_rebuild_qtensor)."""
    import io
    import pickle
    import warnings

    import torch

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.save(torch.quantize_per_tensor(torch.ones(2), 0.1, 0, torch.quint8), buffer)
        buffer.seek(0)
        try:
            torch.load(buffer, weights_only=True)
        except pickle.UnpicklingError:
            return False
    return True


quantized_loads = pytest.mark.skipif(not _weights_only_loads_quantized(),
                                     reason="this torch's weights_only load refuses quantized "
                                            "tensors, so no quantized checkpoint can load")


@pytest.fixture
def models(project):
    project.makepyfile(models=MODELS)
    return project


@quantized_loads
def test_models_with_quantized_buffers_round_trip_and_load(models, mode):
    models.makepyfile(test_q='''
        import pytest
        import torch
        from models import Quantized

        pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

        @pytest.mark.ckpt_roundtrip(inputs=lambda: torch.randn(2, 4), snapshot=False)
        def test_marker():
            return Quantized()

        def test_loads(ckpt, tmp_path):
            torch.save(Quantized().state_dict(), tmp_path / "q.pt")
            ckpt.assert_loads(Quantized(), tmp_path / "q.pt")

        def test_poisoned_copy(ckpt):
            ckpt.roundtrip(Quantized(), snapshot=False)
    ''')
    models.runpytest(*mode).assert_outcomes(passed=3)


@quantized_loads
def test_a_quantized_buffer_the_load_skips_is_not_loaded(models):
    models.makepyfile(test_q='''
        import pytest
        from models import Quantized

        pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

        def skip_q(model, state):
            model.load_state_dict({k: v for k, v in state.items() if k != "q"}, strict=False)

        def test_skip(ckpt):
            ckpt.roundtrip(Quantized(), load=skip_q, snapshot=False)
    ''')
    result = models.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(lines("  [not_loaded] 1 key: still at the target's initial*",
                                      "      q"))


def test_complex_values_with_nan_compare_by_their_bits(models, mode):
    models.makepyfile(test_c='''
        import pytest
        import torch
        from models import Complex

        @pytest.mark.ckpt_roundtrip(snapshot=False, inputs=lambda: torch.randn(2))
        def test_complex():
            return Complex()

        def test_poisoned_copy(ckpt):
            ckpt.roundtrip(Complex(), snapshot=False)
    ''')
    models.runpytest(*mode).assert_outcomes(passed=2)


def test_a_dtype_safetensors_cannot_store_is_named_in_the_round_trip(models):
    models.makepyfile(test_c='''
        import pytest
        from models import Complex

        @pytest.mark.ckpt_roundtrip(formats=("torch", "safetensors"), snapshot=False)
        def test_complex():
            return Complex()
    ''')
    result = models.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "checkpoint round-trip of Complex through 'safetensors' failed: cannot be written: "
        "safetensors has no dtype for spectrum (complex128)"])


def test_checkpoint_values_equal_to_a_poison_load_and_stay_in_the_model(models, mode):
    models.makepyfile(test_p='''
        import torch
        from models import Poisonous, checkpoint_of

        def test_loads(ckpt, tmp_path):
            published = Poisonous()
            checkpoint_of(published, tmp_path / "p.pt")
            model = Poisonous()
            with torch.no_grad():  # the model's own values differ from the checkpoint's
                model.nan.fill_(1.0)
                model.int_min.fill_(7)
                model.mask.fill_(9)
                model.flags.logical_not_()
            ckpt.assert_loads(model, tmp_path / "p.pt")
            for key, value in published.state_dict().items():
                got = model.state_dict()[key]
                assert got.dtype == value.dtype and got.shape == value.shape
                assert torch.equal(got.view(-1).view(torch.uint8), value.view(-1).view(
                    torch.uint8)), key
    ''')
    models.runpytest(*mode).assert_outcomes(passed=1)


def test_a_load_path_that_skips_a_buffer_of_zeros_fails_the_round_trip(models, mode):
    models.makepyfile(test_p='''
        import pytest
        from models import Poisonous

        def skip_mask(model, state):
            model.load_state_dict({k: v for k, v in state.items() if k != "mask"},
                                  strict=False)

        @pytest.mark.ckpt_roundtrip(load=skip_mask, snapshot=False)
        def test_marker():
            return Poisonous()

        def test_poisoned_copy(ckpt):
            ckpt.roundtrip(Poisonous(), load=skip_mask, snapshot=False)
    ''')
    result = models.runpytest(*mode)
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(lines(
        "checkpoint round-trip of Poisonous through 'torch' failed: not_loaded",
        "  [not_loaded] 1 key: still at the target's initial (poisoned) value*",
        "      mask"), consecutive=True)


def test_assert_loads_names_a_skipped_tensor_whose_value_equals_a_poison(models):
    models.makepyfile(test_p='''
        import torch
        from models import Poisonous, checkpoint_of

        def skip_nan(model, state):
            model.load_state_dict({k: v for k, v in state.items() if k != "nan"}, strict=False)

        def test_loads(ckpt, tmp_path):
            checkpoint_of(Poisonous(), tmp_path / "p.pt")
            model = Poisonous()
            with torch.no_grad():
                model.nan.fill_(2.0)
            try:
                ckpt.assert_loads(model, tmp_path / "p.pt", load=skip_nan)
            finally:  # the tensor the load skipped keeps the model's own value
                assert torch.equal(model.nan, torch.full((3,), 2.0))
    ''')
    result = models.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(lines(
        "  [not_loaded] 1 key: the checkpoint provides these tensors but the load left them "
        "at their initial value*", "      nan"))
