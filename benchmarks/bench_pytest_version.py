"""Start-up cost of the pytest-ckpt plugin: ``pytest --version`` with and without it.

Every run is a fresh ``python -m pytest ...`` in an empty temporary directory (so no project
conftest or ini file is loaded); runs with the plugin and with ``-p no:ckpt`` alternate.

pytest >= 8.4 answers a single ``--version`` before loading any plugin, so that pair cannot
see the plugin at all; ``--version --version`` (the verbose form, which lists plugins) goes
through full plugin loading, so it is measured too.

Each pair runs twice: ``[pyc]`` with a bytecode cache (PYTHONDONTWRITEBYTECODE unset, .pyc
files in a private temporary PYTHONPYCACHEPREFIX, as for a normal install) and ``[env]`` with
the caller's environment unchanged (PYTHONDONTWRITEBYTECODE=1 makes every run recompile the
editable pytest_ckpt sources). Besides wall time the child's CPU time (user+sys, from
wait4) is reported: it is less disturbed by other processes on the machine.
Usage: python benchmarks/bench_pytest_version.py [--repeat N]
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
Sample = tuple[float, float]  # (wall seconds, child CPU seconds)


def run_once(args: tuple[str, ...], cwd: Path, env: Env) -> Sample:
    start = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "pytest", *args], cwd=cwd, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        raise SystemExit(f"pytest {' '.join(args)} exited {child.returncode}")
    return wall, usage.ru_utime + usage.ru_stime


def imported_modules(args: tuple[str, ...], cwd: Path, env: Env) -> set[str]:
    """Top-level names of the modules in ``sys.modules`` after one in-process pytest run
    (``-X importtime`` does not list modules that entry points import)."""
    probe = ("import sys, pytest\n"
             f"pytest.main({list(args)!r})\n"
             "print('MODULES', ' '.join(sorted({name.split('.')[0] for name in sys.modules})))")
    result = subprocess.run([sys.executable, "-c", probe], cwd=cwd, env=env, check=True,
                            capture_output=True, text=True)
    line = next(line for line in result.stdout.splitlines() if line.startswith("MODULES "))
    return set(line.split()[1:])


IMPORT_PROBE = ("import time, pytest; start = time.perf_counter(); import pytest_ckpt.plugin; "
                "print(time.perf_counter() - start)")


def plugin_import_s(repeat: int, env: Env) -> float:
    """Median time to import the plugin module in a fresh process that has imported pytest."""
    return statistics.median(float(subprocess.run(
        [sys.executable, "-c", IMPORT_PROBE], env=env, check=True, capture_output=True,
        text=True).stdout) for _ in range(repeat))


def measure(args: tuple[str, ...], repeat: int, cwd: Path,
            env: Env) -> tuple[list[Sample], list[Sample]]:
    with_plugin: list[Sample] = []
    without: list[Sample] = []
    off = (*args, "-p", "no:ckpt")
    run_once(args, cwd, env)  # warm the page cache and the .pyc files
    run_once(off, cwd, env)
    for index in range(repeat):
        order = [(with_plugin, args), (without, off)]
        for bucket, argv in order[::-1] if index % 2 else order:
            bucket.append(run_once(argv, cwd, env))
    return with_plugin, without


def median(samples: list[Sample], which: int) -> float:
    return statistics.median(sample[which] for sample in samples)


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
        for mode, env in {"pyc": cached, "env": dict(os.environ)}.items():
            for label, args in VARIANTS.items():
                on, off = measure(args, options.repeat, cwd, env)
                loaded = imported_modules(args, cwd, env)
                rows.append((f"[{mode}] {label}", on, off, "pytest_ckpt" in loaded,
                             "torch" in loaded, plugin_import_s(options.repeat, env)))
    no_pyc = os.environ.get("PYTHONDONTWRITEBYTECODE", "")
    print(f"python {sys.version.split()[0]}, {options.repeat} alternating runs per arm, "
          f"medians in seconds, load average now {os.getloadavg()[0]:.2f}\n"
          f"[pyc] = bytecode cache on, [env] = environment as called "
          f"(PYTHONDONTWRITEBYTECODE={no_pyc!r}); target: median wall ratio <= {TARGET_RATIO}; "
          "min ratio = fastest run / fastest run; cpu ratio = median child user+sys;\n"
          "import ms = median time of `import pytest_ckpt.plugin` after `import pytest` in a "
          "fresh process; est. = 1 + import / median wall without the plugin (the noise-free "
          "estimate, for the rows that import the plugin)")
    header = (f"{'command':<34} {'wall ckpt':>9} {'wall no':>8} {'ratio':>6} {'':4} "
              f"{'min ratio':>9} {'cpu ratio':>9} {'import ms':>9} {'est.':>6} "
              f"{'ckpt imported':>14} {'torch imported':>15}")
    print(header)
    print("-" * len(header))
    for label, on, off, ckpt, torch, import_s in rows:
        wall = median(on, 0) / median(off, 0)
        cpu = median(on, 1) / median(off, 1)
        verdict = "ok" if wall <= TARGET_RATIO else "MISS"
        best = min(wall for wall, _ in on) / min(wall for wall, _ in off)
        print(f"{label:<34} {median(on, 0):>9.3f} {median(off, 0):>8.3f} {wall:>6.3f} "
              f"{verdict:<4} {best:>9.3f} {cpu:>9.3f} {import_s * 1e3:>9.1f} "
              f"{1 + import_s / median(off, 0) if ckpt else 1.0:>6.3f} {ckpt!s:>14} {torch!s:>15}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
