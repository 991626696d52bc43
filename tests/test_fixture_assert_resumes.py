"""``ckpt.assert_resumes`` and ``@pytest.mark.ckpt_resume``: a real training loop with each
resume bug injected, and the finding the plugin reports."""

from __future__ import annotations

import pytest

from tests.conftest import lines

TRAINER = '''
import torch
from torch import nn


class Separator(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = nn.Linear(8, 16)
        self.drop = nn.Dropout(0.2)
        self.dec = nn.Linear(16, 8)

    def forward(self, x):
        return self.dec(self.drop(torch.relu(self.enc(x))))


class State:
    def __init__(self, model, optimizer, scheduler, step=0):
        self.model, self.optimizer, self.scheduler, self.step = model, optimizer, scheduler, step


class Harness:
    def __init__(self, bug=None):
        self.bug = bug

    def build(self):
        model = Separator()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        return State(model, optimizer, torch.optim.lr_scheduler.StepLR(optimizer, 2, 0.5))

    def step(self, state):
        x = torch.randn(4, 8)
        loss = ((state.model(x) - x.flip(-1)) ** 2).mean()
        state.optimizer.zero_grad()
        loss.backward()
        state.optimizer.step()
        state.scheduler.step()
        state.step += 1
        return loss.item()

    def save(self, state, path):
        checkpoint = {"model": state.model.state_dict(), "optimizer": state.optimizer.state_dict(),
                      "global_step": state.step, "rng": torch.get_rng_state()}
        if self.bug != "scheduler not saved":
            checkpoint["scheduler"] = state.scheduler.state_dict()
        if self.bug == "numpy rng saved":
            import numpy
            checkpoint["numpy_rng"] = numpy.random.get_state()
        if self.bug == "folder with a missing step":  # a trainer that writes a folder
            path.mkdir()
            torch.save({"model": checkpoint.pop("model")}, path / "model.pt")
            del checkpoint["global_step"]
            torch.save(checkpoint, path / "trainer_state.pt")
            return
        torch.save(checkpoint, path)

    def resume(self, path):
        if self.bug == "folder with a missing step":
            checkpoint = {**torch.load(path / "model.pt", weights_only=True),
                          **torch.load(path / "trainer_state.pt", weights_only=True)}
        else:
            checkpoint = torch.load(path, weights_only=True)
        model = Separator()
        model.load_state_dict(checkpoint["model"])
        params = list(model.parameters())
        if self.bug == "parameters reordered":
            params = params[2:] + params[:2]
        optimizer = torch.optim.Adam(params, lr=1e-2)
        if self.bug not in ("optimizer not loaded", "moments not loaded"):
            optimizer.load_state_dict(checkpoint["optimizer"])
        if self.bug == "halve lr from the checkpoint":  # reload best, then halve its LR
            for group in optimizer.param_groups:
                group["lr"] = checkpoint["lr"] / 2
        last = checkpoint["global_step"] if self.bug == "optimizer not loaded" else -1
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 2, 0.5, last_epoch=last)
        if "scheduler" in checkpoint:
            scheduler.load_state_dict(checkpoint["scheduler"])
        if self.bug != "rng not restored":
            torch.set_rng_state(checkpoint["rng"])
        return State(model, optimizer, scheduler, checkpoint["global_step"])
'''


@pytest.fixture
def trainer(project):
    project.makepyfile(trainer=TRAINER)
    return project


def test_a_correct_resume_passes_as_marker_and_fixture(trainer, mode):
    trainer.makepyfile(test_a='''
        import pytest
        from trainer import Harness

        @pytest.mark.ckpt_resume(steps=6, at=3)
        def test_marker():
            return Harness()

        def test_fixture(ckpt):
            h = Harness()
            ckpt.assert_resumes(build=h.build, step=h.step, save=h.save, resume=h.resume,
                                steps=5, at=2)
    ''')
    trainer.runpytest(*mode).assert_outcomes(passed=2)


def run_bug(trainer, bug: str):
    trainer.makepyfile(test_a=f'''
        import pytest
        from trainer import Harness

        @pytest.mark.ckpt_resume(steps=6, at=3)
        def test_resume():
            return Harness({bug!r})
    ''')
    result = trainer.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(lines(
        "resumed training does not continue like the uninterrupted run (6 steps, saved and "
        "resumed after step 3)"))
    return result


def test_scheduler_never_saved_restarts_the_lr_schedule(trainer):
    run_bug(trainer, "scheduler not saved").stdout.fnmatch_lines(lines(
        "  [training_state] the learning rate diverged first at step 4: (0.0025,) "
        "uninterrupted, (0.005,) resumed; the scheduler state was never saved, so the LR "
        "schedule restarted",
        "      LR uninterrupted: [(0.01,), (0.005,), (0.005,), (0.0025,), (0.0025,), (0.00125,)]",
        "      LR resumed:       [(0.01,), (0.005,), (0.005,), (0.005,), (0.0025,), (0.0025,)]",
    ))


