"""DCP across world sizes: save with N real processes, load with M (``dcp-2-1``, ``dcp-1-2``).

Each rank is a ``python -m pytest_ckpt.formats.dcp_sharded`` process in a gloo process group
on the CPU. With more than one rank, every tensor whose first dimension allows it is sharded on
dim 0: a DTensor over a CPU device mesh where torch has the public DTensor API (>= 2.4), else a
ShardedTensor (``ChunkShardingSpec``, the type DCP was built on in torch 2.1-2.3). The files
hold real shards, so a load with another world size has to reshard them. The load ranks start
from poisoned tensors; rank 0 gathers the loaded values into one state_dict for the
round-trip's usual comparisons.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, final

from pytest_ckpt.checkpoint.manifest import Manifest
from pytest_ckpt.errors import CheckpointReadError, CkptUsageError

if TYPE_CHECKING:
    import torch

PATTERN = re.compile(r"^dcp-([1-8])-([1-8])$")
TIMEOUT = 300  # seconds per phase


@final
class ShardedDcpFormat:
    """``dcp-N-M``: saved by N processes, loaded by M."""

    suffix = ".dcp"
    memory_mapped = False

    def __init__(self, saves: int, loads: int) -> None:
        self.saves, self.loads = saves, loads
        self.name = f"dcp-{saves}-{loads}"

    def save(self, module: torch.nn.Module, path: Path) -> None:
        import torch

        if sharding_api() is None:
            raise CkptUsageError(
                f"format {self.name!r} needs torch.distributed.tensor (DTensor) or "
                f"torch.distributed._shard (ShardedTensor); torch {torch.__version__} has "
                "neither: use formats=('dcp',) on this torch")

        source = path.with_suffix(".source.pt")
        torch.save({k: v for k, v in module.state_dict().items()
                    if isinstance(v, torch.Tensor)}, source)
        _run_ranks("save", self.saves, source, path)

    def load(self, path: Path) -> dict[str, Any]:
        from pytest_ckpt.formats.torch_zip import load_weights_only

        result = path.with_suffix(".loaded.pt")
        _run_ranks("load", self.loads, path.with_suffix(".source.pt"), path, result)
        loaded: dict[str, Any] = load_weights_only(result)
        return loaded

    def read_manifest(self, path: Path) -> Manifest:
        from pytest_ckpt.formats.dcp import manifest_from_metadata

        return manifest_from_metadata(path)


def _run_ranks(role: str, world: int, source: Path, checkpoint: Path,
               result: Path | None = None) -> None:
    """Start ``world`` rank processes and wait; a failing rank's last lines name the cause."""
    port = _free_port()
    command = [sys.executable, "-m", "pytest_ckpt.formats.dcp_sharded", role,
               "--world", str(world), "--port", str(port), "--source", str(source),
               "--checkpoint", str(checkpoint), "--result", str(result or "")]
    ranks = [subprocess.Popen([*command, "--rank", str(rank)], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for rank in range(world)]
    failures = []
    for rank, process in enumerate(ranks):
        try:
            output, _ = process.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            for other in ranks:
                other.kill()
            raise CheckpointReadError(checkpoint, f"{role} with world size {world}: rank "
                                      f"{rank} did not finish in {TIMEOUT} s") from None
        if process.returncode != 0:
            tail = " | ".join(line for line in output.strip().splitlines()[-3:])
            failures.append(f"rank {rank} exited {process.returncode}: {tail}")
    if failures:
        raise CheckpointReadError(checkpoint, f"{role} with world size {world} failed: "
                                  + "; ".join(failures))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


# -- the rank processes ------------------------------------------------------------------

def has_public_dtensor() -> bool:
    """The public DTensor API (torch >= 2.4); older torch shards with ShardedTensor, the
    type its DCP was built around."""
    try:
        module = importlib.import_module("torch.distributed.tensor")
    except ImportError:
        return False
    return hasattr(module, "distribute_tensor")


def has_sharded_tensor() -> bool:
    try:
        importlib.import_module("torch.distributed._shard.sharded_tensor")
    except ImportError:
        return False
    return True


def sharding_api() -> str | None:
    """How tensors are sharded across ranks on this torch: ``"dtensor"``,
    ``"sharded_tensor"``, or ``None`` when neither is there."""
    if has_public_dtensor():
        return "dtensor"
    return "sharded_tensor" if has_sharded_tensor() else None


def _shard(tensor: torch.Tensor, mesh: Any, world: int) -> Any:
    """``tensor`` sharded on dim 0: ``mesh`` is a DeviceMesh (DTensor), ``"sharded_tensor"``,
    or ``None`` (one rank: the plain tensor)."""
    if mesh is None or tensor.dim() == 0 or tensor.shape[0] < world:
        return tensor
    if mesh == "sharded_tensor":
        return _sharded_tensor(tensor, world)
    api = importlib.import_module("torch.distributed.tensor")
    return api.distribute_tensor(tensor, mesh, [api.Shard(0)])


def _sharded_tensor(tensor: torch.Tensor, world: int) -> Any:
    """A ShardedTensor chunked on dim 0 over the ranks, this rank's chunk copied from
    ``tensor`` (every rank holds the whole of it)."""
    spec = importlib.import_module("torch.distributed._shard.sharding_spec").ChunkShardingSpec(
        dim=0, placements=[f"rank:{rank}/cpu" for rank in range(world)])
    sharded = importlib.import_module("torch.distributed._shard.sharded_tensor").empty(
        spec, *tensor.shape, dtype=tensor.dtype)
    for shard in sharded.local_shards():
        start, size = shard.metadata.shard_offsets[0], shard.metadata.shard_sizes[0]
        shard.tensor.copy_(tensor[start:start + size])
    return sharded


def _gather(value: Any, mesh: Any, rank: int) -> Any:
    """The whole tensor on rank 0 (``None`` elsewhere); a collective for sharded values."""
    import torch

    if mesh == "sharded_tensor":
        sharded_tensor = importlib.import_module("torch.distributed._shard.sharded_tensor")
        if not isinstance(value, sharded_tensor.ShardedTensor):
            return value
        whole = torch.empty(value.size(), dtype=value.dtype) if rank == 0 else None
        value.gather(dst=0, out=whole)
        return whole
    api = importlib.import_module("torch.distributed.tensor") if mesh is not None else None
    if api is None or not isinstance(value, api.DTensor):
        return value
    local = value.redistribute(value.device_mesh, [api.Replicate()]).to_local()
    plain = torch.empty(local.shape, dtype=local.dtype)  # not a (waiting) tensor subclass
    return plain.copy_(local)


def _poisoned(tensor: torch.Tensor) -> torch.Tensor:
    from pytest_ckpt.checkpoint.values import poison_

    fresh = tensor.clone()
    poison_(fresh)
    return fresh


def _rank_main(role: str, rank: int, world: int, port: int, source: Path, checkpoint: Path,
               result: Path) -> None:
    import torch
    import torch.distributed as dist

    from pytest_ckpt.formats.dcp import load_state, save_state

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        mesh: Any = None
        if world > 1:
            mesh = _device_mesh(world) if sharding_api() == "dtensor" else "sharded_tensor"
        state = torch.load(source, weights_only=True)
        if role == "save":
            save_state({key: _shard(value, mesh, world) for key, value in state.items()},
                       checkpoint)
            return
        target = {key: _shard(_poisoned(value), mesh, world) for key, value in state.items()}
        load_state(target, checkpoint)
        gathered = {key: _gather(value, mesh, rank) for key, value in target.items()}
        if rank == 0:
            torch.save(gathered, result)
    finally:
        dist.destroy_process_group()


def _device_mesh(world: int) -> Any:
    """A 1-D CPU mesh over every rank."""
    return importlib.import_module("torch.distributed.device_mesh").DeviceMesh(
        "cpu", list(range(world)))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pytest_ckpt.formats.dcp_sharded")
    parser.add_argument("role", choices=("save", "load"))
    for option in ("--rank", "--world", "--port"):
        parser.add_argument(option, type=int, required=True)
    for option in ("--source", "--checkpoint", "--result"):
        parser.add_argument(option, type=Path, required=True)
    args = parser.parse_args(argv)
    _rank_main(args.role, args.rank, args.world, args.port, args.source, args.checkpoint,
               args.result)
    return 0


if __name__ == "__main__":
    code = main()
    # Leave without running C++ static destructors: gloo's threads, still joinable at
    # interpreter exit, abort the process ("terminate called without an active exception",
    # exit -6) in about one rank start in ten, after the rank's work is done and written.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
