"""A UnitY-style multitask speech model (tiny): speech encoder, text encoder, text-to-unit
decoder. ASR fine-tunes train (and save) only the speech encoder."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn


def _stack(dim: int, layers: int) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(dim, nhead=2, dim_feedforward=2 * dim, batch_first=True,
                                       dropout=0.0)
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)


class UnitY(nn.Module):
    """Fbank frames (B, T, 80) -> speech states; tokens -> text states -> unit logits."""

    def __init__(self, dim: int = 16, vocab: int = 32, units: int = 24) -> None:
        super().__init__()
        self.speech_encoder = nn.Sequential(nn.Linear(80, dim), _stack(dim, 2))
        self.text_encoder = nn.ModuleDict({"embed": nn.Embedding(vocab, dim),
                                           "layers": _stack(dim, 2)})
        self.t2u_model = nn.ModuleDict({"layers": _stack(dim, 1), "head": nn.Linear(dim, units)})

    def forward(self, fbank: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor]:
        speech = self.speech_encoder(fbank)
        text = self.text_encoder["layers"](self.text_encoder["embed"](tokens))
        units = self.t2u_model["head"](self.t2u_model["layers"](text))
        return speech, units


def save_asr_finetune(model: UnitY, path: Path) -> None:
    """What an ASR fine-tune publishes: only the part it trained."""
    torch.save({"model": {k: v for k, v in model.state_dict().items()
                          if k.startswith("speech_encoder.")}}, path)
