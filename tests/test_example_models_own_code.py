"""The example projects' own loaders, savers and trainers, each with the bug its real
counterpart shipped: what the maintainer reads. Every scenario runs the project's code as it is
(a path loader that returns nothing, a ``from_pretrained`` classmethod, a solver with plateau
counters); the bug is one edit of that code, as a pull request would make it."""

from __future__ import annotations

import pytest

from tests.conftest import lines


def _edit(project: pytest.Pytester, module: str, old: str, new: str) -> None:
    source = project.path / "example_models" / f"{module}.py"
    text = source.read_text()
    assert text.count(old) == 1, (module, old)
    source.write_text(text.replace(old, new))


def _line_of(project: pytest.Pytester, module: str, text: str) -> int:
    source = (project.path / "example_models" / f"{module}.py").read_text().splitlines()
    return next(number for number, line in enumerate(source, 1) if text in line)


def _test_file(project: pytest.Pytester, body: str) -> None:
    project.makepyfile(test_own_code=body)


def _fails(project: pytest.Pytester, *args: str) -> pytest.RunResult:
    """Run pytest; exactly one test fails (the scenario's)."""
    result = project.runpytest(*args)
    result.assert_outcomes(failed=1)
    return result


LR_FORMAT = '.format(lr=optim_state["param_groups"][0]["lr"])'


def test_a_path_loader_whose_lr_log_line_raises_keyerror_is_blamed_not_the_file(
        example_project, mode):
    _edit(example_project, "separator", LR_FORMAT, ".format(**optim_state)")
    _test_file(example_project, '''
        from example_models.separator import SeparatorTrainer, _optimizer
        from example_models.separator import Separator, reload_best_and_halve_lr


        def test_reload_best(ckpt, tmp_path):
            trainer = SeparatorTrainer()
            trainer.save(trainer.build(), tmp_path / "best.pt")
            ckpt.assert_loads(Separator(), tmp_path / "best.pt", load_from=lambda model, path:
                              reload_best_and_halve_lr(model, _optimizer(model), path))
    ''')
    result = _fails(example_project, "test_own_code.py", "--ckpt-report=r.json", *mode)
    line = _line_of(example_project, "separator", "Learning rate adjusted")
    result.stdout.fnmatch_lines(lines(
        "checkpoint */best.pt does not load into Separator: the load path raised "
        f"KeyError: 'lr' at separator.py:{line}",
        "  [training_state] the checkpoint HAS ['optimizer']['param_groups'][0]['lr']: the "
        f"code at separator.py:{line} raised KeyError: 'lr', not the file",
        f"      raised at */example_models/separator.py:{line} in reload_best_and_halve_lr: "
        'log.info("Learning rate adjusted to: {lr:.6f}".format(**optim_state))',
        f"fix: the bug is in the code at separator.py:{line}: read 'lr' where the checkpoint "
        "keeps it (checkpoint['optimizer']['param_groups'][0]['lr'])",
    ))
    assert "Traceback" not in result.stdout.str()
    assert '"kind": "training_state"' in (example_project.path / "r.json").read_text()


def test_the_reload_best_branch_raising_in_the_uninterrupted_run_is_a_finding(
        example_project, mode):
    _edit(example_project, "separator", LR_FORMAT, ".format(**optim_state)")
    result = _fails(example_project, "example_models/test_training.py", "-k", "plateau", *mode)
    line = _line_of(example_project, "separator", "Learning rate adjusted")
    result.stdout.fnmatch_lines(lines(
        "resumed training does not continue like the uninterrupted run (6 steps, saved and "
        "resumed after step 2)",
        "  [training_state] the uninterrupted run (before any save or resume) at step 2: "
        "`package` (the checkpoint the code loaded) HAS ['optimizer']['param_groups'][0]['lr']"
        f": the code at separator.py:{line} raised KeyError: 'lr', not the file",
        f"      raised at */example_models/separator.py:{line} in reload_best_and_halve_lr: *",
        f"fix: the bug is in the code at separator.py:{line}: read 'lr' where the checkpoint "
        "keeps it (package['optimizer']['param_groups'][0]['lr'])",
    ))
    assert "Traceback" not in result.stdout.str()


def test_a_solver_that_stops_saving_its_plateau_counters_is_told_which(example_project, mode):
    _edit(example_project, "separator", '"global_step": state.step, "best_loss": state.best_loss,'
          '\n                    "bad_steps": state.bad_steps, ', '"global_step": state.step, ')
    result = _fails(example_project, "example_models/test_training.py", "-k", "plateau", *mode)
    result.stdout.fnmatch_lines(lines(
        "resumed training does not continue like the uninterrupted run (6 steps, saved and "
        "resumed after step 2)",
        "  [training_state] the training loop's own state is not in the checkpoint: the next "
        "steps depend on state.best_loss, which the resume does not restore",
        "      state.best_loss: 1.166* at save, inf after resume",
        "  [training_state] the learning rate diverged first at step 4: (0.0015,) "
        "uninterrupted, (0.00075,) resumed; the training state has no torch LR scheduler: the "
        "training loop sets the LR itself, from its own state",
        "fix: save the loop's state with the checkpoint and restore it in resume (e.g. "
        "checkpoint['loop'] = {'best_loss': state.best_loss})",
    ))
    assert "scheduler state was never saved" not in result.stdout.str()
    assert "RNG state" not in result.stdout.str()


