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
        "  [stale_declaration] allow_missing='vocoder.*' is stale: it matches no tensor the "
        "load left out; remove it from the declaration"))
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


def test_a_file_the_projects_loader_is_given_that_pytest_ckpt_cannot_read(project, mode):
    """load_from= with a truncated file, a zip bomb and a payload: one paragraph each, never
    chained to an earlier read error, and nothing runs."""
    project.makepyfile(test_a='''
        import os
        import zipfile

        import torch
        from torch import nn

        class Evil:
            def __reduce__(self):
                return (os.system, ("touch canary",))

        def loader(model, path):  # a real project's loader: reads a path, returns None
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
            model.load_state_dict(checkpoint["state_dict"])

        def test_truncated(ckpt, tmp_path):
            torch.save({"state_dict": nn.Linear(2, 2).state_dict()}, tmp_path / "x.pt")
            data = (tmp_path / "x.pt").read_bytes()
            (tmp_path / "x.pt").write_bytes(data[: len(data) // 2])
            ckpt.assert_loads(nn.Linear(2, 2), tmp_path / "x.pt", load_from=loader)

        def test_bomb(ckpt, tmp_path):
            with zipfile.ZipFile(tmp_path / "x.pt", "w", zipfile.ZIP_DEFLATED) as archive:
                archive.writestr("archive/data.pkl", b"\\x80\\x02" + b"N" * (64 << 20) + b".")
                archive.writestr("archive/version", "3\\n")
            ckpt.assert_loads(nn.Linear(2, 2), tmp_path / "x.pt", load_from=loader)

        def test_payload(ckpt, tmp_path):
            torch.save({"state_dict": nn.Linear(2, 2).state_dict(), "args": Evil()},
                       tmp_path / "x.pt")
            ckpt.assert_loads(nn.Linear(2, 2), tmp_path / "x.pt", load_from=loader)
    ''')
    result = project.runpytest(*mode)
    result.assert_outcomes(failed=3)
    result.stdout.fnmatch_lines_random(lines(
        "checkpoint */x.pt is corrupt or truncated (its zip directory is missing or damaged*",
        "checkpoint */x.pt is a zip bomb: entry archive/data.pkl inflates from * to * bytes; "
        "refused without inflating it",
        "  [unsafe_pickle] 1 entry: torch.load(weights_only=True) refuses the globals these "
        "entries need; nothing from the file was executed",
    ))
    assert "During handling of the above exception" not in result.stdout.str()
    assert not (project.path / "canary").exists()
