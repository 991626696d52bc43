"""A real FSDP ``LOCAL_STATE_DICT`` checkpoint (two gloo ranks on the CPU, saved with
``torch.save``) is shown and diagnosed as FSDP local shards, read without executing its pickle."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

RANK = textwrap.dedent('''
    import os, sys, warnings
    import torch, torch.distributed as dist
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP, StateDictType
    from nets_fsdp import model

    warnings.simplefilter("ignore")
    rank, port, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    net, cpu = model(), torch.device("cpu")
    net[0], net[2] = FSDP(net[0], device_id=cpu), FSDP(net[2], device_id=cpu)
    wrapped = FSDP(net, device_id=cpu)
    with FSDP.state_dict_type(wrapped, StateDictType.LOCAL_STATE_DICT):
        state = wrapped.state_dict()
    if rank == 0:
        torch.save(state, out)
    dist.destroy_process_group()
''')
NETS = textwrap.dedent('''
    import torch

    def model():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2),
                                   torch.nn.LayerNorm(2))
''')


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def fsdp_local(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``local.pt`` saved by rank 0 of a two-rank FSDP run, beside ``nets_fsdp.py``."""
    directory = tmp_path_factory.mktemp("fsdp")
    (directory / "nets_fsdp.py").write_text(NETS)
    (directory / "rank.py").write_text(RANK)
    port = str(free_port())
    ranks = [subprocess.Popen([sys.executable, "rank.py", str(rank), port, "local.pt"],
                              cwd=directory, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for rank in range(2)]
    outputs = [rank.communicate(timeout=300)[0] for rank in ranks]
    if any(rank.returncode for rank in ranks):
        last = next(out for rank, out in zip(ranks, outputs, strict=True) if rank.returncode)
        pytest.skip(f"FSDP does not run on the CPU with this torch: "
                    f"{last.strip().splitlines()[-1]}")
    return directory


def cli(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pytest_ckpt.cli", *args], cwd=directory,
                          capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(directory)})


def test_show_names_the_flat_parameter_shards_of_a_real_fsdp_checkpoint(fsdp_local):
    result = cli(fsdp_local, "show", "local.pt")

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "local.pt: torch, 3 entries, 62 elements "
        "(header read; tensor data not read or CRC-checked)",
        "container: bare state_dict",
        "note: 3 ShardedTensor entries (_flat_param, {0,2}._flat_param): FSDP local (or "
        "sharded) state, one rank's shards; the shapes shown are the whole tensors, and "
        "torch.load(weights_only=True) refuses them",
        "# pytest-ckpt manifest v1: 3 entries, 62 elements",
        "0._flat_param float32 [40] tensor",
        "2._flat_param float32 [18] tensor",
        "_flat_param float32 [4] tensor",
    ]


def test_diff_against_the_model_reports_fsdp_local_shards_not_missing_keys(fsdp_local):
    result = cli(fsdp_local, "diff", "local.pt", "nets_fsdp:model")

    assert result.returncode == 1, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == ("local.pt (A) and nets_fsdp:model (B) differ: 1 finding (3 entries in A, "
                        "6 in B)")
    assert lines[1] == ("  [fsdp_local_shards] 3 keys: FSDP local state: flattened parameter "
                        "shards of 3 wrapped module(s), one slice per rank, not the model's keys "
                        "(6 model keys are inside them); save with FSDP's FULL_STATE_DICT or "
                        "SHARDED_STATE_DICT (or torch.distributed.checkpoint.state_dict."
                        "get_model_state_dict) to get the model's keys")
    assert "[missing]" not in result.stdout
