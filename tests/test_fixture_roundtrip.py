"""``ckpt.roundtrip(model, ...)``: poisoned copies, factories, formats and tied weights."""

from __future__ import annotations

from tests.conftest import lines

TIED_LM = """
from torch import nn


class LM(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.lm_head = nn.Linear(4, 10, bias=False)
        self.lm_head.weight = self.embed.weight

    def forward(self, tokens):
        return self.lm_head(self.embed(tokens))
"""


def test_roundtrip_with_a_poisoned_copy_passes_for_a_sound_model(project, mode):
    project.makepyfile(test_a='''
        import torch
        from nets import Net

        def test_net(ckpt):
            outcomes = ckpt.roundtrip(Net(), formats=("torch", "safetensors"),
                                      inputs=lambda: torch.randn(3, 4), snapshot=False)
            assert [(o.format, o.ok) for o in outcomes] == [("torch", True), ("safetensors", True)]
    ''')
    project.runpytest(*mode).assert_outcomes(passed=1)


def test_poisoned_copy_catches_a_load_that_silently_skips_keys(project):
    project.makepyfile(test_a='''
        from nets import Net

        def drop_norm(model, state):
            model.load_state_dict({k: v for k, v in state.items() if "norm" not in k},
                                  strict=False)

        def test_net(ckpt):
            ckpt.roundtrip(Net(), load=drop_norm, snapshot=False)
    ''')
    result = project.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(lines(
        "checkpoint round-trip of Net through 'torch' failed: not_loaded",
        "  [not_loaded] * keys: still at the target's initial (poisoned) value*",
        "      norm.bias",
    ))


def test_tied_embeddings_round_trip_through_safetensors_with_one_key_per_tied_group(
        project, mode):
    project.makepyfile(lm=TIED_LM, test_a="""
        import torch
        from lm import LM

        def retie(model, state):
            model.load_state_dict(state, strict=False)
            model.lm_head.weight = model.embed.weight

        def test_default_load(ckpt):
            outcomes = ckpt.roundtrip(LM(), factory=LM, formats=("torch", "safetensors"),
                                      inputs=lambda: torch.tensor([[1, 2, 3]]), snapshot=False)
            assert [o.ok for o in outcomes] == [True, True]

        def test_a_load_that_reties(ckpt):
            ckpt.roundtrip(LM(), factory=LM, formats=("torch", "safetensors"), load=retie,
                           inputs=lambda: torch.tensor([[1, 2, 3]]), snapshot=False)
    """)
    project.runpytest(*mode).assert_outcomes(passed=2)


def test_tied_key_dropped_by_safetensors_fails_a_load_into_an_untied_consumer(project):
    project.makepyfile(lm=TIED_LM, test_a="""
        from torch import nn
        from lm import LM

        class UntiedLM(nn.Module):
            def __init__(self):
                super().__init__()
                self.embed = nn.Embedding(10, 4)
                self.lm_head = nn.Linear(4, 10, bias=False)

        def test_lm(ckpt):
            ckpt.roundtrip(LM(), factory=UntiedLM, formats=("safetensors",), snapshot=False,
                           load=lambda model, state: model.load_state_dict(state, strict=False))
    """)
    result = project.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(lines(
        "checkpoint round-trip of LM through 'safetensors' failed: tied_weights",
        "  [tied_weights] 1 key: not in the saved file because it is tied to a key the file "
        "keeps (safetensors stores one key per tied group), and the loaded model does not "
        "re-tie it, so it keeps its initial value",
        "      lm_head.weight",
        "      lm_head.weight: tied to embed.weight in the saved model; the file keeps "
        "embed.weight only, and the loaded model has its own lm_head.weight",
        "fix: re-tie after loading (model.lm_head.weight = model.embed.weight; transformers: "
        "tie_word_embeddings=True), or export every key: clone the tied tensor before "
        "safetensors.torch.save_file",
    ))
    assert "[missing]" not in result.stdout.str()


def test_a_load_path_that_unties_weights_is_reported(project):
    project.makepyfile(lm=TIED_LM, test_a='''
        from torch import nn
        from lm import LM

        def load_untied(model, state):
            model.lm_head.weight = nn.Parameter(state["lm_head.weight"].clone())
            model.load_state_dict(state)

        def test_lm(ckpt):
            ckpt.roundtrip(LM(), factory=LM, load=load_untied, snapshot=False)
    ''')
    result = project.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(lines(
        "checkpoint round-trip of LM through 'torch' failed: tied_weights",
        "  [tied_weights] 2 keys: storage sharing (tied weights) differs",
        "      embed.weight",
        "      lm_head.weight",
    ))


def test_roundtrip_checks_the_manifest_snapshot_by_default(project):
    project.makepyfile(test_a='''
        from nets import Net

        def test_net(ckpt):
            ckpt.roundtrip(Net())
    ''')
    result = project.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["no manifest snapshot for this test yet*"])
    project.runpytest("--ckpt-snapshot-update").assert_outcomes(passed=1)
    project.runpytest().assert_outcomes(passed=1)


def test_roundtrip_of_something_that_is_not_a_module_is_a_usage_error(project):
    project.makepyfile(test_a='''
        def test_net(ckpt):
            ckpt.roundtrip({"w": 1})
    ''')
    result = project.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "ckpt_roundtrip used wrongly in test_a.py::test_net: expected a torch.nn.Module to "
        "round-trip, got dict"])


def test_roundtrip_takes_keyword_inputs_as_a_dict_and_compares_the_outputs(project):
    project.makepyfile(test_a='''
        import torch
        from torch import nn

        class Shifted(nn.Module):
            def __init__(self):
                super().__init__()
                self.lin = nn.Linear(4, 2)
                self.register_buffer("shift", torch.randn(2), persistent=False)

            def forward(self, x):
                return self.lin(x) + self.shift

        def test_shifted(ckpt):
            ckpt.roundtrip(Shifted(), factory=Shifted, inputs={"x": torch.randn(3, 4)},
                           snapshot=False)
    ''')
    result = project.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(lines(
        "checkpoint round-trip of Shifted through 'torch' failed: output",
        "  [output] 1 key: eval-mode outputs on inputs= differ*",
    ))
