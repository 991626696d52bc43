"""A small speech separator (Conv-TasNet shaped) and its training loop: Adam, a step LR
schedule, dropout, and a halve-LR-on-plateau step that reloads the best checkpoint."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn


class Separator(nn.Module):
    """Mixture waveform (B, T) -> ``n_sources`` estimated waveforms (B, n_sources, T)."""

    def __init__(self, n_sources: int = 2, filters: int = 16, kernel: int = 8) -> None:
        super().__init__()
        self.n_sources = n_sources
        self.encoder = nn.Conv1d(1, filters, kernel, stride=kernel // 2, bias=False)
        self.mask_net = nn.Sequential(nn.Conv1d(filters, 32, 1), nn.PReLU(), nn.Dropout(0.1),
                                      nn.Conv1d(32, filters * n_sources, 1))
        self.decoder = nn.ConvTranspose1d(filters, 1, kernel, stride=kernel // 2, bias=False)

    def forward(self, mixture: Tensor) -> Tensor:
        frames = torch.relu(self.encoder(mixture.unsqueeze(1)))
        masks = torch.sigmoid(self.mask_net(frames)).chunk(self.n_sources, dim=1)
        sources = [self.decoder(frames * mask).squeeze(1) for mask in masks]
        return torch.stack(sources, dim=1)[..., : mixture.shape[-1]]


@dataclass
class TrainingState:
    model: Separator
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.StepLR
    step: int = 0


def _optimizer(model: nn.Module, lr: float = 1e-3) -> torch.optim.Adam:
    return torch.optim.Adam(model.parameters(), lr=lr)


class SeparatorTrainer:
    """The training code, as the four callables ``ckpt_resume`` drives."""

    def build(self) -> TrainingState:
        model = Separator()
        optimizer = _optimizer(model)
        return TrainingState(model, optimizer, torch.optim.lr_scheduler.StepLR(optimizer, 2, 0.5))

    def step(self, state: TrainingState) -> float:
        sources = torch.randn(4, 2, 64)
        estimate = state.model(sources.sum(dim=1))
        loss = ((estimate - sources) ** 2).mean()
        state.optimizer.zero_grad()
        loss.backward()
        state.optimizer.step()
        state.scheduler.step()
        state.step += 1
        return float(loss.detach())

    def save(self, state: TrainingState, path: Path) -> None:
        torch.save({"model": state.model.state_dict(), "optimizer": state.optimizer.state_dict(),
                    "scheduler": state.scheduler.state_dict(), "global_step": state.step,
                    "rng": torch.get_rng_state()}, path)

    def resume(self, path: Path) -> TrainingState:
        checkpoint = torch.load(path, weights_only=True)
        model = Separator()
        model.load_state_dict(checkpoint["model"])
        optimizer = _optimizer(model)
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 2, 0.5)
        scheduler.load_state_dict(checkpoint["scheduler"])
        torch.set_rng_state(checkpoint["rng"])
        return TrainingState(model, optimizer, scheduler, checkpoint["global_step"])

    def reload_best_and_halve_lr(self, path: Path) -> TrainingState:
        """On a plateau: go back to the best checkpoint and continue at half its LR."""
        state = self.resume(path)
        for group in state.optimizer.param_groups:
            group["lr"] = group["lr"] / 2  # the LR lives in the optimizer's param_groups
        return state
