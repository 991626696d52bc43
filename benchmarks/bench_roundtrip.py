"""Cost of ``run_roundtrip`` (what ``@pytest.mark.ckpt_roundtrip`` runs) against a plain
``torch.save`` -> ``torch.load(weights_only=True)`` -> ``torch.equal`` round-trip.

The state is an ``nn.Sequential`` of bias-free ``nn.Linear`` layers (4096x4096 float32, 64 MiB
each, when the size allows) of ``--size-mib`` MiB. Every measurement runs in a fresh child
process; its peak RSS (VmHWM) is taken relative to its VmHWM after ``import torch`` (and
``import pytest_ckpt.roundtrip``), before the state is built, so the state itself counts once.
``anon`` is the peak of RssAnon sampled every 2 ms: memory-mapped file pages (VmHWM counts
them, the page cache holds them anyway) are left out of it.

Modes: ``baseline``; ``ckpt`` with a target factory building a second model (as the marker
does, by calling the test again); ``ckpt-deepcopy`` with ``make_target=None``.
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

    from pytest_ckpt.roundtrip import RoundtripSpec, run_roundtrip

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

    start = time.perf_counter()
    if mode == "baseline":
        path = directory / "baseline.pt"
        torch.save(model.state_dict(), path)
        sd = torch.load(path, weights_only=True)
        ok = all(torch.equal(sd[k], v) for k, v in model.state_dict().items())
    else:
        outcomes = run_roundtrip(model, make_target if mode == "ckpt" else None,
                                 RoundtripSpec(formats=("torch",)), directory)
        ok = all(outcome.ok for outcome in outcomes)
    wall = time.perf_counter() - start
    sampler.done.set()
    sampler.join()
    return {"wall": wall, "factory": factory_s, "state": state, "ok": ok,
            "peak": (status_kib("VmHWM") - base_hwm) * 1024,
            "anon": (sampler.peak - base_anon) * 1024}


def run_child(mode: str, size_mib: int, root: Path) -> dict[str, Any]:
    directory = Path(tempfile.mkdtemp(prefix=f"{mode}-", dir=root))
    try:
        out = subprocess.run([sys.executable, __file__, "--child", mode, "--size-mib",
                              str(size_mib), "--dir", str(directory)],
                             check=True, capture_output=True, text=True).stdout
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="state size (default 1024)")
    parser.add_argument("--repeat", type=int, default=3, help="children per mode (default 3)")
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.child:
        print(json.dumps(child(options.child, options.size_mib, options.dir)))
        return 0
    runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
    with tempfile.TemporaryDirectory(prefix="ckpt-bench-", dir="/tmp") as root:
        for index in range(options.repeat):
            for mode in MODES[index % 3:] + MODES[:index % 3]:  # rotate the order
                runs[mode].append(run_child(mode, options.size_mib, Path(root)))
    size = runs["baseline"][0]["state"]

    def med(mode: str, key: str) -> float:
        return statistics.median(run[key] for run in runs[mode])

    print(f"state S = {size / MIB:.0f} MiB float32, {options.repeat} fresh children per mode "
          f"(medians), targets: wall ratio <= {TARGET_WALL}, peak RSS above base <= "
          f"{TARGET_RSS} x S")
    header = (f"{'mode':<14} {'wall s':>7} {'ratio':>6} {'':4} {'factory s':>9} "
              f"{'wall-factory':>12} {'peak MiB':>9} {'peak/S':>7} {'':4} {'anon/S':>7} "
              f"{'ok':>5}")
    print(header)
    print("-" * len(header))
    for mode in MODES:
        ratio, peak = med(mode, "wall") / med("baseline", "wall"), med(mode, "peak") / size
        wall_ok = "" if mode == "baseline" else ("ok" if ratio <= TARGET_WALL else "MISS")
        peak_ok = "ok" if peak <= TARGET_RSS else "MISS"
        rest = (med(mode, "wall") - med(mode, "factory")) / med("baseline", "wall")
        print(f"{mode:<14} {med(mode, 'wall'):>7.2f} {ratio:>6.2f} {wall_ok:<4} "
              f"{med(mode, 'factory'):>9.2f} {f'{rest:.2f}x base':>12} "
              f"{med(mode, 'peak') / MIB:>9.0f} {peak:>7.2f} {peak_ok:<4} "
              f"{med(mode, 'anon') / size:>7.2f} {all(r['ok'] for r in runs[mode])!s:>5}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
