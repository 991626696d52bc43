"""Cost of a pytest-ckpt round-trip as users run it (inside pytest) against a plain
``torch.save`` -> ``torch.load(weights_only=True)`` -> ``torch.equal`` round-trip.

Every arm is one test in a generated test file, run alone in a fresh ``python -m pytest``
child (``--repeat`` times, order rotated, medians):

* ``plain torch``: the test builds the model, saves its state_dict, loads it back, compares
  every tensor; ``plain torch+st``: the same through torch and then safetensors
  (``save_file`` / ``load_file``); ``plain +load``: plain torch, then a second model is built
  and ``load_state_dict`` runs (what a test that loads into a model pays);
* ``marker``: ``@pytest.mark.ckpt_roundtrip`` (the test is called a second time for the
  target); ``roundtrip factory=``: ``ckpt.roundtrip(model, factory=build)``; ``roundtrip
  copy``: ``ckpt.roundtrip(model)`` (the poisoned copy); each for ``formats=("torch",)`` and
  ``("torch", "safetensors")``, ``snapshot=False``;
* ``pytest-torch``: the peer's ``assert_checkpoint_roundtrip`` (in-memory buffer, outputs
  compared), when importable (``PYTHONPATH``), else skipped with a line saying so.

Columns: ``wall`` = the child process (pytest start, torch import, collection, builds, the
test); ``in-test`` = the test's call phase less the time spent building models (the test's
own build and the target build, in ``build()``); ratios of medians against ``plain torch``;
``best`` = the fastest in-test run against plain torch's fastest (single runs of the same arm
spread by a factor of 3 or more on a shared VM: the table prints plain torch's); ``peak/S``
= the call phase's peak RSS above the RSS it started with (``/proc/self/clear_refs``),
divided by the state S (judged from 64 MiB: below that the process's own growth dominates).
Rows ``tensors=N`` repeat plain, plain +load and the marker for
N small tensors, where torch's own ``load_state_dict`` dominates.
Usage: python benchmarks/bench_roundtrip.py [--size-mib 1024] [--repeat 5] [--tensors 1000,10000]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TARGET_WALL, TARGET_IN_TEST, TARGET_RSS = 1.15, 1.0, 2.1
MIB = 1 << 20
T, TS = '("torch",)', '("torch", "safetensors")'
ARMS = {  # arm -> test function source; BUILD() builds the model and counts its time
    "plain torch": "def test_arm(tmp_path):\n    plain(BUILD(), tmp_path)",
    "plain torch+st": "def test_arm(tmp_path):\n    plain(BUILD(), tmp_path, safetensors=True)",
    "plain +load": "def test_arm(tmp_path):\n    model = BUILD()\n"
                   "    BUILD().load_state_dict(plain(model, tmp_path))",
    "marker torch": f"@pytest.mark.ckpt_roundtrip(formats={T}, snapshot=False)\n"
                    "def test_arm():\n    return BUILD()",
    "marker torch+st": f"@pytest.mark.ckpt_roundtrip(formats={TS}, snapshot=False)\n"
                       "def test_arm():\n    return BUILD()",
    "factory= torch": f"def test_arm(ckpt):\n    ckpt.roundtrip(BUILD(), factory=BUILD, "
                      f"formats={T}, snapshot=False)",
    "factory= torch+st": f"def test_arm(ckpt):\n    ckpt.roundtrip(BUILD(), factory=BUILD, "
                         f"formats={TS}, snapshot=False)",
    "copy torch": f"def test_arm(ckpt):\n    ckpt.roundtrip(BUILD(), formats={T}, "
                  "snapshot=False)",
    "copy torch+st": f"def test_arm(ckpt):\n    ckpt.roundtrip(BUILD(), formats={TS}, "
                     "snapshot=False)",
    "pytest-torch": "def test_arm():\n    from pytest_torch.checkpoint import "
                    "assert_checkpoint_roundtrip\n    model = BUILD()\n"
                    "    assert_checkpoint_roundtrip(BUILD, torch.randn(1, WIDTH), model=model)",
}
SMALL_ARMS = ("plain torch", "plain +load", "marker torch")

TEST_FILE = '''
import os, time, pytest, torch
from torch import nn

SIZE_MIB, TENSORS = int(os.environ["BENCH_SIZE_MIB"]), int(os.environ["BENCH_TENSORS"])
WIDTH = 16 if TENSORS else 4096
BUILT = [0.0]


def BUILD():
    start = time.perf_counter()
    if TENSORS:  # TENSORS/2 Linear(16, 16) with bias, one flat Sequential
        model = nn.Sequential(*(nn.Linear(16, 16) for _ in range(TENSORS // 2)))
    else:  # bias-free 4096x4096 float32 layers, 64 MiB each
        model = nn.Sequential(*(nn.Linear(4096, 4096, bias=False)
                                for _ in range(max(1, SIZE_MIB // 64))))
    BUILT[0] += time.perf_counter() - start
    return model


def plain(model, directory, safetensors=False):
    state = model.state_dict()
    torch.save(state, directory / "plain.pt")
    loaded = torch.load(directory / "plain.pt", weights_only=True)
    assert all(torch.equal(loaded[key], value) for key, value in state.items())
    if safetensors:
        import safetensors.torch as st
        st.save_file(state, str(directory / "plain.safetensors"))
        again = st.load_file(str(directory / "plain.safetensors"))
        assert all(torch.equal(again[key], value) for key, value in state.items())
    return loaded

'''

CONFTEST = '''
import json, os, time, pytest


def _kib(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # VmHWM := the RSS now
    rss, start = _kib("VmRSS"), time.perf_counter()
    yield
    wall = time.perf_counter() - start
    with open(os.environ["BENCH_OUT"], "w") as out:
        json.dump({"call": wall, "built": item.module.BUILT[0],
                   "peak": (_kib("VmHWM") - rss) * 1024}, out)
'''


def run_arm(arm: str, root: Path, size_mib: int, tensors: int) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(dir=root))
    (folder / "conftest.py").write_text(CONFTEST)
    (folder / "test_bench.py").write_text(TEST_FILE + ARMS[arm] + "\n")
    out = folder / "out.json"
    os.sync()  # each child starts with nothing dirty: a write-back left by the one before
    # throttles this child's writes (seen: plain torch at 1 GiB 8.4 s after an arm, 2.8 s alone)
    # with bytecode caches, as an installed plugin runs (PYTHONDONTWRITEBYTECODE=1 would
    # recompile the editable sources in every child, and the arms that import the checks
    # would pay for it); main() runs children first that write the caches
    env = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
    env.update(BENCH_SIZE_MIB=str(size_mib), BENCH_TENSORS=str(tensors), BENCH_OUT=str(out))
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "-p", "no:randomly", "--basetemp", str(folder / "tmp"),
                           str(folder / "test_bench.py")], cwd=folder, env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"{arm} failed:\n{done.stdout[-3000:]}\n{done.stderr[-2000:]}")
    result = dict(json.loads(out.read_text()))
    result["wall"] = wall
    result["state"] = (tensors // 2 * (16 * 16 + 16) * 4 if tensors
                       else max(1, size_mib // 64) * 4096 * 4096 * 4)
    result["largest"] = 16 * 16 * 4 if tensors else 4096 * 4096 * 4
    subprocess.run(["rm", "-rf", str(folder)], check=False)
    os.sync()
    return result


def measure(arms: list[str], size_mib: int, tensors: int, repeat: int,
            root: Path) -> dict[str, list[dict[str, Any]]]:
    runs: dict[str, list[dict[str, Any]]] = {arm: [] for arm in arms}
    for index in range(repeat):
        shift = index % len(arms)
        for arm in arms[shift:] + arms[:shift]:  # rotate the order
            runs[arm].append(run_arm(arm, root, size_mib, tensors))
    return runs


def table(title: str, runs: dict[str, list[dict[str, Any]]]) -> None:
    def med(arm: str, key: str) -> float:
        return float(statistics.median(run[key] for run in runs[arm]))

    def in_test(arm: str, pick: Any = statistics.median) -> float:
        return float(pick(run["call"] - run["built"] for run in runs[arm]))

    def mark(arm: str, value: float, target: float) -> str:
        return "ref" if arm == "plain torch" else ("ok" if value <= target else "MISS")

    base_wall, base_test = med("plain torch", "wall"), in_test("plain torch")
    base_best = in_test("plain torch", min)
    size, largest = runs["plain torch"][0]["state"], runs["plain torch"][0]["largest"]
    print(f"\n{title}: S = {size / MIB:.1f} MiB; targets wall <= {TARGET_WALL}x, in-test <= "
          f"{TARGET_IN_TEST}x, peak <= {TARGET_RSS} S")
    header = (f"{'arm':<18} {'wall s':>7} {'ratio':>6} {'':4} {'in-test s':>9} {'ratio':>6} "
              f"{'':4} {'best':>5} {'builds s':>8} {'peak/S':>7} {'':4}")
    print(f"{header}\n{'-' * len(header)}")
    for arm in runs:
        ours = not arm.startswith(("plain", "pytest-torch"))
        wall, test = med(arm, "wall") / base_wall, in_test(arm) / base_test
        peak = med(arm, "peak") / size
        print(f"{arm:<18} {med(arm, 'wall'):>7.2f} {wall:>6.2f} "
              f"{mark(arm, wall, TARGET_WALL) if ours else '':<4} {in_test(arm):>9.2f} "
              f"{test:>6.2f} {mark(arm, test, TARGET_IN_TEST) if ours else '':<4} "
              f"{in_test(arm, min) / base_best:>5.2f} {med(arm, 'built'):>8.2f} {peak:>7.2f} "
              f"{mark(arm, peak, TARGET_RSS) if ours and size >= 64 * MIB else '':<4}")
    low, high = in_test("plain torch", min), in_test("plain torch", max)
    print(f"best = fastest in-test run against plain torch's fastest; plain torch's in-test "
          f"runs spread over {low:.2f}-{high:.2f} s")
    if size >= 64 * MIB:
        print(f"peak floor of a load into a target: source + target + the largest tensor "
              f"({largest / MIB:.0f} MiB), mapped whole while load_state_dict copies it = "
              f"{2 + largest / size:.2f} S")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="state size (default 1024)")
    parser.add_argument("--repeat", type=int, default=5, help="children per arm (default 5)")
    parser.add_argument("--tensors", default="1000,10000",
                        help="small-tensor rows, comma-separated counts ('' to skip)")
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()),
                        help="where the test folders (and checkpoint files) go (default /tmp)")
    parser.add_argument("--arms", help="only these arms, comma-separated ('plain torch' is "
                                        "always run: the ratios are against it)")
    options = parser.parse_args()
    chosen = {"plain torch", *options.arms.split(",")} if options.arms else set(ARMS)
    arms = [arm for arm in ARMS if arm != "pytest-torch" and arm in chosen]
    if importlib.util.find_spec("pytest_torch") is None:
        print("pytest-torch arm skipped: pytest_torch is not importable (pip download "
              "--no-deps pytest-torch==1.1.1, unzip, and put it on PYTHONPATH)")
    elif "pytest-torch" in chosen:
        arms.append("pytest-torch")
    with tempfile.TemporaryDirectory(prefix="ckpt-bench-", dir=options.dir) as root:
        for arm in ("marker torch+st", "plain torch+st"):  # warm the bytecode caches
            run_arm(arm, Path(root), 64, 0)
        table(f"{options.size_mib} MiB float32 state in {options.size_mib // 64} layers",
              measure(arms, options.size_mib, 0, options.repeat, Path(root)))
        for count in filter(None, options.tensors.split(",")):
            table(f"tensors={count} (Linear(16, 16) x {int(count) // 2})",
                  measure(list(SMALL_ARMS), 0, int(count), options.repeat, Path(root)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
