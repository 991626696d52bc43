"""Issue 17's drift classes as maintainers meet them in their own code (a loader that reads a
path, raises on trouble and returns nothing): the finding kind and the words a user reads (the
cause, the evidence, the remedy), serial and under -n 2."""

from __future__ import annotations

from pathlib import Path

import pytest

import example_models.drift_cases
from example_models.drift_cases import save_sed_checkpoint
from tests.conftest import lines
from tests.test_cli import run

# the models and loaders of each case, as the project under test has them
CASES = Path(example_models.drift_cases.__file__).read_text()

# a CLAP-style model whose audio branch is initialised from a sound-event-detection
# checkpoint: the loader maps 'sed_model.' onto 'audio_branch.'

SLIP_FIX = (
    "fix: the closest correct mapping replaces 'audio_branch..' with 'audio_branch.' (e.g. "
    "{k.replace('audio_branch..', 'audio_branch.', 1): v for k, v in state_dict.items()}); "
    "correct the string or slice your remap uses (it keeps '.' of the old prefix: a slice 1 "
    "character short, key[n:] where key[n+1:] was meant)")


@pytest.fixture
def clap(project):
    project.makepyfile(drift_cases=CASES)
    return project


def test_a_remap_one_character_off_under_strict_false_is_a_slip_with_its_closest_mapping(
        clap, mode):
    clap.makepyfile(test_a='''
        from drift_cases import CLAP, load_sed, save_sed_checkpoint

        def test_init_audio_branch(tmp_path):
            save_sed_checkpoint(tmp_path / "sed.pt")
            load_sed(CLAP(), tmp_path / "sed.pt")
    ''')
    result = clap.runpytest("--ckpt-strict-loads", *mode)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(lines(
        "test_a.py::test_init_audio_branch: load_state_dict(strict=False) into CLAP silently "
        "dropped keys: 0 of 11 tensors changed (called at */drift_cases.py:*)",
        "  [prefix] 7 keys: a key remap that is off by 1 character: the checkpoint's keys start "
        "with 'audio_branch..' where the model's start with 'audio_branch.', so none of these 7 "
        "keys matches a key of the model",
        "      audio_branch..1.num_batches_tracked",
        "*",
        "      7 keys, e.g. audio_branch..0.bias -> audio_branch.0.bias",
        SLIP_FIX,
    ))
    # the text branch the loader never meant to fill is named, not blamed for the slip
    assert "component `text_branch` (4 tensors) of the model is absent" in result.stdout.str()
    assert "component `audio_branch`" not in result.stdout.str()


def test_assert_loads_through_the_slipped_loader_names_every_key_once(clap, mode):
    """The BatchNorm's zero bias and zero running mean hold one value: each is named under
    its own key, none left over as a plain [missing]. (num_batches_tracked is in the finding
    under torch 2.13, which keeps the model's own count; torch 2.1 fills in a 0 that equals
    the saved 0, so by value it reached the model.)"""
    clap.makepyfile(test_a='''
        from drift_cases import CLAP, load_sed, save_sed_checkpoint

        def test_init_audio_branch(ckpt, tmp_path):
            save_sed_checkpoint(tmp_path / "sed.pt")
            ckpt.assert_loads(CLAP(), tmp_path / "sed.pt", load_from=load_sed,
                              allow_missing=["text_branch.*"])
    ''')
    result = clap.runpytest(*mode)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(lines(
        "checkpoint */sed.pt does not load into CLAP as declared",
        "  [prefix] * keys: a key remap that is off by 1 character: *",
        "      audio_branch..1.running_mean",
        "      audio_branch..1.running_var",
        "      audio_branch..{0,1}.bias",
        "      audio_branch..{0,1}.weight",
        "      * keys, e.g. audio_branch..0.bias -> audio_branch.0.bias",
        SLIP_FIX,
    ))
    assert "[missing]" not in result.stdout.str()


