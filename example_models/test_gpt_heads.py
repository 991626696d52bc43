"""A ChatTTS-shaped GPT whose text and audio-code heads are weight-normed linear layers."""

from __future__ import annotations

import pytest
import torch

from example_models.gpt_heads import GPTHeads, GPTHeadsConfig


def tokens() -> torch.Tensor:
    return torch.randint(0, 64, (1, 12))


@pytest.mark.ckpt_roundtrip(inputs=tokens, formats=("torch", "safetensors"),
                            loaders=("load_state_dict", "assign", "safetensors"))
def test_gpt_heads_round_trip_and_load_both_weight_norm_layouts():
    return GPTHeads(GPTHeadsConfig.tiny())


def test_gpt_heads_key_set_records_the_weight_norm_layout(ckpt):
    manifest = ckpt.assert_manifest(GPTHeads(GPTHeadsConfig.tiny()))
    assert "head_text.parametrizations.weight.original0" in manifest


def test_published_gpt_heads_checkpoints_keep_loading(ckpt):
    """Every golden (one per torch version that wrote one) loads with the same outputs."""
    ckpt.golden(GPTHeads(GPTHeadsConfig.tiny()), inputs=tokens)
