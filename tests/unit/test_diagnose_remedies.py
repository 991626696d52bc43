"""Issue 17's interpretations, engine-level on real torch modules: a vocabulary resize, a
kernel change, what a cast loses, which of two same-named branches a rename goes to."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from pytest_ckpt.checkpoint.manifest import Manifest
from pytest_ckpt.diagnosis.engine import diagnose
from pytest_ckpt.diagnosis.signatures import FLOATS, cast_loss
from tests.unit.test_diagnose_classes import findings_for, only


class LM(nn.Module):
    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.tok_embeddings = nn.Embedding(vocab, 8)
        self.norm = nn.LayerNorm(8)
        self.output = nn.Linear(8, vocab)


def test_more_tokens_in_the_model_loads_at_the_checkpoints_size_then_resizes():
    finding = only(findings_for(LM(32).state_dict(), LM(36)))
    assert finding.kind == "shape"
    assert finding.keys == ("output.bias", "output.weight", "tok_embeddings.weight")
    assert finding.hint.startswith("the vocabulary was resized: 32 tokens in the checkpoint, 36 "
                                   "in the model (the model has 4 more tokens)")
    assert finding.fix == ("fix: resize the model to 32 tokens before loading (transformers: "
                           "model.resize_token_embeddings(32); or build it with vocab_size=32), "
                           "then resize to 36 after loading (the 4 new rows start at their "
                           "initial value)")


def test_a_vocabulary_resize_is_recognised_between_two_files_by_the_tables_name():
    finding = only(diagnose(Manifest.from_state_dict(LM(36).state_dict()),
                            Manifest.from_state_dict(LM(35).state_dict())))
    assert finding.hint.startswith("the vocabulary was resized: 36 tokens in the checkpoint, 35 "
                                   "in the model (the checkpoint has 1 more token)")


def test_a_hidden_size_change_is_not_called_a_vocabulary_resize():
    checkpoint = nn.ModuleDict({"embed": nn.Embedding(32, 8)}).state_dict()
    finding = only(findings_for(checkpoint, nn.ModuleDict({"embed": nn.Embedding(32, 16)})))
    assert finding.hint == "shape differs: load_state_dict raises 'size mismatch'"
    assert finding.fix is None


def test_a_kernel_size_change_is_an_architecture_change_no_remap_can_load():
    checkpoint = nn.Sequential(nn.Conv1d(4, 6, 3), nn.Conv1d(6, 6, 1)).state_dict()
    findings = findings_for(checkpoint, nn.Sequential(nn.Conv1d(4, 6, 5), nn.Conv1d(6, 8, 1)))
    kernel, other = findings
    assert kernel.keys == ("0.weight",)
    assert kernel.hint == ("the convolution kernel size differs: an architecture or config "
                           "change (kernel_size), not a key layout; no remap can load these "
                           "tensors")
    assert kernel.details == ("0.weight: [6, 4, 3] in the checkpoint, [6, 4, 5] in the model "
                              "(dim 2: 3 -> 5)",)
    assert kernel.fix is not None and "kernel sizes (its config)" in kernel.fix
    assert other.hint == "shape differs: load_state_dict raises 'size mismatch'"
    assert other.keys == ("1.bias", "1.weight")


@pytest.mark.parametrize(("saved", "built", "said"), [
    (torch.float32, torch.bfloat16, "lossy cast: 8 of 24 significand bits kept, about 2.4 "
                                    "significant digits"),
    (torch.float32, torch.float16, "lossy cast: 11 of 24 significand bits kept, about 3.3 "
                                   "significant digits, values beyond ±65504 become inf"),
    (torch.int64, torch.int32, "lossy cast: values outside the int32 range wrap around"),
    (torch.float16, torch.float32, None),
    (torch.bfloat16, torch.float32, None),
])
def test_what_a_cast_loses_follows_from_the_dtypes(saved, built, said):
    assert cast_loss(str(saved).removeprefix("torch."), str(built).removeprefix("torch.")) == said


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
def test_the_table_of_float_widths_and_limits_is_torchs_own(dtype):
    info = torch.finfo(dtype)
    bits, largest = FLOATS[str(dtype).removeprefix("torch.")]
    assert bits == round(-math.log2(info.eps)) + 1
    assert largest == pytest.approx(info.max, rel=0.01)


class Clap(nn.Module):
    def __init__(self, text_out: int) -> None:
        super().__init__()
        self.audio_branch = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
        self.text_branch = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, text_out))


def test_a_rename_goes_to_the_one_branch_whose_every_shape_matches():
    checkpoint = {"sed_model." + key: value
                  for key, value in nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
                  .state_dict().items()}
    findings = findings_for(checkpoint, Clap(text_out=8))
    rename = next(finding for finding in findings if finding.kind == "rename")
    assert rename.hint.startswith("sed_model.* in the checkpoint is audio_branch.* in the model")
    assert [finding.kind for finding in findings] == ["missing_component", "rename"]


def test_two_branches_that_both_match_every_shape_stay_ambiguous():
    checkpoint = {"sed_model." + key: value
                  for key, value in nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
                  .state_dict().items()}
    findings = findings_for(checkpoint, Clap(text_out=4))
    ambiguous = [finding for finding in findings if "ambiguous" in finding.hint]
    assert ambiguous and ambiguous[0].details == (
        "sed_model could be audio_branch or text_branch",)


def test_a_batchnorm_count_absent_from_a_file_says_when_torch_fills_it():
    state = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).state_dict()
    del state["1.num_batches_tracked"]
    finding = only(findings_for(state, nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))))
    assert finding.kind == "buffer_persistence"
    assert finding.keys == ("1.num_batches_tracked",)
    assert finding.hint.endswith(
        "(BatchNorm's num_batches_tracked: old checkpoints predate it; torch fills it when the "
        "state_dict's _metadata records the module at version 1 or not at all, so a strict load "
        "passes, and raises 'Missing key(s)' for version 2)")
