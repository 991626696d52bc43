"""A SyncNet-style audio-visual sync model, with the two checkpoints such projects publish:
a release (weights only) and a training checkpoint (``global_step``, optimizer)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn


class SyncNet(nn.Module):
    """Mel window (B, 1, 80, 16) and mouth crops (B, 15, 48, 96) -> sync probability (B,)."""

    def __init__(self, dim: int = 32) -> None:
        super().__init__()
        self.audio_encoder = nn.Sequential(nn.Conv2d(1, 16, 3, stride=2), nn.BatchNorm2d(16),
                                           nn.ReLU(), nn.Conv2d(16, dim, 3, stride=2),
                                           nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.face_encoder = nn.Sequential(nn.Conv2d(15, 16, 3, stride=2), nn.BatchNorm2d(16),
                                          nn.ReLU(), nn.Conv2d(16, dim, 3, stride=2),
                                          nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, mel: Tensor, faces: Tensor) -> Tensor:
        audio = nn.functional.normalize(self.audio_encoder(mel), dim=1)
        face = nn.functional.normalize(self.face_encoder(faces), dim=1)
        return torch.sigmoid((audio * face).sum(dim=1))


def save_release(model: SyncNet, path: Path) -> None:
    """The published checkpoint: weights only."""
    torch.save(model.state_dict(), path)


def save_training_checkpoint(model: SyncNet, optimizer: torch.optim.Optimizer,
                             global_step: int, path: Path) -> None:
    torch.save({"state_dict": model.state_dict(), "optimizer": optimizer.state_dict(),
                "global_step": global_step}, path)


def resume_training(path: Path) -> tuple[SyncNet, torch.optim.Optimizer, int]:
    """The training script's resume path: it needs ``global_step`` and the optimizer."""
    checkpoint: dict[str, Any] = torch.load(path, weights_only=True)
    model = SyncNet()
    model.load_state_dict(checkpoint.get("state_dict", checkpoint))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    if "optimizer" in checkpoint:
        optimizer.load_state_dict(checkpoint["optimizer"])
    return model, optimizer, int(checkpoint["global_step"])