def test_diff_names_the_one_branch_whose_shapes_all_match(tmp_path):
    save_sed_checkpoint(tmp_path / "sed.pt")
    done = run("diff", str(tmp_path / "sed.pt"), "example_models.drift_cases:CLAP",
               cwd=Path(__file__).parents[1])
    assert done.returncode == 1, done.stderr
    assert lines(
        "  [missing_component] 4 keys: component `text_branch` (4 tensors) of the model is "
        "absent from the checkpoint (a partial checkpoint, e.g. a fine-tune that saved only "
        "what it trained)",
        "  [rename] 7 keys: sed_model.* in the checkpoint is audio_branch.* in the model (same "
        "shapes and dtypes): rename the attribute back, or map the old keys in the load path",
    ) == lines(*done.stdout.splitlines()[1:3])
    assert "      sed_model -> audio_branch: 7 keys" in done.stdout.splitlines()
    assert "ambiguous" not in done.stdout




@pytest.fixture
def batchnorm(project):
    project.makepyfile(drift_cases=CASES)
    return project


def test_num_batches_tracked_absent_is_told_apart_by_the_saved_batchnorm_version(batchnorm,
                                                                                 mode):
    batchnorm.makepyfile(test_a='''
        import pytest
        import torch
        from drift_cases import batchnorm_net as build, copy_by_hand
        from drift_cases import save_without_count as save_old_checkpoint

        @pytest.mark.parametrize("version", [1, None])
        def test_torch_fills_it(ckpt, tmp_path, version):
            save_old_checkpoint(tmp_path / "bn.pt", version)
            build().load_state_dict(torch.load(tmp_path / "bn.pt"))  # strict torch passes
            ckpt.assert_loads(build(), tmp_path / "bn.pt")
            ckpt.assert_loads(build(), tmp_path / "bn.pt", load_from=copy_by_hand)

        def test_version_2(ckpt, tmp_path):
            save_old_checkpoint(tmp_path / "bn.pt", 2)
            with pytest.raises(RuntimeError, match="Missing key"):
                build().load_state_dict(torch.load(tmp_path / "bn.pt"))
            ckpt.assert_loads(build(), tmp_path / "bn.pt")

        def test_momentum_none(ckpt, tmp_path):
            save_old_checkpoint(tmp_path / "bn.pt", 1, momentum=None)
            ckpt.assert_loads(build(momentum=None), tmp_path / "bn.pt")

        def test_momentum_none_by_hand(ckpt, tmp_path):
            save_old_checkpoint(tmp_path / "bn.pt", 1, momentum=None)
            ckpt.assert_loads(build(momentum=None), tmp_path / "bn.pt", load_from=copy_by_hand)
    ''')
    result = batchnorm.runpytest("-p", "no:randomly", *mode)
    result.assert_outcomes(passed=2, failed=3)
    result.stdout.fnmatch_lines_random(lines(
        "  [buffer_persistence] 1 key: BatchNorm's num_batches_tracked is absent although the "
        "checkpoint's _metadata records these modules at BatchNorm version 2 (saved by a torch "
        "that writes it): torch fills it only for version 1 or no _metadata, so a strict "
        "load_state_dict raises 'Missing key(s) in state_dict'; the key was dropped after "
        "saving (a filter or remap)",
        "fix: keep num_batches_tracked when filtering or remapping the state_dict (or put it "
        "back: state_dict['1.num_batches_tracked'] = torch.tensor(0))",
        "  [buffer_persistence] 1 key: BatchNorm's num_batches_tracked is absent from the "
        "checkpoint and matters here: with momentum=None the running statistics are a "
        "cumulative average over num_batches_tracked batches; the checkpoint predates it "
        "(_metadata version 1 or none): torch fills it with the model's own count (older "
        "torch: 0) and a strict load passes. Training on from this checkpoint restarts the "
        "average (the next batch outweighs every batch the statistics were computed on)",
        "  [buffer_persistence] 1 key: BatchNorm's num_batches_tracked is absent from the "
        "checkpoint and matters here: with momentum=None the running statistics are a "
        "cumulative average over num_batches_tracked batches; the load path copies tensors by "
        "hand (it never calls load_state_dict), so torch's fill for old BatchNorm checkpoints "
        "does not run and the model keeps its own count. Training on*",
        "fix: save num_batches_tracked with the checkpoint, or set it after loading to the "
        "number of batches the statistics were computed on (model.get_submodule('1')."
        "num_batches_tracked.fill_(n)), or build the BatchNorm with a fixed momentum",
    ))
    assert "[missing]" not in result.stdout.str()




