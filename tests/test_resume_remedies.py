"""``ckpt.assert_resumes`` on a real image-classifier trainer (Conv + BatchNorm + Linear,
AdamW, StepLR, its own ``save``/``resume`` with ``torch.save``/``torch.load``) whose resume
path raises: each diagnosis names the cause, the evidence and the one remedy."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch

import example_models.classifier_trainer
from tests.conftest import lines

RNG_SIZE = torch.get_rng_state().numel()  # torch's CPU generator state, in bytes

# the trainer under test, as the project has it
TRAINER = Path(example_models.classifier_trainer.__file__).read_text()


@pytest.fixture
def trainer(project):
    project.makepyfile(trainer=TRAINER)
    return project


def run_trainer(trainer, mode, bug: str, *, outcome: str = "failed"):
    trainer.makepyfile(test_a=f'''
        from trainer import Trainer

        def test_classifier_resumes(ckpt):
            ckpt.assert_resumes(Trainer({bug!r}), steps=6, at=3)
    ''')
    result = trainer.runpytest(*mode)
    result.assert_outcomes(**{outcome: 1})
    if outcome == "failed":
        result.stdout.fnmatch_lines(lines(
            "resumed training does not continue like the uninterrupted run (6 steps, saved and "
            "resumed after step 3)"))
    return result


# -- 3. a scheduler resumed without initial_lr --------------------------------------------

@pytest.mark.parametrize(("bug", "absent", "held"), [
    ("optimizer saved as None", "the file's optimizer entry is None (checkpoint['optimizer'])",
     "global_step, model, optimizer, rng, scheduler"),
    ("optimizer never saved", "the file holds no optimizer state (it was never saved)",
     "global_step, model, rng, scheduler"),
])
def test_a_scheduler_resumed_over_a_file_without_optimizer_state_offers_a_fresh_schedule(
        trainer, mode, bug, absent, held):
    result = run_trainer(trainer, mode, bug)
    result.stdout.fnmatch_lines(lines(
        "  [training_state] the resume path raised KeyError: param 'initial_lr' is not "
        "specified in param_groups[0] when resuming * (resuming after step 3); a scheduler "
        f"built with last_epoch >= 0 needs 'initial_lr' in every param_group, and {absent}, so "
        '"load the optimizer state first" cannot apply',
        "      raised at */trainer.py:* in resume: scheduler = torch.optim.lr_scheduler.StepLR(",
        f"      the checkpoint holds: {held}",
        "fix: save checkpoint['optimizer'] = optimizer.state_dict() and load it before "
        "building the scheduler, or build the scheduler with last_epoch=-1 (start the "
        "schedule fresh) and then load_state_dict(checkpoint['scheduler'])",
    ))
    quoted = next(line for line in result.outlines if "param 'initial_lr'" in line)
    assert "\\n" not in quoted and "load the optimizer state before" not in quoted


# -- 4. a KeyError of the resume code itself ----------------------------------------------

def test_a_param_group_key_torch_never_writes_blames_the_frame_not_the_file(trainer, mode):
    result = run_trainer(trainer, mode, "lr_initial typo")
    result.stdout.fnmatch_lines(lines(
        "  [training_state] resuming after step 3, the code at trainer.py:* raised KeyError: "
        "'lr_initial' looking it up in an optimizer param_group: torch never writes "
        "'lr_initial' there, so the frame shown is the bug, not the file",
        '      raised at */trainer.py:* in resume: group["lr"] = group["lr_initial"] * 0.5 ** '
        '(checkpoint["global_step"] // 2)',
        "      the optimizer state in the file is complete: its one param_group has lr, betas, "
        "eps, weight_decay, amsgrad, *, initial_lr, params",
        'fix: the bug is in the code at trainer.py:* (group["lr"] = group["lr_initial"] * 0.5 '
        '** (checkpoint["global_step"] // 2)): read a key torch writes (the closest one: '
        "'initial_lr')",
    ))
    assert "save and restore everything" not in result.stdout.str()
    assert "save 'lr_initial' in the checkpoint" not in result.stdout.str()


def test_a_step_counter_the_save_writes_under_another_name_is_read_by_that_name(trainer, mode):
    result = run_trainer(trainer, mode, "step saved as step")
    result.stdout.fnmatch_lines(lines(
        "  [training_state] 1 key: resuming after step 3, the code at trainer.py:* raised "
        "KeyError: 'global_step': the checkpoint holds no `global_step` but holds `step` (3): "
        "the save writes it under another name than the resume reads, so the frame shown is "
        "the bug",
        '      raised at */trainer.py:* in resume: return State(model, optimizer, scheduler, '
        'checkpoint["global_step"])',
        "fix: read checkpoint['step'] at trainer.py:* (the name save() writes), or save it as "
        "'global_step': one name on both sides",
    ))


# -- 5. optimizer state matched by position -----------------------------------------------

def test_freezing_batchnorm_before_building_the_optimizer_names_what_left_it(trainer, mode):
    result = run_trainer(trainer, mode, "bn frozen")
    result.stdout.fnmatch_lines(lines(
        "  [training_state] 2 keys: resuming after step 3, optimizer.load_state_dict raised "
        "ValueError: loaded state dict contains a parameter group that doesn't match the size "
        "of optimizer's group: torch matches optimizer state by position, and the resume "
        "builds the optimizer over other parameters than the saved one (bn.weight, bn.bias "
        "left it)",
        "      bn.bias",
        "      bn.weight",
        "      param_group 0: saved 6 parameters, now 4",
        "      the saved state's 6 parameters match the model's named_parameters by shape and "
        "order; left the optimizer: bn.weight, bn.bias (requires_grad=False in the resumed "
        "model)",
        "      raised at */trainer.py:* in resume: "
        'optimizer.load_state_dict(checkpoint["optimizer"])',
        "fix: build the optimizer over the same parameters in the same order as at save "
        "(freeze after loading the optimizer state, or keep frozen params in the group with "
        "requires_grad=False)",
    ))


# -- 6. RNG state inside a resume ---------------------------------------------------------

def _torch_load_defaults_to_weights_only() -> bool:
    numpy = pytest.importorskip("numpy")
    buffer = io.BytesIO()
    torch.save({"rng": numpy.random.get_state()}, buffer)
    buffer.seek(0)
    try:
        torch.load(buffer)
    except Exception:
        return True
    return False


@pytest.mark.parametrize("bug", ["numpy rng saved", "numpy rng saved, torch.load default"])
def test_numpy_rng_state_refused_by_weights_only_quotes_torch_names_globals_and_the_fix_works(
        trainer, mode, bug):
    pytest.importorskip("numpy")
    if bug.endswith("default") and not _torch_load_defaults_to_weights_only():
        pytest.skip("this torch's torch.load defaults to weights_only=False")
    result = run_trainer(trainer, mode, bug)
    result.stdout.fnmatch_lines(lines(
        "  [unsafe_pickle] * entr*: torch.load(weights_only=True) refuses the globals these "
        "entries need; nothing from the file was executed",
        "      ['numpy_rng'][1]: numpy.*_reconstruct",
        "  [training_state] the resume path raised UnpicklingError: weights_only refused it: "
        "Unsupported *numpy.*_reconstruct* (resuming after step 3)",
        "      raised at */trainer.py:* in resume: checkpoint = torch.load(path*)",
        "      torch names GLOBAL numpy.*core.multiarray._reconstruct; the file needs * globals "
        "in all: numpy.*core.multiarray._reconstruct, numpy.dtype, numpy.dtypes.UInt32DType*",
        "      ['numpy_rng'] holds RNG state pickled as objects (numpy.random.get_state() "
        "returns a tuple holding an ndarray)",
        "fix: store plain Python values there: save the RNG state as tensors/lists (state = "
        "numpy.random.get_state(); checkpoint['numpy_rng'] = (state[0], state[1].tolist(), "
        "*state[2:]); numpy.random.set_state accepts it back), or allow exactly these globals: "
        "torch.serialization.add_safe_globals([numpy.*core.multiarray._reconstruct, "
        "numpy.dtype, numpy.dtypes.UInt32DType*]) before torch.load, or with "
        "torch.serialization.safe_globals([*]): torch.load(...)*",
    ))
    out = result.stdout.str()
    assert "\x1b[" not in out and "serialization..." not in out
    if hasattr(torch.serialization, "safe_globals"):  # torch's own advice, quoted whole
        result.stdout.fnmatch_lines(lines(
            "  [training_state] * was not an allowed global by default. Please use "
            "`torch.serialization.add_safe_globals([numpy.*_reconstruct])` or the "
            "`torch.serialization.safe_globals([numpy.*_reconstruct])` context manager *"))
    if bug.endswith("default"):
        result.stdout.fnmatch_lines(lines(
            "      torch.load defaults to weights_only=True since torch 2.6"))
    run_trainer(trainer, mode, "numpy rng saved as lists", outcome="passed")  # the fix applied


def test_torch_rng_state_saved_as_floats_says_it_must_be_a_byte_tensor_and_the_fix_works(
        trainer, mode):
    run_trainer(trainer, mode, "rng saved as floats").stdout.fnmatch_lines(lines(
        "  [training_state] resuming after step 3, the resume path raised TypeError: RNG state "
        f"must be a torch.ByteTensor: the file's ['rng'] holds a list of {RNG_SIZE} floats, so the "
        "RNG state was saved or converted as floats; the RNG state must be a torch.ByteTensor "
        "(uint8) as returned by torch.get_rng_state()",
        '      raised at */trainer.py:* in resume: torch.set_rng_state(torch.tensor('
        'checkpoint["rng"]))',
        "fix: save torch.get_rng_state() as it is (no .float()/.tolist()) and restore it with "
        "torch.set_rng_state(checkpoint['rng']); for files already written: "
        "torch.set_rng_state(torch.tensor(checkpoint['rng'], dtype=torch.uint8))",
    ))
    run_trainer(trainer, mode, "rng saved as floats, restored as uint8", outcome="passed")
