"""A CLAP-style two-branch audio-text model whose text branch is BERT-like (with the
``position_ids`` buffer), and the key remap used to load upstream checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn


class TextBranch(nn.Module):
    """BERT-like: token + position embeddings, one encoder layer, pooled projection."""

    def __init__(self, vocab: int = 64, dim: int = 16, max_len: int = 32,
                 persistent_position_ids: bool = False) -> None:
        super().__init__()
        self.embeddings = nn.ModuleDict({"word": nn.Embedding(vocab, dim),
                                         "position": nn.Embedding(max_len, dim),
                                         "norm": nn.LayerNorm(dim)})
        self.register_buffer("position_ids", torch.arange(max_len).unsqueeze(0),
                             persistent=persistent_position_ids)
        layer = nn.TransformerEncoderLayer(dim, 2, 2 * dim, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.projection = nn.Linear(dim, dim)

    def forward(self, tokens: Tensor) -> Tensor:
        positions = self.position_ids[:, : tokens.shape[1]]
        hidden = self.embeddings["word"](tokens) + self.embeddings["position"](positions)
        return self.projection(self.encoder(self.embeddings["norm"](hidden)).mean(dim=1))


class CLAP(nn.Module):
    def __init__(self, persistent_position_ids: bool = False) -> None:
        super().__init__()
        self.audio_branch = nn.Sequential(nn.Linear(64, 16), nn.GELU(), nn.Linear(16, 16))
        self.text_branch = TextBranch(persistent_position_ids=persistent_position_ids)

    def forward(self, audio: Tensor, tokens: Tensor) -> Tensor:
        audio_embedding = nn.functional.normalize(self.audio_branch(audio), dim=-1)
        text_embedding = nn.functional.normalize(self.text_branch(tokens), dim=-1)
        return audio_embedding @ text_embedding.T


def upstream_checkpoint(model: CLAP) -> dict[str, Any]:
    """How the upstream project names the keys: ``audio_model.``/``text_model.``."""
    return {k.replace("audio_branch.", "audio_model.").replace("text_branch.", "text_model."): v
            for k, v in model.state_dict().items()}


def remap_upstream(state: dict[str, Any]) -> dict[str, Any]:
    return {k.replace("audio_model.", "audio_branch.").replace("text_model.", "text_branch."): v
            for k, v in state.items()}


def load_upstream(model: CLAP, state: dict[str, Any]) -> Any:
    return model.load_state_dict(remap_upstream(state), strict=False)


def save_training_checkpoint(model: nn.Module, path: Path, epoch: int = 10) -> None:
    """How the training script saves (the model wrapped in DistributedDataParallel)."""
    torch.save({"epoch": epoch, "state_dict": {f"module.{k}": v
                                                for k, v in model.state_dict().items()}}, path)


def load_ckpt(model: CLAP, path: Path) -> None:
    """``CLAP_Module.load_ckpt``: a training checkpoint (DDP-wrapped, upstream names, maybe
    with the ``position_ids`` of older transformers) into ``model``; returns nothing."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    state = checkpoint.get("state_dict", checkpoint)
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    state = remap_upstream(state)
    # position_ids became a non-persistent buffer; checkpoints from before still carry it
    state.pop("text_branch.position_ids", None)
    model.load_state_dict(state)
