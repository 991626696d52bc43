"""Print what pytest-ckpt says for each drift class (the README's table is pasted from this).

    python -m example_models.drift_gallery
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import nn

from pytest_ckpt.checkpoint.facts import ModelFacts
from pytest_ckpt.checkpoint.manifest import Manifest
from pytest_ckpt.diagnosis.engine import diagnose
from pytest_ckpt.diagnosis.findings import render_finding

State = dict[str, torch.Tensor]


def _legacy(layer: nn.Module) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return nn.utils.weight_norm(layer)


def _vocoder(norm: Callable[[nn.Module], nn.Module]) -> nn.Module:
    layers = nn.ModuleList(norm(nn.ConvTranspose1d(8, 8, 4)) for _ in range(12))
    return nn.ModuleDict({"ups": layers})


def _unity() -> nn.Module:
    return nn.ModuleDict({
        "speech_encoder": nn.Sequential(*(nn.Linear(8, 8) for _ in range(2))),
        "text_encoder": nn.Sequential(*(nn.Linear(8, 8) for _ in range(4))),
        "t2u_model": nn.Sequential(*(nn.Linear(8, 8) for _ in range(3)))})


def _text_branch(persistent: bool) -> nn.Module:
    branch = nn.Module()
    branch.embed = nn.Embedding(16, 8)
    branch.register_buffer("position_ids", torch.arange(16), persistent=persistent)
    return nn.ModuleDict({"text_branch": branch})


def _projector(name: str) -> nn.Module:
    inner = nn.Module()
    inner.add_module(name, nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 4)))
    return nn.ModuleDict({"projector": inner})


def _tied() -> nn.Module:
    model = nn.ModuleDict({"embed": nn.Embedding(32, 8), "lm_head": nn.Linear(8, 32, bias=False)})
    model["lm_head"].weight = model["embed"].weight
    return model


def _attention(packed: bool) -> nn.Module:
    if packed:
        return nn.ModuleDict({"attn": nn.MultiheadAttention(8, 2)})
    return nn.ModuleDict({"attn": nn.ModuleDict({n: nn.Linear(8, 8) for n in (
        "q_proj", "k_proj", "v_proj", "out_proj")})})


def _prefixed(model: nn.Module, prefix: str) -> State:
    return {prefix + key: value for key, value in model.state_dict().items()}


def _without(model: nn.Module, *components: str) -> State:
    return {k: v for k, v in model.state_dict().items() if k.split(".")[0] not in components}


def _spectral_legacy() -> State:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return nn.ModuleDict({"disc": nn.utils.spectral_norm(nn.Linear(8, 8))}).state_dict()


def _gamma_beta() -> State:
    return {"encoder.layer_norm.gamma": torch.ones(8), "encoder.layer_norm.beta": torch.zeros(8)}


CASES: list[tuple[str, Callable[[], State], Callable[[], nn.Module]]] = [
    ("weight_norm legacy -> parametrized", lambda: _vocoder(_legacy).state_dict(),
     lambda: _vocoder(nn.utils.parametrizations.weight_norm)),
    ("spectral_norm legacy -> parametrized", _spectral_legacy,
     lambda: nn.ModuleDict({"disc": nn.utils.parametrizations.spectral_norm(nn.Linear(8, 8))})),
    ("DDP prefix", lambda: _prefixed(_unity(), "module."), _unity),
    ("torch.compile prefix", lambda: _prefixed(_unity(), "_orig_mod."), _unity),
    ("renamed submodule", lambda: _projector("cv1").state_dict(), lambda: _projector("conv1")),
    ("partial fine-tune checkpoint", lambda: _without(_unity(), "text_encoder", "t2u_model"),
     _unity),
    ("buffer made non-persistent", lambda: _text_branch(True).state_dict(),
     lambda: _text_branch(False)),
    ("vocab resized", lambda: nn.Embedding(36, 8).state_dict(), lambda: nn.Embedding(32, 8)),
    ("fp32 checkpoint, bf16 model", lambda: nn.Linear(8, 8).state_dict(),
     lambda: nn.Linear(8, 8).to(torch.bfloat16)),
    ("tied weights dropped by safetensors", lambda: {"embed.weight": torch.zeros(32, 8)}, _tied),
    ("MultiheadAttention packing", lambda: _attention(True).state_dict(),
     lambda: _attention(False)),
    ("LayerNorm gamma/beta", _gamma_beta,
     lambda: nn.ModuleDict({"encoder": nn.ModuleDict({"layer_norm": nn.LayerNorm(8)})})),
]


def main() -> None:
    torch.manual_seed(0)
    for title, checkpoint, build in CASES:
        model = build()
        findings = diagnose(Manifest.from_state_dict(checkpoint()), Manifest.from_module(model),
                            facts=ModelFacts.from_module(model))
        print(f"## {title}")
        for finding in findings:
            print("\n".join(render_finding(finding)))
        print()


if __name__ == "__main__":
    main()