def test_rng_not_restored_is_named(trainer):
    run_bug(trainer, "rng not restored").stdout.fnmatch_lines(lines(
        "  [training_state] the loss diverged first at step 4 (resumed after step 3): *",
        "      the RNG state is not restored on resume*",
        "  [training_state] RNG state not restored on resume: the next torch draws differ "
        "from the uninterrupted run",
    ))


def test_missing_initial_lr_is_named_with_the_resume_step(trainer):
    run_bug(trainer, "optimizer not loaded").stdout.fnmatch_lines(lines(
        "  [training_state] the resume path raised KeyError: "
        "param 'initial_lr' is not specified in param_groups[0] when resuming* (resuming after "
        "step 3); a scheduler built with last_epoch >= 0 needs 'initial_lr'*",
        "      raised at */trainer.py:* in resume: scheduler = torch.optim.lr_scheduler.StepLR(*",
        "      the checkpoint holds: global_step, model, optimizer, rng, scheduler",
    ))


def test_keyerror_lr_points_at_the_users_resume_code(trainer):
    run_bug(trainer, "halve lr from the checkpoint").stdout.fnmatch_lines(lines(
        "  [training_state] resuming after step 3, the checkpoint HAS "
        "['optimizer']['param_groups'][0]['lr']: the code at trainer.py:* raised "
        "KeyError: 'lr', not the file",
        '      raised at */trainer.py:* in resume: group["lr"] = checkpoint["lr"] / 2',
        "      the checkpoint holds: global_step, model, optimizer, rng, scheduler",
        "fix: the bug is in the code at trainer.py:*: read 'lr' where the checkpoint keeps it "
        "(checkpoint['optimizer']['param_groups'][0]['lr'])",
    ))


def test_optimizer_state_matched_by_position_is_named(trainer):
    run_bug(trainer, "parameters reordered").stdout.fnmatch_lines(lines(
        "  [training_state] 4 keys: optimizer state is matched by position*",
        "      dec.bias",
        "      dec.weight",
        "      enc.bias",
        "      enc.weight",
    ))


def test_wrong_use_is_a_usage_error(trainer):
    trainer.makepyfile(test_a='''
        import pytest

        @pytest.mark.ckpt_resume(steps=3, at=3)
        def test_at():
            from trainer import Harness
            return Harness()

        @pytest.mark.ckpt_resume(epochs=3)
        def test_option():
            return None

        def test_fixture(ckpt):
            ckpt.assert_resumes(build=lambda: None)
    ''')
    result = trainer.runpytest()
    result.assert_outcomes(failed=3)
    result.stdout.fnmatch_lines_random(lines(
        "ckpt_resume used wrongly in test_a.py::test_at: need 0 < at < steps, got steps=3, at=3",
        "@pytest.mark.ckpt_resume on test_a.py::test_option has unknown options: epochs",
        "ckpt_resume used wrongly in test_a.py::test_fixture: assert_resumes needs a harness or "
        "all of build, step, save, resume; missing: step, save, resume",
    ))


def test_a_divergence_with_the_rng_restored_does_not_blame_the_rng(trainer):
    result = run_bug(trainer, "moments not loaded")
    result.stdout.fnmatch_lines(lines(
        "  [training_state] 12 keys: optimizer state after the resumed run differs from the "
        "uninterrupted run (not saved, or restored onto other parameters)",
    ))
    assert "RNG state" not in result.stdout.str()


def test_a_save_that_writes_a_folder_is_read_for_the_hints(trainer):
    run_bug(trainer, "folder with a missing step").stdout.fnmatch_lines(lines(
        "  [training_state] 1 key: resuming after step 3, the code at trainer.py:* raised "
        "KeyError: 'global_step': the checkpoint holds no `global_step`",
        "      global_step",
        '      raised at */trainer.py:* in resume: return State(model, optimizer, scheduler, '
        'checkpoint["global_step"])',
        "      the checkpoint's top-level entries: model, optimizer, rng, scheduler",
        "      the checkpoint folder holds: model.pt (model); trainer_state.pt (optimizer, rng, "
        "scheduler)",
    ))


def test_a_resume_refused_by_weights_only_names_the_globals(trainer):
    pytest.importorskip("numpy")
    result = run_bug(trainer, "numpy rng saved")
    result.stdout.fnmatch_lines(lines(
        "  [unsafe_pickle] * entr*: torch.load(weights_only=True) refuses the globals these "
        "entries need; nothing from the file was executed",
        "      ['numpy_rng']*: numpy.*",
        "  [training_state] the resume path raised UnpicklingError: weights_only refused it: "
        "Unsupported * (resuming after step 3)",
        "      raised at */trainer.py:* in resume: checkpoint = torch.load(path, "
        "weights_only=True)",
        "      what save() wrote, */resume.ckpt, is refused by torch.load(weights_only=True) for "
        "the globals listed above",
        "fix: store plain Python values there*",
    ))
    assert "\x1b[" not in result.stdout.str()
