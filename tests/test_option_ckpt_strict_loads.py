"""``--ckpt-strict-loads``, the ``ckpt_strict_loads`` ini setting and marker: silent
``load_state_dict(strict=False)`` calls fail the test that made them."""

from __future__ import annotations

import pytest

from tests.conftest import lines

CLAP = '''
import torch
from torch import nn


class CLAP(nn.Module):
    def __init__(self):
        super().__init__()
        self.audio_branch = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 4))
        self.text_branch = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 4))


def remap(state):
    """The hand-written remap of an upstream checkpoint, off by one character."""
    return {k.replace("text_model.", "text_branch_."): v for k, v in state.items()}


def upstream_checkpoint():
    state = CLAP().state_dict()
    return {k.replace("text_branch.", "text_model."): v for k, v in state.items()}


def load(model):
    result = model.load_state_dict(remap(upstream_checkpoint()), strict=False)
    return result
'''

TEST = '''
import torch
from torch import nn
from clap import CLAP, load

MARK
def test_load():
    result = load(CLAP())
    assert len(result.missing_keys) == 4  # the user's code still gets torch's own result
'''


@pytest.fixture
def clap(project):
    project.makepyfile(clap=CLAP)
    return project


def test_a_remap_slip_is_caught_with_the_flag(clap, mode):
    clap.makepyfile(test_a=TEST.replace("MARK", ""))
    clap.runpytest(*mode).assert_outcomes(passed=1)  # off by default
    result = clap.runpytest("--ckpt-strict-loads", *mode)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(lines(
        "test_a.py::test_load: load_state_dict(strict=False) into CLAP silently dropped keys: "
        "4 of 8 tensors changed (called at */clap.py:*)",
        "  [rename] 4 keys: text_branch_.* in the checkpoint is text_branch.* in the model*",
        "      text_branch_.{0,1}.bias",
        "      text_branch_.{0,1}.weight",
        "fix: fix the key mapping, or declare the expected gaps with "
        "@pytest.mark.ckpt_strict_loads(allow_missing=[...], allow_unexpected=[...])",
    ))


def test_the_ini_setting_and_the_marker_turn_it_on(clap):
    clap.makepyfile(test_a=TEST.replace("MARK", "@pytest.mark.ckpt_strict_loads").replace(
        "import torch", "import pytest, torch"))
    clap.runpytest().assert_outcomes(failed=1)
    clap.makepyfile(test_a=TEST.replace("MARK", ""))
    clap.makeini("[pytest]\naddopts = -p no:cacheprovider\nckpt_strict_loads = true\n")
    clap.runpytest().assert_outcomes(failed=1)


def test_declared_gaps_pass(clap):
    clap.makepyfile(test_a=TEST.replace("MARK", (
        "@pytest.mark.ckpt_strict_loads(allow_missing=['text_branch.*'], "
        "allow_unexpected=['text_branch_.*'])")).replace("import torch", "import pytest, torch"))
    clap.runpytest().assert_outcomes(passed=1)


def test_the_guard_leaves_no_patch_behind_even_after_a_failing_test(clap):
    clap.makepyfile(test_a='''
        import pytest, torch
        from torch import nn
        from clap import CLAP, load

        ORIGINAL = nn.Module.load_state_dict

        @pytest.mark.ckpt_strict_loads
        def test_fails_inside():
            assert nn.Module.load_state_dict is not ORIGINAL  # patched while it runs
            load(CLAP())
            raise ValueError("boom")

        def test_after():
            assert nn.Module.load_state_dict is ORIGINAL
    ''')
    result = clap.runpytest("-p", "no:randomly")
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(["*ValueError: boom"])


def test_strict_loads_are_not_touched(clap):
    clap.makepyfile(test_a='''
        import pytest
        from clap import CLAP

        def test_strict():
            model = CLAP()
            model.load_state_dict(CLAP().state_dict())
            with pytest.raises(RuntimeError, match="Missing key"):
                model.load_state_dict({})
    ''')
    clap.runpytest("--ckpt-strict-loads").assert_outcomes(passed=1)


def test_a_slice_one_character_short_is_a_prefix_slip_not_a_partial_checkpoint(clap, mode):
    clap.makepyfile(test_a='''
        from clap import CLAP

        def test_load():
            upstream = {"sed_model." + k[len("audio_branch."):] if k.startswith("audio_branch.")
                        else k: v for k, v in CLAP().state_dict().items()}
            state = {"audio_branch." + k[9:] if k.startswith("sed_model.") else k: v
                     for k, v in upstream.items()}  # key[10:] was meant
            CLAP().load_state_dict(state, strict=False)
    ''')
    result = clap.runpytest("--ckpt-strict-loads", *mode)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(lines(
        "test_a.py::test_load: load_state_dict(strict=False) into CLAP silently dropped keys: "
        "4 of 8 tensors changed (called at */test_a.py:*)",
        "  [prefix] 4 keys: a key remap that is off by 1 character: the checkpoint's keys start "
        "with 'audio_branch..' where the model's start with 'audio_branch.', so none of these 4 "
        "keys matches a key of the model",
        "      4 keys, e.g. audio_branch..0.bias -> audio_branch.0.bias",
        "fix: the closest correct mapping replaces 'audio_branch..' with 'audio_branch.' (e.g. "
        "{k.replace('audio_branch..', 'audio_branch.', 1): v for k, v in state_dict.items()}); "
        "correct the string or slice your remap uses (it keeps '.' of the old prefix: a slice 1 "
        "character short, key[n:] where key[n+1:] was meant)",
    ))
    assert "missing_component" not in result.stdout.str()


def test_a_whole_training_container_is_named_with_its_weights_entry(clap, mode):
    clap.makepyfile(test_a='''
        from clap import CLAP

        def test_load():
            weights = {"clap_model." + k: v for k, v in CLAP().state_dict().items()}
            checkpoint = {"epoch": 3, "state_dict": weights, "optimizer": {}}
            CLAP().load_state_dict(checkpoint, strict=False)
    ''')
    result = clap.runpytest("--ckpt-strict-loads", *mode)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(lines(
        "test_a.py::test_load: load_state_dict(strict=False) into CLAP silently dropped keys: "
        "0 of 8 tensors changed (called at */test_a.py:*)",
        "  [prefix] 8 keys: every key in the checkpoint carries the prefix 'clap_model.'*",
        "  [not_loaded] load_state_dict was given the whole checkpoint (container: "
        "{'state_dict': state_dict}; also epoch (int), optimizer (dict)): its weights sit under "
        "['state_dict'], so nothing matched",
    ))
    assert "missing_component" not in result.stdout.str()


def test_the_checks_own_loads_are_not_the_guards_business(clap, mode):
    clap.makepyfile(test_a='''
        from clap import CLAP, remap, upstream_checkpoint

        def test_declared(ckpt):
            ckpt.assert_loads(CLAP(), upstream_checkpoint(), allow_missing=["text_branch.*"],
                              allow_unexpected=["text_model.*"])

        def test_roundtrip(ckpt):
            ckpt.roundtrip(CLAP(), snapshot=False,
                           load=lambda model, state: model.load_state_dict(state, strict=False))
    ''')
    clap.runpytest("--ckpt-strict-loads", *mode).assert_outcomes(passed=2)
