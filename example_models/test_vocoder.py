"""The vocoder's checkpoint-compatibility tests: the pytest-ckpt demo."""

from __future__ import annotations

import pytest
import torch

from example_models.vocoder import Vocoder, VocoderConfig


@pytest.mark.ckpt_roundtrip
def test_vocoder_checkpoint_roundtrips():
    return Vocoder(VocoderConfig.tiny())


@pytest.mark.ckpt_roundtrip(
    inputs=lambda: torch.randn(1, 80, 32), formats=("torch", "safetensors")
)
def test_vocoder_outputs_survive_torch_and_safetensors():
    return Vocoder(VocoderConfig.tiny())


def test_vocoder_key_set_matches_snapshot(ckpt):
    ckpt.assert_manifest(Vocoder(VocoderConfig.tiny()))
