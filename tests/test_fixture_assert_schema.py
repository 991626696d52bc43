"""``ckpt.assert_schema``: training checkpoint container snapshots, as users meet them."""

from __future__ import annotations

from tests.conftest import lines

TRAINING = '''
import torch
from nets import Net


def train_and_save(path, *, with_scheduler=True, weights_only=False):
    model = Net()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 2)
    model(torch.randn(4, 4)).sum().backward()
    optimizer.step()
    scheduler.step()
    if weights_only:
        torch.save(model.state_dict(), path)
        return
    checkpoint = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                  "global_step": 1}
    if with_scheduler:
        checkpoint["scheduler"] = scheduler.state_dict()
    torch.save(checkpoint, path)


def test_training_checkpoint(ckpt, tmp_path):
    train_and_save(tmp_path / "last.pt", **OPTIONS)
    ckpt.assert_schema(tmp_path / "last.pt")
'''


def test_schema_life_cycle_and_a_dropped_scheduler(project, mode):
    project.makepyfile(test_a=TRAINING.replace("**OPTIONS", ""))
    first = project.runpytest(*mode)
    first.assert_outcomes(failed=1)
    first.stdout.fnmatch_lines(lines(
        "no schema snapshot for this test yet (__snapshots__/test_a/"
        "test_training_checkpoint.schema.txt)",
        "create it with: pytest --ckpt-snapshot-update 'test_a.py::test_training_checkpoint'"))
    project.runpytest("--ckpt-snapshot-update", *mode).assert_outcomes(passed=1)
    stored = (project.path / "__snapshots__/test_a/test_training_checkpoint.schema.txt").read_text()
    assert "optimizer.state[*].exp_avg: tensor float32\n" in stored
    assert "scheduler.last_epoch: int\n" in stored
    project.runpytest(*mode).assert_outcomes(passed=1)

    project.makepyfile(test_a=TRAINING.replace("**OPTIONS", "with_scheduler=False"))
    result = project.runpytest(*mode)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(lines(
        "checkpoint schema differs from snapshot __snapshots__/test_a/"
        "test_training_checkpoint.schema.txt",
        "  [training_state] 1 key: top-level `scheduler` missing (present in the snapshot)",
        "      scheduler",
        "fix: restore the entries the resume path needs, or make it tolerate their absence; "
        "if this change is intended, run: pytest --ckpt-snapshot-update "
        "'test_a.py::test_training_checkpoint'",
    ))


def test_a_weights_only_release_checked_against_the_training_schema(project):
    project.makepyfile(test_a=TRAINING.replace("**OPTIONS", ""))
    project.runpytest("--ckpt-snapshot-update").assert_outcomes(passed=1)
    project.makepyfile(test_a=TRAINING.replace("**OPTIONS", "weights_only=True"))
    result = project.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(lines(
        "  [training_state] 4 keys: top-level `global_step`, `model`, `optimizer`, `scheduler` "
        "missing (present in the snapshot): this looks like a weights-only checkpoint given to "
        "a training resume*",
        "  [training_state] container layout changed",
        "      snapshot: {'model': state_dict}",
        "      checkpoint: bare state_dict",
    ))


def test_torch_owned_optimizer_flags_may_differ_between_torch_versions(project, mode):
    """A snapshot written under another torch (Adam without ``decoupled_weight_decay``, with
    an extra flag) still matches, and an update does not rewrite it; a field the user's code
    owns still fails."""
    project.makepyfile(test_a=TRAINING.replace("**OPTIONS", ""))
    project.runpytest("--ckpt-snapshot-update").assert_outcomes(passed=1)
    location = project.path / "__snapshots__/test_a/test_training_checkpoint.schema.txt"
    other_torch = [line for line in location.read_text().splitlines()
                   if not line.startswith("optimizer.param_groups[0].decoupled_weight_decay")]
    other_torch.append("optimizer.param_groups[0].flag_of_a_newer_torch: bool")
    location.write_text("\n".join(other_torch) + "\n")
    stored = location.read_text()
    project.runpytest(*mode).assert_outcomes(passed=1)
    project.runpytest("--ckpt-snapshot-update", *mode).assert_outcomes(passed=1)
    assert location.read_text() == stored

    location.write_text(stored.replace("optimizer.param_groups[0].lr: float\n",
                                       "optimizer.param_groups[0].lr: float\n"
                                       "optimizer.param_groups[0].warmup: int\n"))
    result = project.runpytest(*mode)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(lines(
        "  [training_state] 1 key: `optimizer.param_groups[0].warmup` missing (present in the "
        "snapshot)"))
