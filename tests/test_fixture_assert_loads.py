"""``ckpt.assert_loads``: declared partial loads, measured on values."""

from __future__ import annotations

from tests.conftest import lines

UNITY = '''
import torch
from torch import nn


class UnitY(nn.Module):
    def __init__(self):
        super().__init__()
        self.speech_encoder = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8))
        self.text_encoder = nn.Sequential(*(nn.Linear(8, 8) for _ in range(4)))
        self.t2u_model = nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8))


def finetune_checkpoint(path):
    """An ASR fine-tune saves only the part it trained."""
    model = UnitY()
    torch.save({"model": {k: v for k, v in model.state_dict().items()
                          if k.startswith("speech_encoder")}}, path)
'''


def test_declared_partial_checkpoint_passes_and_undeclared_components_are_named(project, mode):
    project.makepyfile(unity=UNITY, test_a='''
        from unity import UnitY, finetune_checkpoint

        def test_declared(ckpt, tmp_path):
            finetune_checkpoint(tmp_path / "ft.pt")
            ckpt.assert_loads(UnitY(), tmp_path / "ft.pt",
                              allow_missing=["text_encoder.*", "t2u_model"])

        def test_undeclared(ckpt, tmp_path):
            finetune_checkpoint(tmp_path / "ft.pt")
            ckpt.assert_loads(UnitY(), tmp_path / "ft.pt")
    ''')
    result = project.runpytest(*mode)
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(lines(
        "checkpoint */ft.pt does not load into UnitY as declared",
        "  [missing_component] 4 keys: component `t2u_model` (4 tensors) of the model is absent "
        "from the checkpoint*",
        "  [missing_component] 8 keys: component `text_encoder` (8 tensors) of the model is "
        "absent from the checkpoint*",
        'fix: if the checkpoint is partial by design, declare it: allow_missing=['
        '"t2u_model.*", "text_encoder.*"]',
    ))


def test_stale_and_over_broad_declarations_fail(project):
    project.makepyfile(unity=UNITY, test_a='''
        from unity import UnitY, finetune_checkpoint

        def test_stale(ckpt, tmp_path):
            finetune_checkpoint(tmp_path / "ft.pt")
            ckpt.assert_loads(UnitY(), tmp_path / "ft.pt",
                              allow_missing=["text_encoder.*", "t2u_model.*", "vocoder.*"])

        def test_over_broad(ckpt, tmp_path):
            finetune_checkpoint(tmp_path / "ft.pt")
            ckpt.assert_loads(UnitY(), tmp_path / "ft.pt", allow_missing=["*"])
    ''')
    result = project.runpytest()
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(lines(
        "  [missing] allow_missing='vocoder.*' is stale: it matches no tensor the load left "
        "out; remove it from the declaration"))
    result.stdout.fnmatch_lines(lines(
        "  [missing] 4 keys: allow_missing='*' is over-broad: it also covers 4 keys the "
        "checkpoint does provide",
        "      speech_encoder.{0,1}.bias",
        "      speech_encoder.{0,1}.weight",
    ))


def test_a_load_path_that_drops_a_branch_is_caught_on_values(project, mode):
    project.makepyfile(unity=UNITY, test_a='''
        from unity import UnitY

        def skip_text(model, state):
            model.load_state_dict({k: v for k, v in state.items()
                                   if not k.startswith("text_encoder.")}, strict=False)

        def test_full_checkpoint_half_loaded(ckpt):
            ckpt.assert_loads(UnitY(), UnitY().state_dict(), load=skip_text)
    ''')
    result = project.runpytest(*mode)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(lines(
        "  [not_loaded] 8 keys: the checkpoint provides these tensors but the load left them "
        "at their initial value*",
        "      text_encoder.{0..3}.bias",
        "      text_encoder.{0..3}.weight",
    ))


def test_position_ids_made_non_persistent_is_a_buffer_persistence_finding(project):
    project.makepyfile(test_a='''
        import torch
        from torch import nn

        class TextBranch(nn.Module):
            def __init__(self, persistent):
                super().__init__()
                self.embed = nn.Embedding(16, 8)
                self.register_buffer("position_ids", torch.arange(16), persistent=persistent)

        def test_old_checkpoint(ckpt):
            ckpt.assert_loads(TextBranch(False), TextBranch(True).state_dict())

        def test_declared(ckpt):
            ckpt.assert_loads(TextBranch(False), TextBranch(True).state_dict(),
                              allow_unexpected=["position_ids"])
    ''')
    result = project.runpytest()
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(lines(
        "  [buffer_persistence] 1 key: a non-persistent buffer in the model (persistent=False) "
        "that the checkpoint still holds*",
        "      position_ids",
    ))
