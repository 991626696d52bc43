"""``pytest-ckpt diff`` of two training checkpoints compares their containers too: the same
weights saved by a plain PyTorch training script (``{'model', 'optimizer', 'iteration'}``) and
in Lightning's layout (``{'state_dict', 'optimizer_states', ...}``) are not interchangeable,
because a loader written for one finds no weights in the other. And the notes ``show`` prints
about a file (a legacy, non-zip torch file) are printed by ``diff`` too."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from tests.test_cli import run

LEGACY_NOTE = ("legacy (non-zip) torch file: it cannot be memory-mapped (torch.load(mmap=True) "
               "needs the zip format), so every load reads it whole; re-save it with torch.save "
               "for release")


def trained(steps: int) -> tuple[nn.Module, torch.optim.Optimizer, Any]:
    """A small model after ``steps`` AdamW steps under a StepLR schedule."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(24, 3))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=5)
    for _ in range(steps):
        optimizer.zero_grad()
        model(torch.randn(5, 2, 8)).square().mean().backward()
        optimizer.step()
        scheduler.step()
    return model, optimizer, scheduler


def save_plain(path: Path, steps: int = 10, **kwargs: Any) -> None:
    """What a plain PyTorch training script saves."""
    model, optimizer, _ = trained(steps)
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "iteration": steps, "losses": [0.5] * steps,
                "best_loss": None if steps < 10 else 0.25}, path, **kwargs)


def save_lightning(path: Path, steps: int = 10) -> None:
    """What Lightning's Trainer.save_checkpoint writes, built by hand."""
    model, optimizer, scheduler = trained(steps)
    torch.save({"state_dict": model.state_dict(), "optimizer_states": [optimizer.state_dict()],
                "lr_schedulers": [scheduler.state_dict()], "epoch": 1, "global_step": steps,
                "pytorch-lightning_version": "2.1.0"}, path)


def loaded(path: Path) -> dict[str, Any]:
    return torch.load(path, weights_only=True)


WEIGHTS_UNDER_OTHER_ENTRIES = [
    "  [training_state] the weights sit under different entries: checkpoint A ['model'], "
    "checkpoint B ['state_dict']: a loader written for one (ckpt['model'] / ckpt['state_dict']) "
    "finds no weights in the other",
    "      ckpt['model'] of checkpoint B raises KeyError: 'model'; ckpt.get('model', ckpt) is "
    "its whole container: 0 of 4 tensors load",
    "      ckpt['state_dict'] of checkpoint A raises KeyError: 'state_dict'; "
    "ckpt.get('state_dict', ckpt) is its whole container: 0 of 4 tensors load",
]


def test_diff_of_a_plain_training_checkpoint_and_a_lightning_one_says_their_containers_differ(
        tmp_path):
    save_plain(tmp_path / "a.pth")
    save_lightning(tmp_path / "b.ckpt")

    result = run("diff", "a.pth", "b.ckpt", cwd=tmp_path)

    assert result.returncode == 1, result.stderr
    assert "compatible" not in result.stdout
    assert result.stdout.splitlines() == [
        "a.pth (A) and b.ckpt (B) hold the same weights (4 keys, shapes and dtypes) but their "
        "containers differ: 2 findings",
        *WEIGHTS_UNDER_OTHER_ENTRIES,
        "  [training_state] the entries beside the weights differ (4 only in checkpoint A, 5 "
        "only in checkpoint B): a resume written for one reads entries the other does not have",
        "      optimizer state: checkpoint A ['optimizer'] (dict), checkpoint B "
        "['optimizer_states'] (list of 1); the same fields inside (ckpt['optimizer'] of "
        "checkpoint A is ckpt['optimizer_states'][0] of checkpoint B)",
        "      LR scheduler state: checkpoint A none, checkpoint B ['lr_schedulers'] (list of 1)",
        "      step counter: checkpoint A ['iteration'] (int), checkpoint B ['epoch'] (int), "
        "['global_step'] (int)",
        "      other: checkpoint A ['losses'] (list[float] of 10), ['best_loss'] (float), "
        "checkpoint B ['pytorch-lightning_version'] (str)",
        "fix: load the weights through the container's weights entry, e.g. "
        "`state = ckpt.get('state_dict', ckpt.get('model', ckpt))` (and each training entry "
        "where its layout keeps it), or save both in one layout",
    ]