def test_a_training_resume_given_the_weights_only_release(example_project, mode):
    _test_file(example_project, '''
        from example_models.syncnet import SyncNet, resume_training, save_release


        def test_resume_from_release(ckpt, tmp_path):
            save_release(SyncNet(), tmp_path / "release.pt")
            ckpt.assert_loads(SyncNet(), tmp_path / "release.pt",
                              load_from=lambda target, path: resume_training(path)[0])
    ''')
    result = _fails(example_project, "test_own_code.py", *mode)
    line = _line_of(example_project, "syncnet", 'checkpoint["global_step"]')
    result.stdout.fnmatch_lines(lines(
        f"checkpoint */release.pt does not load into SyncNet: the load path raised "
        f"KeyError: 'global_step' at syncnet.py:{line}",
        f"  [training_state] 1 key: the code at syncnet.py:{line} raised KeyError: "
        "'global_step': the checkpoint holds no `global_step`, and no training state at all: a "
        "weights-only checkpoint given to a training resume",
        "      global_step",
        f"      raised at */example_models/syncnet.py:{line} in resume_training: *",
        "      the checkpoint's top-level entries: audio_encoder.0.weight, *",
        "fix: resume from a training checkpoint (one that saves 'global_step'), or let the "
        "resume path start fresh on a weights-only file (checkpoint.get('global_step', 0))",
    ))


CLAP_TEST = '''
from example_models.clap import CLAP, load_ckpt, save_training_checkpoint


def test_load_ckpt(ckpt, tmp_path):
    save_training_checkpoint(CLAP(), tmp_path / "epoch_10.pt")
    ckpt.assert_loads(CLAP(), tmp_path / "epoch_10.pt", load_from=load_ckpt)
'''


def test_a_shim_deleting_a_buffer_the_checkpoint_no_longer_has(example_project, mode):
    _edit(example_project, "clap", 'state.pop("text_branch.position_ids", None)',
          'del state["text_branch.position_ids"]')
    _test_file(example_project, CLAP_TEST)
    result = _fails(example_project, "test_own_code.py", *mode)
    line = _line_of(example_project, "clap", 'del state["text_branch.position_ids"]')
    result.stdout.fnmatch_lines(lines(
        "  [buffer_persistence] 1 key: the code at clap.py:"
        f"{line} raised KeyError: 'text_branch.position_ids': it handles the buffer "
        "`text_branch.position_ids`, which the model does not save (persistent=False) and the "
        "checkpoint holds no such key; the loader must not require it",
        "      text_branch.position_ids",
        f"      raised at */example_models/clap.py:{line} in load_ckpt: "
        'del state["text_branch.position_ids"]',
        "fix: in the loader, drop the buffer with state_dict.pop('text_branch.position_ids', "
        "None) (it is absent from checkpoints saved since it became persistent=False)",
    ))


def test_a_loader_that_strips_the_ddp_prefix_one_character_short(example_project, mode):
    _edit(example_project, "clap", 'k[len("module."):]', 'k[len("module"):]')
    _test_file(example_project, CLAP_TEST)
    result = _fails(example_project, "test_own_code.py", *mode)
    result.stdout.fnmatch_lines(lines(
        "checkpoint */epoch_10.pt does not load into CLAP: the load path raised "
        "RuntimeError: Error(s) in loading state_dict for CLAP:* at clap.py:*",
        "  [prefix] * keys: *",
    ))
    assert "Traceback" not in result.stdout.str()


def test_from_pretrained_building_another_weight_norm_layout(example_project, mode):
    _edit(example_project, "vocoder", "model = cls(config)",
          'model = cls(dataclasses.replace(config, weight_norm="legacy"))')
    result = _fails(example_project, "example_models/test_vocoder.py", "-k", "from_pretrained",
                    "-W", "ignore::FutureWarning", "-W", "ignore::UserWarning", *mode)
    line = _line_of(example_project, "vocoder", "model.load_state_dict(torch.load(")
    result.stdout.fnmatch_lines(lines(
        "checkpoint round-trip of Vocoder through 'save_to' failed: RuntimeError: Error(s) in "
        f"loading state_dict for Vocoder: (at vocoder.py:{line})",
        "  [weight_norm_layout] 40 keys: weight_norm layout differs: state_dict the load path "
        "passed parametrized (parametrizations.weight.original0/1) in 20 modules, model legacy "
        "(weight_g/weight_v); torch converts legacy -> parametrized only, never back*",
    ))
    assert "[unexpected]" not in result.stdout.str()  # the model from_pretrained built is read

