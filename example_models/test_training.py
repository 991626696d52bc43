"""Training checkpoints: container schema snapshots and resume equivalence."""

from __future__ import annotations

import pytest
import torch

from example_models.separator import PlateauSolver, SeparatorTrainer, reload_best_and_halve_lr
from example_models.syncnet import (
    SyncNet,
    resume_training,
    save_release,
    save_training_checkpoint,
)


def trained_syncnet() -> tuple[SyncNet, torch.optim.Optimizer]:
    model = SyncNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    model(torch.randn(2, 1, 80, 16), torch.randn(2, 15, 48, 96)).sum().backward()
    optimizer.step()
    return model, optimizer


def test_syncnet_training_checkpoint_schema(ckpt, tmp_path):
    model, optimizer = trained_syncnet()
    save_training_checkpoint(model, optimizer, 1200, tmp_path / "train.pt")
    ckpt.assert_schema(tmp_path / "train.pt", name="training")


def test_syncnet_release_checkpoint_schema(ckpt, tmp_path):
    model, _ = trained_syncnet()
    save_release(model, tmp_path / "release.pt")
    ckpt.assert_schema(tmp_path / "release.pt", name="release")


def test_syncnet_checkpoint_with_lr_schedulers_schema(ckpt, tmp_path):
    # written under torch 2.13 and compared in CI's torch 2.1.2 lane as well: the schedulers'
    # private fields (_is_initial, verbose, ...) differ between the two, their state does not
    from torch.optim import lr_scheduler

    model, optimizer = trained_syncnet()
    schedulers = {"step": lr_scheduler.StepLR(optimizer, step_size=2),
                  "cosine": lr_scheduler.CosineAnnealingLR(optimizer, T_max=5),
                  "plateau": lr_scheduler.ReduceLROnPlateau(optimizer)}
    torch.save({"state_dict": model.state_dict(), "optimizer": optimizer.state_dict(),
                "schedulers": {name: s.state_dict() for name, s in schedulers.items()},
                "epoch": 3}, tmp_path / "train.pt")
    ckpt.assert_schema(tmp_path / "train.pt", name="schedulers")


@pytest.mark.ckpt_resume(steps=6, at=3)
def test_separator_resumes_exactly():
    return SeparatorTrainer()


def test_separator_reload_best_halves_the_lr(tmp_path):
    trainer = SeparatorTrainer()
    state = trainer.build()
    trainer.step(state)
    trainer.save(state, tmp_path / "best.pt")
    lr = state.optimizer.param_groups[0]["lr"]
    reload_best_and_halve_lr(state.model, state.optimizer, tmp_path / "best.pt")
    assert state.optimizer.param_groups[0]["lr"] == lr / 2


def test_plateau_solver_resumes_with_its_counters(ckpt, tmp_path):
    ckpt.assert_resumes(PlateauSolver(tmp_path), steps=6, at=2)


def test_syncnet_training_script_resumes_from_its_training_checkpoint(ckpt, tmp_path):
    model, optimizer = trained_syncnet()
    save_training_checkpoint(model, optimizer, 1200, tmp_path / "train.pt")
    ckpt.assert_loads(SyncNet(), tmp_path / "train.pt",
                      load_from=lambda target, path: resume_training(path)[0])
