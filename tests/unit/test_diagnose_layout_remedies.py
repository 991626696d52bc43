"""The remedies the layout findings give work: an export made after ``remove_weight_norm()``
(and the reverse), and the q/k/v projections of attention modules packed, kept apart by
``nn.MultiheadAttention`` (kdim/vdim) or as Linear layers. Each remedy is applied as the
finding states it (the key mapping of its fix line is executed on the real tensors; the torch
calls it names are called) and must give the exported model's outputs."""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable

import pytest
import torch
from torch import nn
from torch.nn import functional

from tests.unit.test_diagnose_classes import findings_for, normed, only


def apply_mapping(fix: str, state: dict[str, torch.Tensor],
                  modules: list[str]) -> dict[str, torch.Tensor]:
    """Run the key mapping a fix line states after "in the load path: " (statements such as
    ``a, b, c = x.chunk(3)`` or ``w = torch.cat([a, b, c])`` on keys relative to a module)
    under each of ``modules``; the keys it read and did not write are dropped."""
    statements = fix.split("in the load path: ", 1)[1].split("; ")
    mapped = dict(state)
    for module in modules:
        prefix = f"{module}." if module else ""
        names = {key[len(prefix):] for key in state if key.startswith(prefix)}
        read: set[str] = set()

        def lookup(match: re.Match[str], names: set[str] = names, prefix: str = prefix,
                   read: set[str] = read) -> str:
            parts = match.group(0).split(".")
            for end in range(len(parts), 0, -1):
                name = ".".join(parts[:end])
                if name in names:
                    read.add(prefix + name)
                    return f"S[{prefix + name!r}]" + "".join(f".{p}" for p in parts[end:])
            return match.group(0)

        written = set()
        for statement in statements:
            targets, expression = statement.split(" = ", 1)
            code = re.sub(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*", lookup, expression)
            value = eval(code, {"torch": torch, "S": state})  # the fix line under test
            names_out = [prefix + name.strip() for name in targets.split(",")]
            values = list(value) if len(names_out) > 1 else [value]
            mapped.update(zip(names_out, values, strict=True))
            written.update(names_out)
        for key in read - written:
            del mapped[key]
    return mapped


def called(fix: str, pattern: str) -> Callable[[nn.Module], object]:
    """The torch call a fix line names (``torch.nn.utils....(module...)``), as a function."""
    match = re.search(pattern + r" (torch\.[\w.]+\(module[^)]*\))", fix)
    assert match, fix
    return lambda module: eval(match.group(1), {"torch": torch, "module": module})


# -- weight_norm: an export made after remove_weight_norm() --------------------------------

class Generator(nn.Module):
    """A HiFi-GAN-style generator: Conv1d in and out, ConvTranspose1d upsampling."""

    def __init__(self, norm: str = "plain") -> None:
        super().__init__()
        self.conv_pre = nn.Conv1d(8, 16, 7, padding=3)
        self.ups = nn.ModuleList([nn.ConvTranspose1d(16, 8, 4, 2, padding=1),
                                  nn.ConvTranspose1d(8, 4, 4, 2, padding=1)])
        self.conv_post = nn.Conv1d(4, 2, 7, padding=3)
        for name in self.normed:
            normed(self.get_submodule(name), norm)  # in place

    normed = ("conv_pre", "ups.0", "ups.1", "conv_post")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_pre(x)
        for up in self.ups:
            x = up(functional.leaky_relu(x, 0.1))
        return torch.tanh(self.conv_post(x))


def remove_all(model: nn.Module, remove: Callable[[nn.Module], object]) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.nn.utils.remove_weight_norm is deprecated
        for name in Generator.normed:
            remove(model.get_submodule(name))
    return model


def exported(norm: str) -> tuple[Generator, dict[str, torch.Tensor]]:
    """A vocoder maintainer's export: remove_weight_norm() on every conv, then save."""
    torch.manual_seed(0)
    model = Generator(norm).eval()
    if norm == "legacy":
        remove_all(model, nn.utils.remove_weight_norm)
    else:
        remove_all(model, lambda m: nn.utils.parametrize.remove_parametrizations(m, "weight"))
    return model, {key: value.detach().clone() for key, value in model.state_dict().items()}


AUDIO = torch.randn(1, 8, 20, generator=torch.Generator().manual_seed(1))
G_KEY = {"legacy": "weight_g", "parametrized": "parametrizations.weight.original0"}
V_KEY = {"legacy": "weight_v", "parametrized": "parametrizations.weight.original1"}
CALLS = {"legacy": ("torch.nn.utils.remove_weight_norm(module)",
                    "torch.nn.utils.weight_norm(module, dim=0)"),
         "parametrized": ("torch.nn.utils.parametrize.remove_parametrizations(module, "
                          "'weight')",
                          "torch.nn.utils.parametrizations.weight_norm(module, dim=0)")}


@pytest.mark.parametrize("norm", ["legacy", "parametrized"])
def test_an_export_after_remove_weight_norm_gives_the_g_v_relation_and_the_order_that_works(
        norm):
    _, export = exported(norm)
    finding = only(findings_for(export, Generator(norm)))
    g, v = G_KEY[norm], V_KEY[norm]
    remove, apply = CALLS[norm]
    assert finding.kind == "weight_norm_layout"
    assert finding.keys == ("conv_post.weight", "conv_pre.weight", "ups.0.weight",
                            "ups.1.weight")
    assert finding.hint.endswith(
        "the checkpoint is an export made after remove_weight_norm(): each plain weight is "
        f"weight_norm's computed g * v / ||v||; re-wrapping it sets {v} (v) = weight and "
        f"{g} (g) = the norm of weight over every dim except 0")
    assert finding.details == (
        "modules: conv_post, conv_pre, ups.{0,1}",
        "norm dim=0 (torch's default) in conv_post, conv_pre, ups.{0,1} (model: e.g. "
        f"conv_pre.{g} [16, 1, 1] for conv_pre.{v} [16, 8, 7])",
        "ConvTranspose ups.{0,1}: the weight is [in, out/groups, *kernel], so dim 0 (torch's "
        "default) is the input-channel axis; the mapping uses the dim the model's weight_norm "
        "has")
    assert finding.fix == (
        f"fix: build the model with weight_norm, call {remove} on these modules (a plain "
        f"weight), load the export, then {apply} again if training continues; or map the keys "
        f"in the load path: {v} = weight; {g} = torch.norm_except_dim(weight, 2, 0)")


@pytest.mark.parametrize("norm", ["legacy", "parametrized"])
def test_removing_weight_norm_then_loading_the_export_then_reapplying_gives_its_outputs(norm):
    source, export = exported(norm)
    fix = only(findings_for(export, Generator(norm))).fix or ""
    model = remove_all(Generator(norm).eval(), called(fix, "call"))
    model.load_state_dict(export, strict=True)
    assert torch.equal(model(AUDIO), source(AUDIO))  # inference: the export's exact weights
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in Generator.normed:
            called(fix, "then")(model.get_submodule(name))
    assert sorted(model.state_dict()) == sorted(Generator(norm).state_dict())
    torch.testing.assert_close(model(AUDIO), source(AUDIO), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("norm", ["legacy", "parametrized"])
def test_the_key_mapping_of_the_fix_loads_the_export_strictly_with_its_outputs(norm):
    source, export = exported(norm)
    fix = only(findings_for(export, Generator(norm))).fix or ""
    model = Generator(norm).eval()
    model.load_state_dict(apply_mapping(fix, export, list(Generator.normed)), strict=True)
    torch.testing.assert_close(model(AUDIO), source(AUDIO), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("norm", ["legacy", "parametrized"])
def test_a_weight_normed_checkpoint_into_a_plain_model_says_load_first_then_remove(norm):
    torch.manual_seed(0)
    source = Generator(norm).eval()
    checkpoint = source.state_dict()
    finding = only(findings_for(checkpoint, Generator()))
    g, v = G_KEY[norm], V_KEY[norm]
    remove, apply = CALLS[norm]
    assert finding.kind == "weight_norm_layout"
    assert "remove_weight_norm() on a model built with weight_norm, then load" not in (
        finding.hint)
    assert finding.hint.endswith(
        "the model has a plain weight (built without weight_norm, or remove_weight_norm() was "
        f"called before the load); the plain weight is torch._weight_norm({v}, {g}, 0): load "
        "into the model built with weight_norm first, then remove it")
    assert finding.fix == (
        f"fix: build the model with {apply} on these modules, load the checkpoint, then call "
        f"{remove} (load first, then remove); or map the keys in the load path: weight = "
        f"torch._weight_norm({v}, {g}, 0)")
    mapped = Generator().eval()
    mapped.load_state_dict(apply_mapping(finding.fix, checkpoint, list(Generator.normed)),
                           strict=True)
    assert torch.equal(mapped(AUDIO), source(AUDIO))
    ordered = Generator(norm).eval()
    ordered.load_state_dict(checkpoint, strict=True)
    remove_all(ordered, called(finding.fix, "then call"))
    assert torch.equal(ordered(AUDIO), source(AUDIO))


def test_the_norm_dim_is_read_from_the_model_not_assumed():
    torch.manual_seed(0)
    source = nn.Linear(4, 6)
    export = {key: value.detach().clone() for key, value in source.state_dict().items()}
    model = nn.utils.parametrizations.weight_norm(nn.Linear(4, 6), dim=1)
    finding = only(findings_for(export, model))
    assert finding.details[1] == (
        "norm dim=1 in <root> (model: e.g. parametrizations.weight.original0 [1, 4] for "
        "parametrizations.weight.original1 [6, 4])")
    assert (finding.fix or "").endswith("parametrizations.weight.original0 = "
                                        "torch.norm_except_dim(weight, 2, 1)")
    model.load_state_dict(apply_mapping(finding.fix or "", export, [""]), strict=True)
    x = torch.randn(3, 4)
    torch.testing.assert_close(model(x), source(x), rtol=1e-5, atol=1e-6)


# -- MultiheadAttention: packed, kdim/vdim, separate Linear layers --------------------------

class SeparateAttention(nn.Module):
    """HF/fairseq-style attention: one Linear per projection (batch first)."""

    def __init__(self, embed_dim: int = 8, heads: int = 2, kdim: int | None = None,
                 vdim: int | None = None) -> None:
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.k_proj = nn.Linear(kdim or embed_dim, embed_dim)
        self.v_proj = nn.Linear(vdim or embed_dim, embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)

    def forward(self, query: torch.Tensor, key: torch.Tensor,
                value: torch.Tensor) -> torch.Tensor:
        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.unflatten(-1, (self.heads, -1)).transpose(1, 2)

        out = functional.scaled_dot_product_attention(
            heads(self.q_proj(query)), heads(self.k_proj(key)), heads(self.v_proj(value)))
        return self.out_proj(out.transpose(1, 2).flatten(2))


class Encoder(nn.Module):
    def __init__(self, attn: nn.Module) -> None:
        super().__init__()
        self.attn = attn

    def forward(self, query: torch.Tensor, key: torch.Tensor,
                value: torch.Tensor) -> torch.Tensor:
        if isinstance(self.attn, nn.MultiheadAttention):
            return self.attn(query, key, value, need_weights=False)[0]
        return self.attn(query, key, value)


def model_with(attn: nn.Module) -> nn.Module:
    return nn.ModuleDict({"encoder": Encoder(attn)}).eval()


def mha(kdim: int | None = None, vdim: int | None = None) -> nn.MultiheadAttention:
    return nn.MultiheadAttention(8, 2, kdim=kdim, vdim=vdim, batch_first=True)


def outputs(model: nn.Module, kdim: int = 8, vdim: int = 8) -> torch.Tensor:
    generator = torch.Generator().manual_seed(2)
    inputs = [torch.randn(2, 5, size, generator=generator) for size in (8, kdim, vdim)]
    with torch.no_grad():
        return model["encoder"](*inputs)


SHAPES = {
    "packed": ("encoder.attn.in_proj_weight [24, 8] ([3E, E], E=8, rows q, k, v), "
               "encoder.attn.in_proj_bias [24] ([3E]: q, k, v)"),
    "separate": ("encoder.attn.q_proj_weight [8, 8] ([E, E]), encoder.attn.k_proj_weight "
                 "[8, 16] ([E, kdim], kdim=16), encoder.attn.v_proj_weight [8, 12] ([E, vdim], "
                 "vdim=12), encoder.attn.in_proj_bias [24] ([3E]: q, k, v)"),
    "linear": "encoder.attn.q_proj.weight [8, 8], encoder.attn.k_proj.weight [8, {k}], "
              "encoder.attn.v_proj.weight [8, {v}], encoder.attn.q_proj.bias [8], "
              "encoder.attn.k_proj.bias [8], encoder.attn.v_proj.bias [8]",
}
SAID = {"packed": "packs q, k, v into one in_proj_weight (nn.MultiheadAttention)",
        "separate": "keeps q_proj_weight, k_proj_weight, v_proj_weight apart "
                    "(nn.MultiheadAttention with kdim/vdim != embed_dim; the bias stays packed "
                    "in in_proj_bias)",
        "linear": "has separate q_proj, k_proj, v_proj Linear layers"}
ATTENTION = {  # checkpoint layout, model layout: (checkpoint, model, remedy words, mapping)
    ("packed", "linear"): (
        lambda: mha(), lambda: SeparateAttention(),
        "split in_proj_weight.chunk(3) and in_proj_bias.chunk(3) into q, k, v (in this order)",
        "q_proj.weight, k_proj.weight, v_proj.weight = in_proj_weight.chunk(3); "
        "q_proj.bias, k_proj.bias, v_proj.bias = in_proj_bias.chunk(3)"),
    ("linear", "packed"): (
        lambda: SeparateAttention(), lambda: mha(),
        "concatenate q, k, v (in this order) with torch.cat into in_proj_weight",
        "in_proj_weight = torch.cat([q_proj.weight, k_proj.weight, v_proj.weight]); "
        "in_proj_bias = torch.cat([q_proj.bias, k_proj.bias, v_proj.bias])"),
    ("separate", "linear"): (
        lambda: mha(16, 12), lambda: SeparateAttention(kdim=16, vdim=12),
        "rename the three weights, and split in_proj_bias.chunk(3) into q, k, v",
        "q_proj.weight = q_proj_weight; k_proj.weight = k_proj_weight; v_proj.weight = "
        "v_proj_weight; q_proj.bias, k_proj.bias, v_proj.bias = in_proj_bias.chunk(3)"),
    ("linear", "separate"): (
        lambda: SeparateAttention(kdim=16, vdim=12), lambda: mha(16, 12),
        "rename the three weights, and concatenate the q, k, v biases into in_proj_bias",
        "q_proj_weight = q_proj.weight; k_proj_weight = k_proj.weight; v_proj_weight = "
        "v_proj.weight; in_proj_bias = torch.cat([q_proj.bias, k_proj.bias, v_proj.bias])"),
}


def side(layout: str, kdim: int) -> str:
    return SHAPES[layout].format(k=kdim, v=12 if kdim == 16 else 8)


@pytest.mark.parametrize(("old", "new"), sorted(ATTENTION))
def test_the_qkv_mapping_the_hint_gives_loads_strictly_with_equal_outputs(old, new):
    make_old, make_new, words, mapping = ATTENTION[(old, new)]
    torch.manual_seed(0)
    source = model_with(make_old())
    checkpoint = source.state_dict()
    finding = only(findings_for(checkpoint, model_with(make_new())))
    kdim = 16 if "separate" in (old, new) else 8
    assert finding.kind == "mha_packing"
    assert finding.hint == (f"`encoder.attn`: the checkpoint {SAID[old]}, the model "
                            f"{SAID[new]}; {words}")
    assert finding.details == (f"checkpoint: {side(old, kdim)}", f"model: {side(new, kdim)}")
    assert finding.fix == f"fix: map the keys of `encoder.attn` in the load path: {mapping}"
    model = model_with(make_new())
    model.load_state_dict(apply_mapping(finding.fix, checkpoint, ["encoder.attn"]),
                          strict=True)
    sizes = (16, 12) if kdim == 16 else (8, 8)
    torch.testing.assert_close(outputs(model, *sizes), outputs(source, *sizes),
                               rtol=1e-5, atol=1e-6)


def test_a_packed_checkpoint_into_a_kdim_vdim_attention_says_the_packing_cannot_apply():
    torch.manual_seed(0)
    source = model_with(mha())
    finding = only(findings_for(source.state_dict(), model_with(mha(16, 12))))
    assert finding.kind == "mha_packing"
    assert "chunk(3)" not in finding.hint + (finding.fix or "")
    assert finding.keys == ("encoder.attn.in_proj_weight",)
    assert finding.related == ("encoder.attn.k_proj_weight", "encoder.attn.q_proj_weight",
                               "encoder.attn.v_proj_weight")
    assert finding.hint == (
        f"`encoder.attn`: the checkpoint {SAID['packed']}, the model {SAID['separate']}; "
        "their sizes differ (embed_dim, kdim, vdim: 8, 8, 8 in the checkpoint, 8, 16, 12 in "
        "the model), so the projections cannot be mapped: the attention's configuration "
        "changed")
    assert finding.details == (f"checkpoint: {side('packed', 8)}",
                               f"model: {side('separate', 16)}")
    assert finding.fix == (
        "fix: build `encoder.attn` with the checkpoint's sizes (embed_dim=8, kdim=8, vdim=8; "
        "nn.MultiheadAttention packs q, k, v when kdim == vdim == embed_dim), or retrain its "
        "projections")
    rebuilt = model_with(nn.MultiheadAttention(8, 2, kdim=8, vdim=8, batch_first=True))
    rebuilt.load_state_dict(source.state_dict(), strict=True)  # the fix, followed
    assert torch.equal(outputs(rebuilt), outputs(source))


def test_a_root_attention_is_named_by_its_class_and_layers_are_folded_into_one_finding():
    root = only(findings_for(mha().state_dict(), SeparateAttention()))
    assert root.hint.startswith("the root MultiheadAttention: the checkpoint packs q, k, v")
    assert (root.fix or "").startswith("fix: map the keys of the root MultiheadAttention in "
                                       "the load path: q_proj.weight, k_proj.weight, "
                                       "v_proj.weight = in_proj_weight.chunk(3)")
    assert "<root>" not in root.hint + (root.fix or "")
    layers = only(findings_for(nn.ModuleList(model_with(mha()) for _ in range(3)).state_dict(),
                               nn.ModuleList(model_with(SeparateAttention())
                                             for _ in range(3))))
    assert layers.kind == "mha_packing"
    assert layers.hint.startswith("`{0..2}.encoder.attn`: the checkpoint packs q, k, v")
    assert len(layers.keys) == 6 and len(layers.related) == 18
