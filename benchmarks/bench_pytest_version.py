"""Start-up cost of the pytest-ckpt plugin: ``pytest --version`` with and without it.

Every run is a fresh ``python -m pytest ...`` in an empty temporary directory (so no project
conftest or ini file is loaded); runs with the plugin and with ``-p no:ckpt`` alternate.

pytest >= 8.4 answers a single ``--version`` before loading any plugin, so that pair cannot
see the plugin at all; ``--version --version`` (the verbose form, which lists plugins) goes
through full plugin loading, so it is measured too.

Each pair runs twice: with a bytecode cache (PYTHONDONTWRITEBYTECODE unset, .pyc files in a
private temporary PYTHONPYCACHEPREFIX, as for a normal install) and with the caller's
environment unchanged (where PYTHONDONTWRITEBYTECODE=1 makes every run recompile the
editable pytest_ckpt sources). Usage: python benchmarks/bench_pytest_version.py [--repeat N]
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

TARGET_RATIO = 1.03
VARIANTS: dict[str, tuple[str, ...]] = {
    "pytest --version": ("--version",),
    "pytest --version --version": ("--version", "--version"),
}


Env = dict[str, str]


def run_once(args: tuple[str, ...], cwd: Path, env: Env) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pytest", *args], cwd=cwd, env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def imported_modules(args: tuple[str, ...], cwd: Path, env: Env) -> set[str]:
    """Top-level names of the modules imported by one run, from ``-X importtime``."""
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "pytest", *args],
                            cwd=cwd, env=env, check=True, capture_output=True, text=True)
    names = set()
    for line in result.stderr.splitlines():
        if line.startswith("import time:") and line.count("|") == 2:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    return names


def measure(args: tuple[str, ...], repeat: int, cwd: Path,
            env: Env) -> tuple[list[float], list[float]]:
    with_plugin: list[float] = []
    without: list[float] = []
    run_once(args, cwd, env)  # warm the page cache and .pyc files
    run_once((*args, "-p", "no:ckpt"), cwd, env)
    for index in range(repeat):
        order = [(with_plugin, args), (without, (*args, "-p", "no:ckpt"))]
        if index % 2:
            order.reverse()
        for bucket, argv in order:
            bucket.append(run_once(argv, cwd, env))
    return with_plugin, without


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15, help="runs per arm (default 15)")
    options = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="ckpt-bench-") as tmp:
        cwd = Path(tmp) / "cwd"
        cwd.mkdir()
        cached = {key: value for key, value in os.environ.items()
                  if key != "PYTHONDONTWRITEBYTECODE"}
        cached["PYTHONPYCACHEPREFIX"] = str(Path(tmp) / "pycache")
        modes = {"pyc": cached, "env": dict(os.environ)}
        for mode, env in modes.items():
            for label, args in VARIANTS.items():
                with_plugin, without = measure(args, options.repeat, cwd, env)
                loaded = imported_modules(args, cwd, env)
                rows.append((f"[{mode}] {label}", statistics.median(with_plugin),
                             statistics.median(without), min(with_plugin), min(without),
                             "pytest_ckpt" in loaded, "torch" in loaded))
    no_pyc = os.environ.get("PYTHONDONTWRITEBYTECODE", "")
    print(f"python {sys.version.split()[0]}, {options.repeat} alternating runs per arm, "
          "wall seconds (median; min in parentheses)\n[pyc] = bytecode cache on, "
          f"[env] = environment as called (PYTHONDONTWRITEBYTECODE={no_pyc!r})")
    header = (f"{'command':<34} {'with ckpt':>16} {'-p no:ckpt':>16} {'ratio':>7} "
              f"{'target':>7} {'ckpt imported':>14} {'torch imported':>15}")
    print(header)
    print("-" * len(header))
    for label, med_on, med_off, min_on, min_off, ckpt, torch in rows:
        ratio = med_on / med_off
        verdict = "ok" if ratio <= TARGET_RATIO else "MISS"
        print(f"{label:<34} {f'{med_on:.3f} ({min_on:.3f})':>16} "
              f"{f'{med_off:.3f} ({min_off:.3f})':>16} {ratio:>7.3f} "
              f"{f'<={TARGET_RATIO} {verdict}':>7} {ckpt!s:>14} {torch!s:>15}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
