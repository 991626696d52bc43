"""Training checkpoints: container schema snapshots and resume equivalence."""

from __future__ import annotations

import pytest
import torch

from example_models.separator import SeparatorTrainer
from example_models.syncnet import SyncNet, save_release, save_training_checkpoint


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


@pytest.mark.ckpt_resume(steps=6, at=3)
def test_separator_resumes_exactly():
    return SeparatorTrainer()


def test_separator_reload_best_halves_the_lr(tmp_path):
    trainer = SeparatorTrainer()
    state = trainer.build()
    trainer.step(state)
    trainer.save(state, tmp_path / "best.pt")
    lr = state.optimizer.param_groups[0]["lr"]
    assert trainer.reload_best_and_halve_lr(tmp_path / "best.pt").optimizer.param_groups[0][
        "lr"] == lr / 2
