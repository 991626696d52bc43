"""``torch.distributed.checkpoint``: one-process and multi-process (gloo, CPU) round-trips,
manifests read from ``.metadata`` alone, and a crafted ``.metadata`` refused."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn

from pytest_ckpt.errors import CheckpointReadError
from pytest_ckpt.formats import detect_format
from pytest_ckpt.formats.dcp import manifest_from_metadata, save_state
from pytest_ckpt.formats.dcp_sharded import sharding_api


def test_dcp_round_trip_in_one_process(project, mode):
    project.makepyfile(test_d='''
        import pytest
        import torch
        from nets import Net

        @pytest.mark.ckpt_roundtrip(formats=("torch", "dcp"), inputs=lambda: torch.randn(3, 4),
                                    snapshot=False)
        def test_net():
            return Net().eval()
    ''')
    project.runpytest(*mode, "--ckpt-report=r.json").assert_outcomes(passed=1)
    checks = {check["check"] for check in json.loads(
        (project.path / "r.json").read_text())["checks"]}
    assert checks == {"roundtrip[torch]", "roundtrip[dcp]"}


needs_sharding = pytest.mark.skipif(sharding_api() is None,
                                    reason="this torch has neither DTensor nor ShardedTensor")


@needs_sharding
def test_dcp_saved_by_two_processes_loads_in_one_and_the_reverse(project):
    project.makepyfile(test_d='''
        import pytest
        import torch
        from nets import Net

        @pytest.mark.ckpt_roundtrip(formats=("dcp-2-1", "dcp-1-2"), snapshot=False,
                                    inputs=lambda: torch.randn(3, 4))
        def test_net():
            return Net().eval()
    ''')
    result = project.runpytest_subprocess("--ckpt-report=r.json")
    result.assert_outcomes(passed=1)
    report = json.loads((project.path / "r.json").read_text())
    assert {check["check"]: check["outcome"] for check in report["checks"]} == {
        "roundtrip[dcp-2-1]": "passed", "roundtrip[dcp-1-2]": "passed"}


@needs_sharding
def test_a_checkpoint_saved_by_two_processes_holds_one_shard_per_rank(tmp_path):
    from pytest_ckpt.formats import get_format
    from pytest_ckpt.formats.dcp import read_metadata

    model = nn.Linear(3, 4)
    fmt = get_format("dcp-2-1")
    fmt.save(model, tmp_path / "c.dcp")

    chunks = {key: sorted((tuple(chunk.offsets), tuple(chunk.sizes)) for chunk in entry.chunks)
              for key, entry in read_metadata(tmp_path / "c.dcp").state_dict_metadata.items()}
    assert chunks == {"weight": [((0, 0), (2, 3)), ((2, 0), (2, 3))],
                      "bias": [((0,), (2,)), ((2,), (2,))]}
    loaded = fmt.load(tmp_path / "c.dcp")
    assert all(torch.equal(loaded[key], value) for key, value in model.state_dict().items())


@needs_sharding
def test_a_rank_that_fails_is_reported_with_its_output(tmp_path):
    from pytest_ckpt.formats import get_format

    fmt = get_format("dcp-2-1")
    model = nn.Linear(4, 4)
    fmt.save(model, tmp_path / "c.dcp")
    (tmp_path / "c.source.pt").write_bytes(b"not a checkpoint")  # the load ranks read it
    with pytest.raises(CheckpointReadError, match=r"load with world size 1 failed: rank 0 "
                                                  r"exited 1: .*"):
        fmt.load(tmp_path / "c.dcp")


def test_manifest_of_a_dcp_directory_comes_from_metadata_alone(tmp_path):
    path = tmp_path / "ckpt"
    save_state({"w": torch.ones(2, 3), "b": torch.zeros(4, dtype=torch.bfloat16), "step": 3},
               path)
    for data in path.glob("*.distcp"):  # tensor data gone (sizes kept): never read
        data.write_bytes(bytes(data.stat().st_size))
    assert detect_format(path).name == "dcp"
    assert manifest_from_metadata(path).render().splitlines()[1:] == [
        "b bfloat16 [4] tensor", "step object [] extra", "w float32 [2,3] tensor"]


class _Touch:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(self.target),))


def test_a_crafted_metadata_file_is_refused_and_runs_nothing(tmp_path):
    path = tmp_path / "ckpt"
    path.mkdir()
    (path / ".metadata").write_bytes(pickle.dumps(_Touch(tmp_path / "pwned")))
    with pytest.raises(CheckpointReadError) as error:
        manifest_from_metadata(path)
    assert str(error.value) == (
        f"checkpoint {path / '.metadata'} cannot be read: global pathlib.Path.touch is not "
        "part of DCP metadata (refused); nothing from it was executed")
    assert not (tmp_path / "pwned").exists()


def test_show_reads_a_dcp_directory(tmp_path):
    save_state({"layer.weight": torch.ones(8, 8)}, tmp_path / "ckpt")
    result = subprocess.run([sys.executable, "-m", "pytest_ckpt.cli", "show",
                             str(tmp_path / "ckpt")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[:2] == [
        f"{tmp_path / 'ckpt'}: dcp, 1 entries, 64 elements "
        "(header read; tensor data not read or CRC-checked)",
        "container: torch.distributed.checkpoint directory (read from .metadata)"]


def test_assert_manifest_takes_a_dcp_directory(project):
    project.makepyfile(test_d='''
        import torch
        from pytest_ckpt.formats.dcp import save_state
        from nets import Net

        def test_keys(ckpt, tmp_path):
            save_state(Net().state_dict(), tmp_path / "ckpt")
            ckpt.assert_manifest(tmp_path / "ckpt")
    ''')
    project.runpytest("--ckpt-snapshot-update").assert_outcomes(passed=1)
    stored = (project.path / "__snapshots__/test_d/test_keys.manifest.txt").read_text()
    assert "head.weight float32 [2,8] tensor" in stored
    assert "norm.num_batches_tracked int64 [] tensor" in stored
    project.runpytest().assert_outcomes(passed=1)


def test_diff_of_a_dcp_checkpoint_says_what_dcp_load_would_do_silently(tmp_path):
    """A legacy weight_norm checkpoint saved with DCP, and today's parametrized model:
    Module.load_state_dict converts it through torch's pre-hook, dcp.load never does."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        legacy = nn.Sequential(nn.utils.weight_norm(nn.Conv1d(2, 2, 3)), nn.Linear(2, 2))
    state = legacy.state_dict()
    state["extra_head.weight"] = torch.zeros(3, 3)
    save_state(state, tmp_path / "ckpt")
    (tmp_path / "today.py").write_text(
        "from torch import nn\n"
        "def build():\n"
        "    return nn.Sequential(nn.utils.parametrizations.weight_norm(nn.Conv1d(2, 2, 3)),\n"
        "                         nn.Linear(2, 2))\n")
    result = subprocess.run([sys.executable, "-m", "pytest_ckpt.cli", "diff", "ckpt",
                             "today:build"], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    out = result.stdout
    assert "[weight_norm_layout] 2 keys: weight_norm layout differs: checkpoint legacy" in out
    assert ("[unexpected] 3 keys: dcp.load(model.state_dict()) skips checkpoint keys the model "
            "lacks without a word: these are never loaded") in out
    assert ("[not_loaded] 2 keys: DCP never runs load_state_dict pre-hooks; 1 module(s) of the "
            "model have one (0), which Module.load_state_dict would use to convert old keys "
            "(e.g. legacy weight_norm); through dcp.load these stay unloaded") in out
    assert "0.parametrizations.weight.original0" in out


def test_sharded_dcp_on_a_torch_without_a_sharding_api_says_so(project, monkeypatch):
    import pytest_ckpt.formats.dcp_sharded as dcp_sharded

    monkeypatch.setattr(dcp_sharded, "sharding_api", lambda: None)  # as a torch without either
    project.makepyfile(test_d='''
        import pytest
        from nets import Net

        @pytest.mark.ckpt_roundtrip(formats=("dcp-2-1",), snapshot=False)
        def test_net():
            return Net()
    ''')
    result = project.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["ckpt_roundtrip used wrongly in test_d.py::test_net: format "
                                 "'dcp-2-1' needs torch.distributed.tensor (DTensor) or "
                                 "torch.distributed._shard (ShardedTensor); torch * has "
                                 "neither: use formats=('dcp',) on this torch"])
