"""Cost of ``run_roundtrip`` (what ``@pytest.mark.ckpt_roundtrip`` runs) against a plain
``torch.save`` -> ``torch.load(weights_only=True)`` -> ``torch.equal`` round-trip.

State: ``--size-mib`` MiB of bias-free 4096x4096 float32 ``nn.Linear`` layers. Each run is a
fresh child; peak RSS = VmHWM minus VmHWM after ``import torch`` (before the state is built,
so the state counts once). ``anon`` = peak RssAnon sampled every 2 ms (leaves out mmapped file
pages, which VmHWM counts). ``cpu`` = the child's CPU time over the timed section.

Modes: ``baseline``; ``ckpt`` with a target factory building a second model (as the marker
does, by calling the test again); ``ckpt-deepcopy`` with ``make_target=None``; ``pytest-torch``
(the peer's ``assert_checkpoint_roundtrip``: an in-memory buffer, outputs compared), when that
package is installed, else skipped with a line saying so.
Usage: python benchmarks/bench_roundtrip.py [--size-mib 1024] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

MODES = ("baseline", "ckpt", "ckpt-deepcopy")
PEER = "pytest-torch"  # pytest-torch's assert_checkpoint_roundtrip, when installed (optional)


def peer_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("pytest_torch") is not None
TARGET_WALL, TARGET_RSS = 1.10, 2.0
MIB = 1 << 20


def status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise KeyError(field)


class AnonPeak(threading.Thread):
    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak, self.done = status_kib("RssAnon"), threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.002):
            self.peak = max(self.peak, status_kib("RssAnon"))


def build(size_mib: int) -> Any:
    from torch import nn

    dim = 4096 if size_mib % 64 == 0 else math.isqrt(size_mib * MIB // 4)
    layers = max(1, round(size_mib * MIB / (4 * dim * dim)))
    return nn.Sequential(*(nn.Linear(dim, dim, bias=False) for _ in range(layers)))


def child(mode: str, size_mib: int, directory: Path) -> dict[str, Any]:
    import torch

    from pytest_ckpt.checks.roundtrip import run_roundtrip
    from pytest_ckpt.checks.roundtrip_format import RoundtripSpec

    base_hwm, base_anon = status_kib("VmHWM"), status_kib("RssAnon")
    torch.manual_seed(0)
    model = build(size_mib)
    state = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    sampler = AnonPeak()
    sampler.start()
    factory_s = 0.0

    def make_target() -> Any:
        nonlocal factory_s
        start = time.perf_counter()
        target = build(size_mib)
        factory_s += time.perf_counter() - start
        return target

    start, cpu_start = time.perf_counter(), time.process_time()
    if mode == "baseline":
        path = directory / "baseline.pt"
        torch.save(model.state_dict(), path)
        sd = torch.load(path, weights_only=True)
        ok = all(torch.equal(sd[k], v) for k, v in model.state_dict().items())
    elif mode == PEER:  # the peer round-trips through an in-memory buffer, compares outputs
        from pytest_torch.checkpoint import assert_checkpoint_roundtrip

        width = next(model.parameters()).shape[1]
        assert_checkpoint_roundtrip(make_target, torch.randn(1, width), model=model)
        ok = True
    else:
        outcomes = run_roundtrip(model, make_target if mode == "ckpt" else None,
                                 RoundtripSpec(formats=("torch",)), directory)
        ok = all(outcome.ok for outcome in outcomes)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    sampler.done.set()
    sampler.join()
    return {"wall": wall, "cpu": cpu, "factory": factory_s, "state": state, "ok": ok,
            "peak": (status_kib("VmHWM") - base_hwm) * 1024,
            "anon": (sampler.peak - base_anon) * 1024}


def run_child(mode: str, size_mib: int, root: Path) -> dict[str, Any]:
    directory = Path(tempfile.mkdtemp(prefix=f"{mode}-", dir=root))
    try:
        done = subprocess.run([sys.executable, __file__, "--child", mode, "--size-mib",
                               str(size_mib), "--dir", str(directory)],
                              capture_output=True, text=True)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    if done.returncode:
        raise SystemExit(f"{mode} child failed:\n{done.stderr}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="state size (default 1024)")
    parser.add_argument("--repeat", type=int, default=3, help="children per mode (default 3)")
    parser.add_argument("--child", choices=(*MODES, PEER), help=argparse.SUPPRESS)
    parser.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.child:
        print(json.dumps(child(options.child, options.size_mib, options.dir)))
        return 0
    modes = (*MODES, PEER) if peer_installed() else MODES
    if not peer_installed():
        print(f"{PEER} arm skipped: pytest-torch is not installed (pip install pytest-torch, "
              "with a constraints file pinning this torch)")
    runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in modes}
    with tempfile.TemporaryDirectory(prefix="ckpt-bench-", dir="/tmp") as root:
        for index in range(options.repeat):
            shift = index % len(modes)
            for mode in modes[shift:] + modes[:shift]:  # rotate the order
                runs[mode].append(run_child(mode, options.size_mib, Path(root)))
    size = runs["baseline"][0]["state"]

    def med(mode: str, key: str, per: float = 1.0) -> float:
        return float(statistics.median(run[key] for run in runs[mode])) / per

    def verdict(mode: str, value: float, target: float) -> str:
        return "ref" if mode == "baseline" else ("ok" if value <= target else "MISS")

    print(f"state S = {size / MIB:.0f} MiB float32, {options.repeat} fresh children per mode "
          f"(medians); targets: wall ratio <= {TARGET_WALL}, peak RSS above base <= "
          f"{TARGET_RSS} x S; 'excl.' = (wall - factory) / baseline wall")
    header = (f"{'mode':<14} {'wall s':>7} {'ratio':>6} {'':4} {'factory s':>9} {'excl.':>6} "
              f"{'cpu s':>6} {'ratio':>6} {'peak MiB':>9} {'peak/S':>7} {'':4} {'anon/S':>7} "
              f"{'ok':>5}")
    print(f"{header}\n{'-' * len(header)}")
    for mode in modes:
        base = med("baseline", "wall")
        ratio, peak = med(mode, "wall", base), med(mode, "peak", size)
        print(f"{mode:<14} {med(mode, 'wall'):>7.2f} {ratio:>6.2f} "
              f"{verdict(mode, ratio, TARGET_WALL):<4} {med(mode, 'factory'):>9.2f} "
              f"{(med(mode, 'wall') - med(mode, 'factory')) / base:>6.2f} "
              f"{med(mode, 'cpu'):>6.2f} {med(mode, 'cpu', med('baseline', 'cpu')):>6.2f} "
              f"{med(mode, 'peak', MIB):>9.0f} {peak:>7.2f} {verdict(mode, peak, TARGET_RSS):<4} "
              f"{med(mode, 'anon', size):>7.2f} {all(r['ok'] for r in runs[mode])!s:>5}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
