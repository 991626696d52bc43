"""The vocoder's checkpoint-compatibility tests: the pytest-ckpt demo."""

from __future__ import annotations

import pytest
import torch

from example_models.vocoder import Vocoder, VocoderConfig
from pytest_ckpt import weight_norm
from pytest_ckpt.compat import accept_any_weight_norm


def mel() -> torch.Tensor:
    return torch.randn(1, 80, 32)


@pytest.mark.ckpt_roundtrip
def test_vocoder_checkpoint_roundtrips():
    return Vocoder(VocoderConfig.tiny())


# golden=True: the goldens written under torch 2.1 and 2.13 (__goldens__/) load on every run.
@pytest.mark.ckpt_roundtrip(inputs=mel, formats=("torch", "safetensors"), golden=True)
def test_vocoder_outputs_survive_torch_and_safetensors():
    return Vocoder(VocoderConfig.tiny())


def test_vocoder_release_folder_roundtrips_through_from_pretrained(ckpt):
    ckpt.roundtrip(Vocoder(VocoderConfig.tiny()), inputs=mel, snapshot=False,
                   save_to=lambda model, folder: model.save_pretrained(folder),
                   load_from=lambda _, folder: Vocoder.from_pretrained(folder))


def test_vocoder_key_set_matches_snapshot(ckpt):
    ckpt.assert_manifest(Vocoder(VocoderConfig.tiny()))


# weight_norm: the parametrized vocoder loads legacy (weight_g/weight_v) and parametrized
# checkpoints through every load_state_dict-based loader path.
@pytest.mark.ckpt_roundtrip(inputs=mel, snapshot=False,
                            loaders=("load_state_dict", "assign", "safetensors"))
def test_parametrized_vocoder_loads_legacy_and_parametrized_checkpoints():
    return Vocoder(VocoderConfig.tiny())


# A vocoder still built with the legacy API loads every layout once it opts in.
@pytest.mark.ckpt_roundtrip(inputs=mel, snapshot=False,
                            weight_norm=("legacy", "parametrized", "removed"),
                            loaders=("load_state_dict", "assign", "safetensors"))
def test_legacy_vocoder_with_the_compat_helper_loads_every_layout():
    return accept_any_weight_norm(Vocoder(VocoderConfig.tiny(weight_norm="legacy")))


# torch.distributed.checkpoint loads parametrized checkpoints; it bypasses load hooks, so a
# legacy checkpoint never loads through it (the test below shows the finding).
@pytest.mark.ckpt_roundtrip(snapshot=False, weight_norm=("parametrized",), loaders=("dcp",))
def test_vocoder_loads_parametrized_checkpoints_through_dcp():
    return Vocoder(VocoderConfig.tiny())


@pytest.mark.xfail(strict=True, reason="DCP bypasses torch's legacy->parametrized load hook")
@pytest.mark.ckpt_roundtrip(snapshot=False, weight_norm=("legacy",), loaders=("dcp",))
def test_legacy_checkpoints_do_not_load_through_dcp():
    return Vocoder(VocoderConfig.tiny())


def test_converting_the_vocoder_between_layouts_keeps_outputs_identical():
    model = Vocoder(VocoderConfig.tiny(weight_norm="legacy")).eval()
    x = mel()
    expected = model(x)
    for layout in ("parametrized", "legacy", "removed"):
        weight_norm.convert(model, layout)
        assert torch.equal(model(x), expected), layout
    assert weight_norm.detect(model) == []
