"""A LLaMA-shaped decoder: tied embeddings round-trip; the 7B key set is checked on meta."""

from __future__ import annotations

import pytest
import torch

from example_models.llama import Llama, LlamaConfig


@pytest.mark.ckpt_roundtrip(inputs=lambda: torch.randint(0, 64, (1, 8)), golden=True)
def test_tied_llama_roundtrips_with_shared_embeddings():
    return Llama(LlamaConfig.tiny(tie_embeddings=True))


def test_llama_7b_key_set_matches_snapshot_on_meta(ckpt):
    with torch.device("meta"):
        model = Llama(LlamaConfig.llama_7b())
    ckpt.assert_manifest(model)


# No data, no file: keys, shapes, dtypes, ties and the assign=True load path of the 7B model.
@pytest.mark.ckpt_roundtrip(snapshot=False)
def test_llama_7b_round_trips_on_meta():
    with torch.device("meta"):
        return Llama(LlamaConfig.llama_7b())