def test_what_the_container_diff_says_of_loaders_is_what_torch_does(tmp_path):
    save_plain(tmp_path / "a.pth")
    save_lightning(tmp_path / "b.ckpt")
    lines = run("diff", "a.pth", "b.ckpt", cwd=tmp_path).stdout.splitlines()
    plain, lightning = loaded(tmp_path / "a.pth"), loaded(tmp_path / "b.ckpt")
    model = trained(0)[0]

    # the Lightning-style loader, given the plain checkpoint, loads none of the 4 tensors
    assert lines[3].endswith("ckpt.get('state_dict', ckpt) is its whole container: 0 of 4 "
                             "tensors load")
    skipped = model.load_state_dict(plain.get("state_dict", plain), strict=False)
    assert len(skipped.missing_keys) == 4
    with pytest.raises(KeyError):
        lightning["model"]
    # the optimizer state is the same inside, as the finding says
    assert lightning["optimizer_states"][0]["param_groups"] == plain["optimizer"]["param_groups"]
    # the fix line's expression loads both files strictly
    expression = re.search(r"`state = (.+?)`", lines[-1])
    assert expression is not None
    for ckpt in (plain, lightning):
        state = eval(expression.group(1), {"ckpt": ckpt})  # our own printed expression
        model.load_state_dict(state)


def test_diff_json_of_two_training_checkpoints_is_not_compatible(tmp_path):
    save_plain(tmp_path / "a.pth")
    save_lightning(tmp_path / "b.ckpt")

    result = run("diff", "b.ckpt", "a.pth", "--json", cwd=tmp_path)

    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert report["compatible"] is False
    assert [finding["kind"] for finding in report["findings"]] == ["training_state"] * 2
    assert report["findings"][0]["hint"] == (
        "the weights sit under different entries: checkpoint A ['state_dict'], checkpoint B "
        "['model']: a loader written for one (ckpt['state_dict'] / ckpt['model']) finds no "
        "weights in the other")


def test_diff_of_a_weights_only_release_and_a_training_checkpoint_names_the_weights_only_side(
        tmp_path):
    model, optimizer, _ = trained(3)
    torch.save(model.state_dict(), tmp_path / "release.pt")
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "iteration": 3}, tmp_path / "last.pt")

    result = run("diff", "release.pt", "last.pt", cwd=tmp_path)

    assert result.returncode == 1, result.stderr
    assert result.stdout.splitlines() == [
        "release.pt (A) and last.pt (B) hold the same weights (4 keys, shapes and dtypes) but "
        "their containers differ: 2 findings",
        "  [training_state] the weights sit under different entries: checkpoint A a bare "
        "state_dict (the weights at the top level), checkpoint B ['model']: a loader written "
        "for one (ckpt itself / ckpt['model']) finds no weights in the other",
        "      load_state_dict(ckpt) of checkpoint B gets its whole container: 0 of 4 tensors "
        "load",
        "      ckpt['model'] of checkpoint A raises KeyError: 'model'; ckpt.get('model', ckpt) "
        "is its state_dict: 4 of 4 tensors load",
        "  [training_state] the entries beside the weights differ (2 only in checkpoint B): a "
        "resume written for one reads entries the other does not have; checkpoint A is "
        "weights-only: a resume written for checkpoint B finds no optimizer or step in it",
        "      optimizer state: checkpoint A none, checkpoint B ['optimizer'] (dict)",
        "      step counter: checkpoint A none, checkpoint B ['iteration'] (int)",
        "fix: load the weights through the container's weights entry, e.g. "
        "`state = ckpt.get('model', ckpt)` (and each training entry where its layout keeps "
        "it), or save both in one layout",
    ]


def test_diff_of_a_legacy_file_prints_the_note_show_prints(tmp_path):
    # same container, other values: the optimizer's state is empty before the first step, the
    # loss history is shorter and the best loss not set yet
    save_plain(tmp_path / "old.pth", steps=0, _use_new_zipfile_serialization=False)
    save_plain(tmp_path / "new.pth", steps=12)
    show = run("show", "old.pth", cwd=tmp_path).stdout.splitlines()
    assert f"note: {LEGACY_NOTE}" in show

    result = run("diff", "old.pth", "new.pth", cwd=tmp_path)

    assert (result.returncode, result.stdout.splitlines()) == (0, [
        "compatible: old.pth and new.pth have the same 4 keys, shapes and dtypes",
        f"note: old.pth (A): {LEGACY_NOTE}",
    ])
    both = run("diff", "old.pth", "old.pth", cwd=tmp_path).stdout.splitlines()
    assert both[1:] == [f"note: old.pth (A): {LEGACY_NOTE}", f"note: old.pth (B): {LEGACY_NOTE}"]


def test_diff_keeps_the_fix_last_when_a_legacy_file_also_has_another_container(tmp_path):
    save_lightning(tmp_path / "b.ckpt")
    save_plain(tmp_path / "a.pth", _use_new_zipfile_serialization=False)

    result = run("diff", "b.ckpt", "a.pth", cwd=tmp_path)

    assert result.returncode == 1, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].endswith("but their containers differ: 2 findings")
    assert lines[-2:] == [
        f"note: a.pth (B): {LEGACY_NOTE}",
        "fix: load the weights through the container's weights entry, e.g. "
        "`state = ckpt.get('model', ckpt.get('state_dict', ckpt))` (and each training entry "
        "where its layout keeps it), or save both in one layout",
    ]
