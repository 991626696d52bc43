"""``ckpt.assert_loads`` on a vocoder export saved after ``remove_weight_norm()`` as
``{'generator': state_dict}``: the file is read, the message gives the g/v relation and the order
of calls that works, and a load path that follows it passes."""

from __future__ import annotations

import pytest

from tests.conftest import lines

VOCODER = '''
import warnings

import torch
from torch import nn
from torch.nn.utils import parametrize

NORMED = ("conv_pre", "ups.0", "ups.1", "conv_post")


def weight_norm(module, norm):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.nn.utils.weight_norm is deprecated
        if norm == "legacy":
            nn.utils.weight_norm(module)
        elif norm == "parametrized":
            nn.utils.parametrizations.weight_norm(module)


def remove_weight_norm(module):
    if parametrize.is_parametrized(module):
        parametrize.remove_parametrizations(module, "weight")
    else:
        nn.utils.remove_weight_norm(module)


class Generator(nn.Module):
    def __init__(self, norm="legacy"):
        super().__init__()
        self.conv_pre = nn.Conv1d(8, 16, 7, padding=3)
        self.ups = nn.ModuleList([nn.ConvTranspose1d(16, 8, 4, 2, padding=1),
                                  nn.ConvTranspose1d(8, 4, 4, 2, padding=1)])
        self.conv_post = nn.Conv1d(4, 2, 7, padding=3)
        for name in NORMED:
            weight_norm(self.get_submodule(name), norm)

    def forward(self, x):
        x = self.conv_pre(x)
        for up in self.ups:
            x = up(torch.relu(x))
        return self.conv_post(x)

    def remove_weight_norm(self):
        for name in NORMED:
            remove_weight_norm(self.get_submodule(name))


def export(path):
    """The maintainer's inference export: weight_norm removed from every conv, then saved."""
    generator = Generator()
    generator.remove_weight_norm()
    torch.save({"generator": generator.state_dict()}, path)


def remove_load_reapply(model, state_dict):
    """The remedy the message gives: remove weight_norm, load the export, re-apply it."""
    norm = "parametrized" if parametrize.is_parametrized(model.conv_pre) else "legacy"
    model.remove_weight_norm()
    model.load_state_dict(state_dict, strict=True)
    for name in NORMED:
        weight_norm(model.get_submodule(name), norm)


def mapped(model, state_dict):
    """The key mapping the message gives: weight_v = weight, weight_g = its norm (dim 0)."""
    state = {}
    for key, value in state_dict.items():
        module, _, name = key.rpartition(".")
        if name == "weight" and module in NORMED:
            state[f"{module}.weight_v"] = value
            state[f"{module}.weight_g"] = torch.norm_except_dim(value, 2, 0)
        else:
            state[key] = value
    model.load_state_dict(state, strict=True)
'''


@pytest.mark.parametrize(("norm", "g", "v", "remove", "apply"), [
    ("legacy", "weight_g", "weight_v", "torch.nn.utils.remove_weight_norm(module)",
     "torch.nn.utils.weight_norm(module, dim=0)"),
    ("parametrized", "parametrizations.weight.original0", "parametrizations.weight.original1",
     "torch.nn.utils.parametrize.remove_parametrizations(module, 'weight')",
     "torch.nn.utils.parametrizations.weight_norm(module, dim=0)"),
])
def test_an_export_after_remove_weight_norm_is_read_and_the_remedy_is_the_order_that_works(
        project, mode, norm, g, v, remove, apply):
    project.makepyfile(vocoder=VOCODER, test_a=f'''
        from vocoder import Generator, export

        def test_export_loads(ckpt, tmp_path):
            export(tmp_path / "g.pt")
            ckpt.assert_loads(Generator({norm!r}), tmp_path / "g.pt")
    ''')
    result = project.runpytest(*mode)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(lines(
        "checkpoint */g.pt does not load into Generator as declared",
        f"  [weight_norm_layout] 4 keys: weight_norm layout differs: checkpoint removed (plain "
        f"weight) in 4 modules, model {norm} (*); the checkpoint is an export made after "
        f"remove_weight_norm(): each plain weight is weight_norm's computed g * v / ||v||; "
        f"re-wrapping it sets {v} (v) = weight and {g} (g) = the norm of weight over every "
        f"dim except 0",
        "      conv_post.weight",
        "      conv_pre.weight",
        "      ups.{0,1}.weight",
        "      modules: conv_post, conv_pre, ups.{0,1}",
        f"      norm dim=0 (torch's default) in conv_post, conv_pre, ups.{{0,1}} (model: e.g. "
        f"conv_pre.{g} [16, 1, 1] for conv_pre.{v} [16, 8, 7])",
        "      ConvTranspose ups.{0,1}: the weight is [in, out/groups, *kernel], so dim 0 "
        "(torch's default) is the input-channel axis; the mapping uses the dim the model's "
        "weight_norm has",
        f"fix: build the model with weight_norm, call {remove} on these modules (a plain "
        f"weight), load the export, then {apply} again if training continues; or map the keys "
        f"in the load path: {v} = weight; {g} = torch.norm_except_dim(weight, 2, 0)",
    ))


def test_a_load_path_that_follows_the_remedy_passes_assert_loads(project, mode):
    project.makepyfile(vocoder=VOCODER, test_a='''
        import pytest
        from vocoder import Generator, export, mapped, remove_load_reapply

        @pytest.mark.parametrize("norm", ["legacy", "parametrized"])
        def test_remove_load_reapply(ckpt, tmp_path, norm):
            export(tmp_path / "g.pt")
            ckpt.assert_loads(Generator(norm), tmp_path / "g.pt", load=remove_load_reapply)

        def test_mapped_keys(ckpt, tmp_path):
            export(tmp_path / "g.pt")
            ckpt.assert_loads(Generator("legacy"), tmp_path / "g.pt", load=mapped)

        def test_plain_model(ckpt, tmp_path):
            export(tmp_path / "g.pt")
            ckpt.assert_loads(Generator(None), tmp_path / "g.pt")
    ''')
    result = project.runpytest(*mode)
    result.assert_outcomes(passed=4)
