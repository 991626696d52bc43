"""Each drift class, built from real torch modules (before/after), named by the engine."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from pytest_ckpt.checkpoint.facts import ModelFacts
from pytest_ckpt.checkpoint.manifest import Manifest
from pytest_ckpt.diagnosis.engine import diagnose
from pytest_ckpt.diagnosis.findings import Finding


def findings_for(checkpoint: dict[str, torch.Tensor], model: nn.Module) -> list[Finding]:
    return diagnose(Manifest.from_state_dict(checkpoint), Manifest.from_module(model),
                    facts=ModelFacts.from_module(model))


def only(findings: list[Finding]) -> Finding:
    assert len(findings) == 1, [f.kind for f in findings]
    return findings[0]


def normed(layer: nn.Module, impl: str) -> nn.Module:
    if impl == "legacy":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return nn.utils.weight_norm(layer)
    if impl == "parametrized":
        return nn.utils.parametrizations.weight_norm(layer)
    return layer


LAYERS = {"conv1d": lambda: nn.Conv1d(4, 6, 3),
          "convtranspose1d": lambda: nn.ConvTranspose1d(4, 6, 3),
          "linear": lambda: nn.Linear(4, 6)}


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_legacy_weight_norm_checkpoint_into_parametrized_model_names_the_compat_hook(layer):
    checkpoint = nn.Sequential(*(normed(LAYERS[layer](), "legacy") for _ in range(3)))
    model = nn.Sequential(*(normed(LAYERS[layer](), "parametrized") for _ in range(3)))
    finding = only(findings_for(checkpoint.state_dict(), model))
    assert finding.kind == "weight_norm_layout"
    assert finding.keys == tuple(f"{i}.weight_{s}" for i in range(3) for s in "gv")
    assert finding.hint.startswith("weight_norm layout differs: checkpoint legacy "
                                   "(weight_g/weight_v) in 3 modules, model parametrized")
    assert "converts it inside Module.load_state_dict for 3 of 3 modules" in finding.hint


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_parametrized_checkpoint_into_legacy_model_says_torch_never_converts_back(layer):
    checkpoint = normed(LAYERS[layer](), "parametrized")
    finding = only(findings_for(checkpoint.state_dict(), normed(LAYERS[layer](), "legacy")))
    assert finding.kind == "weight_norm_layout"
    assert finding.keys == ("parametrizations.weight.original0",
                            "parametrizations.weight.original1")
    assert finding.related == ("weight_g", "weight_v")
    assert "never back" in finding.hint


def test_export_after_remove_weight_norm_is_named_as_such():
    finding = only(findings_for(nn.Linear(3, 3).state_dict(),
                                normed(nn.Linear(3, 3), "parametrized")))
    assert finding.kind == "weight_norm_layout"
    assert "checkpoint removed (plain weight)" in finding.hint
    assert "export made after remove_weight_norm()" in finding.hint


def test_legacy_spectral_norm_is_a_parametrization_finding():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        old = nn.utils.spectral_norm(nn.Linear(3, 3))
    finding = only(findings_for(old.state_dict(),
                                nn.utils.parametrizations.spectral_norm(nn.Linear(3, 3))))
    assert finding.kind == "parametrization"
    assert finding.keys == ("weight_orig", "weight_u", "weight_v")
    assert "legacy spectral_norm in the checkpoint and parametrized spectral_norm" in finding.hint


def test_generic_parametrization_against_a_plain_tensor():
    class Symmetric(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.triu() + x.triu(1).transpose(-1, -2)

    model = nn.Linear(3, 3)
    nn.utils.parametrize.register_parametrization(model, "weight", Symmetric())
    finding = only(findings_for(nn.Linear(3, 3).state_dict(), model))
    assert finding.kind == "parametrization"
    assert finding.keys == ("weight",)
    assert finding.related == ("parametrizations.weight.original",)


@pytest.mark.parametrize(("prefix", "origin"), [
    ("module.", "DataParallel / DistributedDataParallel"),
    ("_orig_mod.", "torch.compile"),
    ("module._orig_mod.", "DistributedDataParallel around torch.compile"),
    ("backbone.", None),
])
def test_added_prefix_is_named_with_the_call_that_strips_it(prefix, origin):
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    checkpoint = {prefix + key: value for key, value in model.state_dict().items()}
    finding = only(findings_for(checkpoint, model))
    assert finding.kind == "prefix"
    assert len(finding.keys) == 7
    assert (f"consume_prefix_in_state_dict_if_present(state_dict, '{prefix}')"
            in finding.hint)
    if origin:
        assert origin in finding.hint


def test_model_wrapped_in_dataparallel_is_the_prefix_removed_direction():
    model = nn.Linear(3, 3)
    finding = only(findings_for(model.state_dict(), nn.DataParallel(model)))
    assert finding.kind == "prefix"
    assert "the model's keys carry the prefix 'module.'" in finding.hint


def test_prefix_and_shape_drift_together_are_both_reported():
    old = nn.Embedding(36, 4)
    findings = findings_for({f"module.{k}": v for k, v in old.state_dict().items()},
                            nn.Embedding(32, 4))
    assert [f.kind for f in findings] == ["prefix", "shape"]
    assert findings[1].details == ("module.weight: [36, 4] in the checkpoint, [32, 4] in the "
                                   "model (dim 0: 36 -> 32)",)


def test_renamed_submodule_is_matched_by_structure_shape_and_dtype():
    def projector(name: str) -> nn.Module:
        inner = nn.Module()
        inner.add_module(name, nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 8)))
        return nn.ModuleDict({"projector": inner})

    finding = only(findings_for(projector("cv1").state_dict(), projector("conv1")))
    assert finding.kind == "rename"
    assert finding.hint.startswith("projector.cv1.* in the checkpoint is projector.conv1.* in "
                                   "the model")
    assert finding.related == ("projector.conv1.0.bias", "projector.conv1.0.weight",
                               "projector.conv1.1.bias", "projector.conv1.1.weight")


def test_ambiguous_renames_are_said_to_be_ambiguous_and_not_applied():
    findings = findings_for(nn.ModuleDict({"a": nn.Linear(3, 3), "b": nn.Linear(3, 3)})
                            .state_dict(),
                            nn.ModuleDict({"c": nn.Linear(3, 3), "d": nn.Linear(3, 3)}))
    (rename,) = [f for f in findings if f.kind == "rename"]
    assert rename.keys == ()
    assert rename.details == ("a could be c or d", "b could be c or d")
    assert {f.kind for f in findings} == {"rename", "missing_component", "unexpected"}


def test_partial_checkpoint_reports_one_line_per_absent_component():
    class UnitY(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.speech_encoder = nn.Sequential(*(nn.Linear(4, 4) for _ in range(3)))
            self.text_encoder = nn.Sequential(*(nn.Linear(4, 4) for _ in range(5)))
            self.t2u_model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))

    model = UnitY()
    checkpoint = {k: v for k, v in model.state_dict().items() if k.startswith("speech_encoder")}
    findings = findings_for(checkpoint, model)
    assert [(f.kind, f.hint.split(" of the")[0], len(f.keys)) for f in findings] == [
        ("missing_component", "component `t2u_model` (4 tensors)", 4),
        ("missing_component", "component `text_encoder` (10 tensors)", 10),
    ]


def test_buffer_made_non_persistent_is_named_as_such():
    class TextBranch(nn.Module):
        def __init__(self, persistent: bool) -> None:
            super().__init__()
            self.embed = nn.Embedding(5, 3)
            self.register_buffer("position_ids", torch.arange(5), persistent=persistent)

    finding = only(findings_for(TextBranch(True).state_dict(), TextBranch(False)))
    assert finding.kind == "buffer_persistence"
    assert finding.keys == ("position_ids",)
    assert "non-persistent buffer in the model (persistent=False)" in finding.hint


def test_batchnorm_checkpoint_without_num_batches_tracked():
    old = nn.BatchNorm1d(3).state_dict()
    del old["num_batches_tracked"]
    finding = only(findings_for(old, nn.BatchNorm1d(3)))
    assert finding.kind == "buffer_persistence"
    assert "num_batches_tracked: old checkpoints predate it" in finding.hint


def test_vocab_resize_names_the_dimension():
    finding = only(findings_for(nn.Embedding(36, 8).state_dict(), nn.Embedding(32, 8)))
    assert finding.kind == "shape"
    assert finding.details == ("weight: [36, 8] in the checkpoint, [32, 8] in the model "
                               "(dim 0: 36 -> 32)",)


def test_kernel_size_change_names_the_dimension():
    finding = only(findings_for(nn.Conv1d(4, 4, 5).state_dict(), nn.Conv1d(4, 4, 3)))
    assert finding.details == ("weight: [4, 4, 5] in the checkpoint, [4, 4, 3] in the model "
                               "(dim 2: 5 -> 3)",)


def test_bf16_checkpoint_into_fp32_model_and_back_flags_the_lossy_direction():
    half = nn.Linear(2, 2).to(torch.bfloat16).state_dict()
    assert "lossy cast" not in only(findings_for(half, nn.Linear(2, 2))).details[0]
    lossy = only(findings_for(nn.Linear(2, 2).state_dict(), nn.Linear(2, 2).to(torch.bfloat16)))
    assert lossy.kind == "dtype"
    assert lossy.details[0].endswith("(lossy cast: 8 of 24 significand bits kept, about 2.4 "
                                     "significant digits)")


def test_tied_weight_dropped_by_safetensors_is_a_tied_weights_finding():
    model = nn.ModuleDict({"embed": nn.Embedding(10, 4), "head": nn.Linear(4, 10, bias=False)})
    model["head"].weight = model["embed"].weight
    checkpoint = {"embed.weight": model["embed"].weight.detach().clone()}
    finding = only(findings_for(checkpoint, model))
    assert finding.kind == "tied_weights"
    assert finding.keys == ("head.weight",)
    assert "safetensors stores one key per tied group" in finding.hint


def test_packed_attention_against_separate_projections_is_mha_packing():
    packed = nn.ModuleDict({"attn": nn.MultiheadAttention(8, 2)})
    split = nn.ModuleDict({"attn": nn.ModuleDict(
        {name: nn.Linear(8, 8) for name in ("q_proj", "k_proj", "v_proj", "out_proj")})})
    finding = only(findings_for(packed.state_dict(), split))
    assert finding.kind == "mha_packing"
    assert finding.keys == ("attn.in_proj_weight", "attn.in_proj_bias")
    assert len(finding.related) == 6
    assert "in_proj_weight.chunk(3)" in finding.hint


def test_gamma_beta_are_renamed_only_on_norm_layers():
    model = nn.ModuleDict({"layer_norm": nn.LayerNorm(4), "scale": nn.Linear(4, 4)})
    checkpoint = {"layer_norm.gamma": torch.ones(4), "layer_norm.beta": torch.zeros(4),
                  "scale.gamma": torch.ones(4, 4), "scale.beta": torch.zeros(4)}
    findings = findings_for(checkpoint, model)
    (norm,) = [f for f in findings if f.hint.startswith("norm layer")]
    assert norm.kind == "rename"
    assert norm.keys == ("layer_norm.gamma", "layer_norm.beta")
    assert "scale.gamma" not in {key for f in findings if f is not norm for key in f.related}
    assert not any(f.hint.startswith("norm layer `scale`") for f in findings)


def test_keys_explained_by_a_specific_finding_are_not_repeated_as_missing():
    checkpoint = nn.Sequential(normed(nn.Linear(3, 3), "legacy"), nn.Linear(3, 3))
    model = nn.Sequential(normed(nn.Linear(3, 3), "parametrized"), nn.Linear(3, 3),
                          nn.Linear(3, 3))
    findings = findings_for(checkpoint.state_dict(), model)
    assert [f.kind for f in findings] == ["missing_component", "weight_norm_layout"]
    (component,) = [f for f in findings if f.kind == "missing_component"]
    assert component.keys == ("2.bias", "2.weight")


def test_a_remap_off_by_one_character_is_a_prefix_finding():
    model = nn.ModuleDict({"text_branch": nn.ModuleDict(
        {"embeddings": nn.Linear(3, 3), "encoder": nn.Linear(3, 5)})})
    checkpoint = {key.replace("text_branch.", "text_model"): value
                  for key, value in model.state_dict().items()}
    finding = only(findings_for(checkpoint, model))
    assert finding.kind == "prefix"
    assert finding.hint == ("a key remap that is off: the checkpoint's keys start with "
                            "'text_model' where the model's start with 'text_branch.', so none "
                            "of these 4 keys matches a key of the model")
    assert finding.fix == ("fix: the closest correct mapping replaces 'text_model' with "
                           "'text_branch.' (e.g. {k.replace('text_model', 'text_branch.', 1): v "
                           "for k, v in state_dict.items()}); correct the string or slice your "
                           "remap uses")
    assert finding.keys == ("text_modelembeddings.bias", "text_modelembeddings.weight",
                            "text_modelencoder.bias", "text_modelencoder.weight")
