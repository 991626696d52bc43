"""A model built on the ``meta`` device round-trips without data: keys, shapes, dtypes, ties and
the ``assign=True`` load path are checked, and the run says what was not."""

from __future__ import annotations

from tests.conftest import lines

META_TESTS = '''
import pytest
import torch
from example_models.llama import Llama, LlamaConfig


def llama_7b():
    with torch.device("meta"):
        return Llama(LlamaConfig.llama_7b())


@pytest.mark.ckpt_roundtrip(snapshot=False)
def test_llama_7b_round_trips_on_meta():
    return llama_7b()


def renamed_load(model, state):
    model.load_state_dict({key.replace("layers.", "blocks."): value
                           for key, value in state.items()}, assign=True)


@pytest.mark.ckpt_roundtrip(snapshot=False, load=renamed_load)
def test_a_broken_load_path_fails_on_meta():
    return llama_7b()
'''


def test_meta_round_trip_checks_keys_and_says_what_it_did_not_check(example_project, mode):
    example_project.makepyfile(test_meta=META_TESTS)
    result = example_project.runpytest("test_meta.py", "--ckpt-report=r.json", *mode)
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(lines(
        "checkpoint round-trip of Llama through 'meta' failed: RuntimeError: Error(s) in "
        "loading state_dict for Llama: (at test_meta.py:*)",
        "  [rename] 288 keys: blocks.* in the state_dict the load path passed is layers.* in "
        "the model (same shapes and dtypes): rename the attribute back, or map the old keys in "
        "the load path",
        "      blocks.{0..31}.attention.wk.weight",
        "*pytest-ckpt notes*",
        "test_meta.py::test_a_broken_load_path_fails_on_meta roundtrip[meta]: built on the meta "
        "device: keys, shapes, dtypes, tie groups and the load_state_dict(assign=True) path "
        "checked; values and outputs not checked (no data), no file written",
        "test_meta.py::test_llama_7b_round_trips_on_meta roundtrip[meta]: built on the meta "
        "device: *",
    ))
