"""``ckpt.assert_manifest``: the snapshot life cycle, inputs it accepts, and bad input."""

from __future__ import annotations

from tests.conftest import lines, snapshot_files

MANIFEST_TEST = '''
from nets import Net

def test_keys(ckpt):
    ckpt.assert_manifest(Net(head_name=HEAD))
'''


def _write(project, head: str = "head") -> None:
    project.makepyfile(test_a=MANIFEST_TEST.replace("HEAD", repr(head)))


def test_snapshot_life_cycle_create_pass_drift_update_pass(project, mode):
    _write(project)
    project.runpytest(*mode).assert_outcomes(failed=1)
    project.runpytest("--ckpt-snapshot-update", *mode).assert_outcomes(passed=1)
    stored = snapshot_files(project.path)
    assert list(stored) == ["__snapshots__/test_a/test_keys.manifest.txt"]
    snapshot = stored["__snapshots__/test_a/test_keys.manifest.txt"]
    assert "head.weight float32 [2,8] param" in snapshot
    project.runpytest(*mode).assert_outcomes(passed=1)

    _write(project, head="classifier")  # a renamed submodule
    drift = project.runpytest(*mode)
    drift.assert_outcomes(failed=1)
    drift.stdout.fnmatch_lines(lines(
        "manifest differs from snapshot __snapshots__/test_a/test_keys.manifest.txt "
        "(11 entries in the snapshot, 11 in the model)",
        "  [rename] 2 keys: head.* in the snapshot is classifier.* in the model (same shapes and "
        "dtypes): rename the attribute back, or map the old keys in the load path",
        "      head.bias",
        "      head.weight",
        "      head -> classifier: 2 keys",
        "fix: keep published checkpoints loading as the hints say; if this change is intended, "
        "run: pytest --ckpt-snapshot-update 'test_a.py::test_keys'",
    ))
    assert snapshot_files(project.path) == stored  # a failing run never rewrites

    project.runpytest("--ckpt-snapshot-update", *mode).assert_outcomes(passed=1)
    assert "classifier.weight" in snapshot_files(project.path)[
        "__snapshots__/test_a/test_keys.manifest.txt"]
    project.runpytest(*mode).assert_outcomes(passed=1)


def test_layer_keys_are_folded_by_index(project):
    project.makepyfile(test_a='''
        import torch
        from torch import nn

        def make(width):
            return nn.ModuleDict({"layers": nn.ModuleList(nn.Linear(width, width)
                                                          for _ in range(12))})

        def test_keys(ckpt, request):
            width = 4 if request.config.getoption("--ckpt-snapshot-update") else 6
            ckpt.assert_manifest(make(width))
    ''')
    project.runpytest("--ckpt-snapshot-update").assert_outcomes(passed=1)
    result = project.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(lines(
        "  [shape] 24 keys: shape differs: load_state_dict raises 'size mismatch'",
        "      layers.{0..11}.bias",
        "      layers.{0..11}.weight",
        "      layers.0.bias: [4] in the snapshot, [6] in the model (dim 0: 4 -> 6)",
    ))


def test_state_dicts_and_checkpoint_files_have_manifests_too(project):
    project.makepyfile(test_a='''
        import torch
        from safetensors.torch import save_file
        from nets import Net

        def test_state_dict(ckpt):
            ckpt.assert_manifest(Net().state_dict())

        def test_torch_file(ckpt, tmp_path):
            torch.save({"model": Net().state_dict(), "epoch": 3}, tmp_path / "a.pt")
            ckpt.assert_manifest(tmp_path / "a.pt")

        def test_safetensors_file(ckpt, tmp_path):
            save_file(Net().state_dict(), str(tmp_path / "a.safetensors"))
            ckpt.assert_manifest(str(tmp_path / "a.safetensors"))
    ''')
    project.runpytest("--ckpt-snapshot-update").assert_outcomes(passed=3)
    project.runpytest().assert_outcomes(passed=3)
    stored = snapshot_files(project.path)
    state = stored["__snapshots__/test_a/test_state_dict.manifest.txt"]
    assert "norm.num_batches_tracked int64 [] tensor" in state
    # the same tensors, whichever container or file format holds them
    assert stored["__snapshots__/test_a/test_torch_file.manifest.txt"] == state
    assert stored["__snapshots__/test_a/test_safetensors_file.manifest.txt"] == state


def test_corrupt_truncated_and_foreign_files_fail_naming_the_file(project):
    project.makepyfile(test_a='''
        import pytest, torch
        from nets import Net

        def test_truncated(ckpt, tmp_path):
            path = tmp_path / "cut.pt"
            torch.save(Net().state_dict(), path)
            path.write_bytes(path.read_bytes()[:300])
            ckpt.assert_manifest(path)

        def test_not_a_checkpoint(ckpt, tmp_path):
            path = tmp_path / "notes.txt"
            path.write_text("hello")
            ckpt.assert_manifest(path)
    ''')
    result = project.runpytest()
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(lines("checkpoint */cut.pt is corrupt or truncated (*"))
    result.stdout.fnmatch_lines(lines(
        "checkpoint */notes.txt is not a checkpoint: it is neither a torch zip file, "
        "a legacy torch file nor a safetensors file"))


def test_two_unnamed_calls_get_two_snapshots_and_names_are_kept(project, mode):
    project.makepyfile(test_a='''
        from nets import Net

        def test_keys(ckpt):
            ckpt.assert_manifest(Net(hidden=4))
            ckpt.assert_manifest(Net(hidden=6))
            ckpt.assert_manifest(Net(hidden=8), name="wide")
    ''')
    project.runpytest("--ckpt-snapshot-update", *mode).assert_outcomes(passed=1)
    assert sorted(snapshot_files(project.path)) == [
        "__snapshots__/test_a/test_keys.1.manifest.txt",
        "__snapshots__/test_a/test_keys.manifest.txt",
        "__snapshots__/test_a/test_keys[wide].manifest.txt",
    ]
    project.runpytest(*mode).assert_outcomes(passed=1)


def test_tests_whose_sanitised_names_collide_fail_clearly(project, mode):
    project.makepyfile(test_a='''
        import pytest
        from nets import Net

        @pytest.mark.parametrize("variant", ["a/b", "ab"])
        def test_keys(ckpt, variant):
            ckpt.assert_manifest(Net())
    ''')
    result = project.runpytest("--ckpt-snapshot-update", *mode)
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(lines(
        "snapshot name collision: test_a.py::test_keys[a/b] and test_a.py::test_keys[ab] "
        "would share __snapshots__/test_a/test_keys[ab].manifest.txt",
        "fix: give the tests distinct names or pass name=... to assert_manifest",
    ))
    assert snapshot_files(project.path) == {}


def test_wrong_argument_type_is_a_clear_error(project):
    project.makepyfile(test_a='''
        def test_keys(ckpt):
            ckpt.assert_manifest(42)
    ''')
    result = project.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(lines(
        "assert_manifest in test_a.py::test_keys needs an nn.Module, a state_dict or a "
        "checkpoint path, got int"))