@pytest.fixture
def lm(project):
    project.makepyfile(drift_cases=CASES)
    return project


def test_an_untied_consumer_of_a_tied_export_is_told_what_the_file_recorded(lm, mode):
    lm.makepyfile(test_a='''
        from drift_cases import TinyLM, export_tied as export, load_untied

        def test_tied_consumer(ckpt, tmp_path):
            export(tmp_path / "lm.safetensors")
            ckpt.assert_loads(TinyLM(), tmp_path / "lm.safetensors")

        def test_untied_consumer(ckpt, tmp_path):
            export(tmp_path / "lm.safetensors")
            ckpt.assert_loads(TinyLM(tie=False), tmp_path / "lm.safetensors",
                              load_from=load_untied)
    ''')
    result = lm.runpytest("-p", "no:randomly", *mode)
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(lines(
        "checkpoint */lm.safetensors does not load into TinyLM as declared",
        "  [tied_weights] 1 key: not in the checkpoint: they were tied when it was saved, and its "
        "metadata records each as tied to a key it keeps (safetensors.torch.save_model stores "
        "one key per tied group); the model does not tie them (an untied consumer), so a load "
        "leaves them at their initial value",
        "      lm_head.weight",
        "      lm_head.weight: tied to embed.weight when saved",
        "fix: re-tie after loading (model.lm_head.weight = model.embed.weight), or give the "
        "untied model its own copy before loading (state_dict['lm_head.weight'] = "
        "state_dict['embed.weight'].clone()); on export, clone the tied tensor so the file keeps "
        "every key",
    ))
    assert "[missing]" not in result.stdout.str()


def test_a_vocabulary_resize_is_named_with_the_token_count_and_resize_call(lm, mode):
    lm.makepyfile(test_a='''
        import torch
        from drift_cases import TinyLM

        def test_resized(ckpt, tmp_path):
            torch.save(TinyLM(tie=False, vocab=36).state_dict(), tmp_path / "lm.pt")
            ckpt.assert_loads(TinyLM(tie=False), tmp_path / "lm.pt",
                              load=lambda model, state: model.load_state_dict(state))
    ''')
    result = lm.runpytest(*mode)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(lines(
        "  [shape] 2 keys: the vocabulary was resized: 36 tokens in the state_dict the load path "
        "passed, 32 in the model (the state_dict the load path passed has 4 more tokens); "
        "load_state_dict raises 'size mismatch' on the embedding table and every head that "
        "follows it",
        "      embed.weight",
        "      lm_head.weight",
        "      embed.weight: [36, 8] in the * [32, 8] in the model (dim 0: 36 -> 32)",
        "      lm_head.weight: [36, 8] in the * [32, 8] in the model (dim 0: 36 -> 32)",
        "fix: resize the model to 36 tokens before loading (transformers: "
        "model.resize_token_embeddings(36); or build it with vocab_size=36)",
    ))


def test_assign_true_that_changes_the_models_dtype_fails_and_a_destroying_cast_is_counted(
        project, mode):
    project.makepyfile(drift_cases=CASES, test_a='''
        import torch
        from torch import nn
        from drift_cases import Scaled as Net, load_assigned

        def test_assign_keeps_the_checkpoints_dtype(ckpt, tmp_path):
            torch.save(Net().half().state_dict(), tmp_path / "half.pt")
            ckpt.assert_loads(Net(), tmp_path / "half.pt", load_from=load_assigned)

        def test_cast_merges_values(ckpt, tmp_path):
            torch.save(Net().state_dict(), tmp_path / "full.pt")
            ckpt.assert_loads(Net().to(torch.bfloat16), tmp_path / "full.pt")

        def test_rounding_alone_passes(ckpt, tmp_path):
            torch.save(nn.Linear(4, 4).state_dict(), tmp_path / "full.pt")
            ckpt.assert_loads(nn.Linear(4, 4).to(torch.bfloat16), tmp_path / "full.pt")
    ''')
    result = project.runpytest("-p", "no:randomly", *mode)
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines(lines(
        "  [dtype] 3 keys: the load changed the model's dtype (float32 -> float16): "
        "load_state_dict(assign=True) replaced the model's tensors with the checkpoint's, which "
        "keep their own dtype (assign does not cast); the model now computes in the "
        "checkpoint's precision",
        "*",
        "      freqs: float32 before the load, float16 after",
        "*",
        "fix: cast the state_dict to the model's dtype before an assign=True load*",
    ))
    result.stdout.fnmatch_lines(lines(
        "  [dtype] 1 key: the cast to the model's dtype changed values beyond rounding: "
        "load_state_dict casts without a warning",
        "      freqs",
        "      freqs: float32 in the checkpoint, bfloat16 in the model: 4 distinct values become "
        "1 (lossy cast: 8 of 24 significand bits kept, about 2.4 significant digits)",
    ))
    assert "silently casts" not in result.stdout.str()




