"""Header-only ``pytest-ckpt show`` of multi-GiB checkpoints vs a full load.

Writes one safetensors file and one torch zip file of ``--size-gib`` GiB (float32 tensors of
128 MiB) to a temporary directory, then runs, each in a fresh child process (``--repeat``
times, median): ``pytest-ckpt show FILE`` (``python -m pytest_ckpt.cli show``) and the plain
full load (``safetensors.torch.load_file`` / ``torch.load(weights_only=True)``). Wall time
and the child's peak RSS (``ru_maxrss`` from ``wait4``) are compared as ratios show/full.
Both read a file the page cache already holds (it was just written).
Usage: python benchmarks/bench_show_header.py [--size-gib 3] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TENSOR_MIB = 128
FULL = {
    "safetensors": "import safetensors.torch as s, sys; s.load_file(sys.argv[1])",
    "torch": "import torch, sys; torch.load(sys.argv[1], weights_only=True, map_location='cpu')",
}


def run(command: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB) of one child."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(command)} failed: {process.stderr.read().decode()}")
    return wall, usage.ru_maxrss / 1024


def write_files(directory: Path, size_gib: float) -> dict[str, Path]:
    import safetensors.torch
    import torch

    count = max(1, round(size_gib * 1024 / TENSOR_MIB))
    state = {f"layers.{i}.weight": torch.full((TENSOR_MIB * 2**18,), float(i))
             for i in range(count)}
    paths = {"safetensors": directory / "model.safetensors", "torch": directory / "model.pt"}
    safetensors.torch.save_file(state, str(paths["safetensors"]))
    torch.save(state, paths["torch"])
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-gib", type=float, default=3.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--write", type=Path, help=argparse.SUPPRESS)  # the writer child
    args = parser.parse_args()
    if args.write:
        write_files(args.write, args.size_gib)
        return
    with tempfile.TemporaryDirectory(prefix="ckpt-bench-show-") as name:
        # written by a child: ru_maxrss survives fork+exec, so this process must stay small
        subprocess.run([sys.executable, __file__, "--write", name, "--size-gib",
                        str(args.size_gib)], check=True)
        paths = {"safetensors": Path(name) / "model.safetensors",
                 "torch": Path(name) / "model.pt"}
        print(f"files: {args.size_gib:g} GiB each ({TENSOR_MIB} MiB float32 tensors); "
              f"median of {args.repeat} fresh children")
        print(f"{'format':<12} {'show s':>8} {'full s':>8} {'wall ratio':>10} "
              f"{'show MiB':>9} {'full MiB':>9} {'RSS ratio':>9}")
        for fmt, path in paths.items():
            show = [run([sys.executable, "-m", "pytest_ckpt.cli", "show", str(path)])
                    for _ in range(args.repeat)]
            full = [run([sys.executable, "-c", FULL[fmt], str(path)])
                    for _ in range(args.repeat)]
            show_s, full_s = (statistics.median(w for w, _ in runs) for runs in (show, full))
            show_m, full_m = (statistics.median(m for _, m in runs) for runs in (show, full))
            print(f"{fmt:<12} {show_s:8.2f} {full_s:8.2f} {show_s / full_s:10.3f} "
                  f"{show_m:9.0f} {full_m:9.0f} {show_m / full_m:9.3f}")


if __name__ == "__main__":
    main()
