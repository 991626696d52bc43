"""Print what pytest-ckpt says for each drift class (the README's table is pasted from this).

    python -m example_models.drift_gallery             # every finding in full, and its fix
    python -m example_models.drift_gallery --markdown  # the README's table

The first cases are pairs of real torch modules diagnosed by the engine; the rest are real
pytest runs of a maintainer's test file (their own loader or resume code) and real
``pytest-ckpt diff`` runs (see ``drift_gallery_runs``).
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable

import torch
from torch import nn

from example_models.drift_gallery_runs import CLI_CASES, RUN_CASES, run_cli, run_tests
from pytest_ckpt.checkpoint.facts import ModelFacts
from pytest_ckpt.checkpoint.manifest import Manifest
from pytest_ckpt.diagnosis.engine import diagnose
from pytest_ckpt.diagnosis.findings import fix_for, render_finding

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


def _lm(vocab: int = 32, tie: bool = True) -> nn.Module:
    model = nn.ModuleDict({"embed": nn.Embedding(vocab, 8),
                           "lm_head": nn.Linear(8, vocab, bias=False)})
    if tie:
        model["lm_head"].weight = model["embed"].weight
    return model


def _attention(kind: str) -> nn.Module:
    if kind == "packed":
        return nn.ModuleDict({"attn": nn.MultiheadAttention(8, 2)})
    if kind == "kdim":
        return nn.ModuleDict({"attn": nn.MultiheadAttention(8, 2, kdim=16, vdim=12)})
    return nn.ModuleDict({"attn": nn.ModuleDict({n: nn.Linear(8, 8) for n in (
        "q_proj", "k_proj", "v_proj", "out_proj")})})


def _clap() -> nn.Module:
    return nn.ModuleDict({"audio_branch": nn.Sequential(nn.Conv1d(1, 4, 3), nn.BatchNorm1d(4)),
                          "text_branch": nn.Sequential(nn.Conv1d(1, 4, 3), nn.Linear(4, 8))})


def _sed(prefix: str) -> State:
    sed = nn.Sequential(nn.Conv1d(1, 4, 3), nn.BatchNorm1d(4))
    return {prefix + key: value for key, value in sed.state_dict().items()}


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


def _exported_without_weight_norm() -> State:
    """A vocoder exported after remove_weight_norm(): plain weights."""
    model = _vocoder(_legacy)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for layer in model["ups"]:
            nn.utils.remove_weight_norm(layer)
    return model.state_dict()


def _old_batchnorm() -> State:
    state = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).state_dict()
    del state["1.num_batches_tracked"]
    return state


# (title, checkpoint, model, the tied keys the file's metadata records as left out)
Case = tuple[str, Callable[[], State], Callable[[], nn.Module], dict[str, str]]
CASES: list[Case] = [
    ("weight_norm legacy -> parametrized", lambda: _vocoder(_legacy).state_dict(),
     lambda: _vocoder(nn.utils.parametrizations.weight_norm), {}),
    ("weight_norm export after remove_weight_norm()", _exported_without_weight_norm,
     lambda: _vocoder(_legacy), {}),
    ("spectral_norm legacy -> parametrized", _spectral_legacy,
     lambda: nn.ModuleDict({"disc": nn.utils.parametrizations.spectral_norm(nn.Linear(8, 8))}),
     {}),
    ("DDP prefix", lambda: _prefixed(_unity(), "module."), _unity, {}),
    ("torch.compile prefix", lambda: _prefixed(_unity(), "_orig_mod."), _unity, {}),
    ("remap one character off (key[9:] for key[10:])", lambda: _sed("audio_branch.."),
     _clap, {}),
    ("renamed submodule", lambda: _projector("cv1").state_dict(), lambda: _projector("conv1"),
     {}),
    ("rename decided by shapes (sed_model -> audio_branch, not text_branch)",
     lambda: _sed("sed_model."), _clap, {}),
    ("partial fine-tune checkpoint", lambda: _without(_unity(), "text_encoder", "t2u_model"),
     _unity, {}),
    ("buffer made non-persistent", lambda: _text_branch(True).state_dict(),
     lambda: _text_branch(False), {}),
    ("BatchNorm num_batches_tracked absent", _old_batchnorm,
     lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)), {}),
    ("vocab resized (embedding and LM head)", lambda: _lm(36, tie=False).state_dict(),
     lambda: _lm(32, tie=False), {}),
    ("kernel size changed", lambda: nn.Sequential(nn.Conv1d(4, 6, 3)).state_dict(),
     lambda: nn.Sequential(nn.Conv1d(4, 6, 5)), {}),
    ("fp32 checkpoint, bf16 model", lambda: nn.Linear(8, 8).state_dict(),
     lambda: nn.Linear(8, 8).to(torch.bfloat16), {}),
    ("tied weights dropped by safetensors", lambda: {"embed.weight": torch.zeros(32, 8)}, _lm,
     {}),
    ("tied export (save_model), untied consumer", lambda: {"embed.weight": torch.zeros(32, 8)},
     lambda: _lm(tie=False), {"lm_head.weight": "embed.weight"}),
    ("MultiheadAttention packing", lambda: _attention("packed").state_dict(),
     lambda: _attention("separate"), {}),
    ("MultiheadAttention with kdim/vdim", lambda: _attention("kdim").state_dict(),
     lambda: _attention("separate"), {}),
    ("LayerNorm gamma/beta", _gamma_beta,
     lambda: nn.ModuleDict({"encoder": nn.ModuleDict({"layer_norm": nn.LayerNorm(8)})}), {}),
]


def engine_results() -> list[tuple[str, list[str], str]]:
    """(title, the rendered findings, the fix line) of every engine case."""
    torch.manual_seed(0)
    results = []
    for title, checkpoint, build, ties in CASES:
        model = build()
        findings = diagnose(Manifest.from_state_dict(checkpoint()), Manifest.from_module(model),
                            facts=ModelFacts.from_module(model), recorded_ties=ties)
        shown = [line for finding in findings for line in render_finding(finding)]
        results.append((title, shown, fix_for(findings, "pytest --ckpt-snapshot-update ...",
                                                against_record=False)))
    return results


def all_results() -> list[tuple[str, list[str], str]]:
    return engine_results() + run_tests(RUN_CASES) + run_cli(CLI_CASES)


def markdown(results: list[tuple[str, list[str], str]]) -> str:
    """The README's table: the first line of each finding, and the fix line."""
    rows = ["| Drift class | What pytest-ckpt prints (first line of each finding) | Its fix line |",
            "| --- | --- | --- |"]
    for title, shown, fix in results:
        heads = [line.strip() for line in shown if line.startswith(("  [", "note:"))]
        cells = "<br>".join(_code(head) for head in heads or shown[-1:])
        rows.append(f"| {title} | {cells} | {_code(fix) if fix else ''} |")
    return "\n".join(rows)


def _code(text: str) -> str:
    """A Markdown code span that survives backticks and pipes inside."""
    return "`` " + text.replace("|", "\\|") + " ``"


def main(argv: list[str] | None = None) -> None:
    results = all_results()
    if "--markdown" in (sys.argv[1:] if argv is None else argv):
        print(markdown(results))
        return
    for title, shown, fix in results:
        print(f"## {title}")
        print("\n".join([*shown, fix]))
        print()


if __name__ == "__main__":
    main()
