"""A small speech separator (Conv-TasNet shaped) and two training loops: Adam with a step LR
schedule and dropout; and a solver without a scheduler that, when the loss stops improving,
reloads the best checkpoint and halves the LR (as Conv-TasNet recipes do)."""

from __future__ import annotations

import logging
import math
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

log = logging.getLogger(__name__)


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



def reload_best_and_halve_lr(model: nn.Module, optimizer: torch.optim.Optimizer,
                             path: Path) -> None:
    """On a plateau: load the best checkpoint into the running model and optimizer and
    continue at half its LR. Reads the path itself and returns nothing."""
    package = torch.load(path, weights_only=True)
    model.load_state_dict(package["model"])
    optim_state = package["optimizer"]
    for group in optim_state["param_groups"]:
        group["lr"] = group["lr"] / 2  # the LR lives in the optimizer's param_groups
    optimizer.load_state_dict(optim_state)
    log.info("Learning rate adjusted to: {lr:.6f}".format(lr=optim_state["param_groups"][0]["lr"]))


@dataclass
class SolverState:
    model: Separator
    optimizer: torch.optim.Optimizer
    step: int = 0
    best_loss: float = math.inf
    bad_steps: int = 0  # steps since the loss last improved


class PlateauSolver:
    """No LR scheduler: the loop's own counters decide when to reload the best checkpoint
    (kept in ``workdir``) and halve the LR."""

    def __init__(self, workdir: Path, patience: int = 1, threshold: float = 0.5) -> None:
        self.best = workdir / "best.pt"
        self.patience = patience
        self.threshold = threshold  # an improvement is a relative drop of at least this

    def build(self) -> SolverState:
        model = Separator()
        return SolverState(model, _optimizer(model, lr=3e-3))

    def step(self, state: SolverState) -> float:
        sources = torch.randn(4, 2, 64)
        loss = ((state.model(sources.sum(dim=1)) - sources) ** 2).mean()
        state.optimizer.zero_grad()
        loss.backward()
        state.optimizer.step()
        state.step += 1
        value = float(loss.detach())
        if value < state.best_loss * (1 - self.threshold):
            state.best_loss, state.bad_steps = value, 0
            self.save(state, self.best)
        else:
            state.bad_steps += 1
            if state.bad_steps >= self.patience:
                reload_best_and_halve_lr(state.model, state.optimizer, self.best)
                state.bad_steps = 0
        return value

    def save(self, state: SolverState, path: Path) -> None:
        torch.save({"model": state.model.state_dict(), "optimizer": state.optimizer.state_dict(),
                    "global_step": state.step, "best_loss": state.best_loss,
                    "bad_steps": state.bad_steps, "rng": torch.get_rng_state()}, path)

    def resume(self, path: Path) -> SolverState:
        checkpoint = torch.load(path, weights_only=True)
        model = Separator()
        model.load_state_dict(checkpoint["model"])
        optimizer = _optimizer(model, lr=3e-3)
        optimizer.load_state_dict(checkpoint["optimizer"])
        torch.set_rng_state(checkpoint["rng"])
        return SolverState(model, optimizer, checkpoint["global_step"],
                           checkpoint.get("best_loss", math.inf), checkpoint.get("bad_steps", 0))
