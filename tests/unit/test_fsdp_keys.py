"""FSDP local shards and wrapper segments are named as such, not as generic missing keys."""

from __future__ import annotations

import torch
from torch import nn

from pytest_ckpt.checkpoint.manifest import Manifest
from pytest_ckpt.diagnosis.engine import diagnose
from pytest_ckpt.diagnosis.findings import render_failure


def model() -> nn.Module:
    return nn.ModuleDict({"embed": nn.Embedding(10, 4),
                          "layers": nn.ModuleList(nn.Linear(4, 4) for _ in range(3))})


def local_state_dict() -> dict[str, torch.Tensor]:
    """What FSDP's LOCAL_STATE_DICT holds on one of two ranks, each layer wrapped: one
    flattened shard per wrapped module (key names as FSDP writes them)."""
    state = {f"layers.{i}._fsdp_wrapped_module._flat_param": torch.zeros(10) for i in range(3)}
    state["_fsdp_wrapped_module._flat_param"] = torch.zeros(20)  # the root: embed
    return state


def test_flat_parameter_shards_are_one_finding_and_explain_the_model_keys():
    findings = diagnose(Manifest.from_state_dict(local_state_dict()),
                        Manifest.from_module(model()))
    assert [finding.kind for finding in findings] == ["fsdp_local_shards"]
    assert len(findings[0].keys) == 4
    message = render_failure("checkpoint does not match", findings, "fix: ...")
    assert "[fsdp_local_shards] 4 keys: FSDP local state: flattened parameter shards of 4 " \
           "wrapped module(s), one slice per rank, not the model's keys (7 model keys are " \
           "inside them); save with FSDP's FULL_STATE_DICT" in message
    assert "layers.{0..2}._fsdp_wrapped_module._flat_param" in message
    assert "[missing]" not in message


def test_keys_with_wrapper_segments_are_a_prefix_finding():
    wrapped = {key.replace("layers.1.", "layers.1._fsdp_wrapped_module._checkpoint_wrapped_"
                           "module."): value for key, value in model().state_dict().items()}
    findings = diagnose(Manifest.from_state_dict(wrapped), Manifest.from_module(model()))
    assert [finding.kind for finding in findings] == ["prefix"]
    assert set(findings[0].keys) == {
        "layers.1._fsdp_wrapped_module._checkpoint_wrapped_module.bias",
        "layers.1._fsdp_wrapped_module._checkpoint_wrapped_module.weight"}
    assert set(findings[0].related) == {"layers.1.bias", "layers.1.weight"}