def test_what_the_projects_own_remap_left_behind_is_named(project, mode):
    project.makepyfile(drift_cases=CASES, test_a='''
        import torch
        from drift_cases import blocks, legacy_norm_names, strip_ddp

        def test_ddp_around_compile(ckpt, tmp_path):
            state = {"module._orig_mod." + k: v for k, v in blocks().state_dict().items()}
            torch.save(state, tmp_path / "c.pt")
            ckpt.assert_loads(blocks(), tmp_path / "c.pt", load_from=strip_ddp)

        def test_old_norm_names(ckpt, tmp_path):
            net = blocks()
            with torch.no_grad():
                for block in net:
                    block.gamma.fill_(0.3)
            state = {k.replace("norm.weight", "norm.gamma").replace("norm.bias", "norm.beta"): v
                     for k, v in net.state_dict().items()}
            torch.save(state, tmp_path / "g.pt")
            ckpt.assert_loads(blocks(), tmp_path / "g.pt", load_from=legacy_norm_names)
    ''')
    result = project.runpytest("-p", "no:randomly", *mode)
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(lines(
        "  [prefix] 10 keys: the load path's remap left '_orig_mod.' on every key: the "
        "checkpoint's keys start with 'module._orig_mod.' (DistributedDataParallel around "
        "torch.compile) and the remap strips only 'module.'",
        "*",
        "fix: strip the whole prefix in the load path: torch.nn.modules.utils."
        "consume_prefix_in_state_dict_if_present(state_dict, 'module._orig_mod.')",
    ))
    result.stdout.fnmatch_lines(lines(
        "  [not_loaded] 2 keys: the load path renamed these keys although the model has them "
        "under the checkpoint's own names (a remap that matches more than it is for, such as a "
        "blanket 'gamma' rename that also hits a parameter of that name): they stay at their "
        "initial value",
        "      {0,1}.gamma",
        "      0.gamma: handed to load_state_dict as 0.weight",
        "      1.gamma: handed to load_state_dict as 1.weight",
        "fix: limit the remap to the keys it is for (e.g. only norm layers' names), or leave "
        "keys alone that the model already has (if key in model.state_dict())",
    ))
    assert "[unexpected]" not in result.stdout.str()


def test_crafted_metadata_in_a_batchnorm_file_is_not_trusted_by_the_default_load(batchnorm,
                                                                                 mode):
    """A file whose state_dict carries a _metadata torch never writes: pytest-ckpt's own load
    (and a project loader that reads the path) give findings, never a traceback through
    pytest-ckpt; the count torch fills is judged as for a state_dict without _metadata."""
    batchnorm.makepyfile(test_a='''
        import torch
        from drift_cases import batchnorm_net, copy_by_hand

        def crafted(path):
            state = batchnorm_net().state_dict()
            del state["1.num_batches_tracked"]
            state._metadata = {"1": 5, "": "x"}
            torch.save(state, path)

        def test_default_load(ckpt, tmp_path):
            crafted(tmp_path / "bn.pt")
            ckpt.assert_loads(batchnorm_net(), tmp_path / "bn.pt")

        def test_project_loader(ckpt, tmp_path):
            crafted(tmp_path / "bn.pt")
            ckpt.assert_loads(batchnorm_net(), tmp_path / "bn.pt", load_from=copy_by_hand)
    ''')
    result = batchnorm.runpytest("-p", "no:randomly", *mode)
    result.assert_outcomes(passed=2)
    assert "pytest_ckpt" not in result.stdout.str()
