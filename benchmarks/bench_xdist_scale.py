"""200 round-trip tests over several example models: ``-n 2`` vs one process.

Copies ``example_models/`` into a temporary project and writes ``test_scale.py``: 50
parametrized ``@pytest.mark.ckpt_roundtrip`` tests for each of four tiny models (HiFiGAN-style
vocoder with weight_norm, tied-embedding LLaMA, ChatTTS-style GPT heads, separator), each
saved and loaded through torch and safetensors with outputs compared and a manifest snapshot
per test. The snapshots are created once (``--ckpt-snapshot-update -n 2``); then each arm
runs ``--repeat`` times, alternating: ``pytest -p no:cacheprovider`` (one process) and
``pytest -n 2``. Prints the median walls, the speed-up, and whether the 200 snapshot files
are byte-identical before and after every run; also each arm's CPU time (user + sys of the
run and every process it waited for) and the cores it kept busy on average: one process
already keeps more than one core busy through torch's intra-op threads, so on a 2-core machine
the speed-up cannot exceed (cores x serial wall) / (CPU time of the -n run).
Usage: python benchmarks/bench_xdist_scale.py [--repeat 2] [--workers 2]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PER_MODEL = 50
TESTS = f'''
import pytest
import torch

from example_models.gpt_heads import GPTHeads, GPTHeadsConfig
from example_models.llama import Llama, LlamaConfig
from example_models.separator import Separator
from example_models.vocoder import Vocoder, VocoderConfig

FORMATS = ("torch", "safetensors")
CASES = range({PER_MODEL})


@pytest.mark.parametrize("case", CASES)
@pytest.mark.ckpt_roundtrip(formats=FORMATS, inputs=lambda: torch.randn(1, 80, 32))
def test_vocoder(case):
    return Vocoder(VocoderConfig.tiny())


@pytest.mark.parametrize("case", CASES)
@pytest.mark.ckpt_roundtrip(formats=("torch",), inputs=lambda: torch.randint(0, 64, (1, 8)))
def test_llama(case):
    return Llama(LlamaConfig.tiny(tie_embeddings=True))


@pytest.mark.parametrize("case", CASES)
@pytest.mark.ckpt_roundtrip(formats=FORMATS, inputs=lambda: torch.randint(0, 64, (1, 12)))
def test_gpt_heads(case):
    return GPTHeads(GPTHeadsConfig.tiny())


@pytest.mark.parametrize("case", CASES)
@pytest.mark.ckpt_roundtrip(formats=FORMATS, inputs=lambda: torch.randn(2, 256))
def test_separator(case):
    return Separator().eval()
'''


def snapshot_digest(project: Path) -> tuple[int, str]:
    files = sorted(project.rglob("__snapshots__/test_scale/*.manifest.txt"))
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + path.read_bytes())
    return len(files), digest.hexdigest()


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def pytest_run(project: Path, *args: str) -> tuple[float, float]:
    """(wall, CPU seconds) of one pytest run."""
    start, cpu = time.perf_counter(), children_cpu()
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             "-p", "no:randomly", "test_scale.py", *args], cwd=project,
                            capture_output=True, text=True)
    wall, cpu = time.perf_counter() - start, children_cpu() - cpu
    if result.returncode != 0:
        raise SystemExit(f"pytest {' '.join(args)} failed:\n{result.stdout[-3000:]}")
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ckpt-bench-xdist-") as name:
        project = Path(name)
        shutil.copytree(ROOT / "example_models", project / "example_models",
                        ignore=shutil.ignore_patterns("__pycache__"))
        (project / "test_scale.py").write_text(TESTS)
        (project / "pytest.ini").write_text("[pytest]\nfilterwarnings =\n    error\n"
                                            "    ignore:TypedStorage is deprecated\n")
        pytest_run(project, "--ckpt-snapshot-update", "-n", str(args.workers))
        count, before = snapshot_digest(project)
        serial: list[tuple[float, float]] = []
        parallel: list[tuple[float, float]] = []
        intact = True
        for _ in range(args.repeat):
            serial.append(pytest_run(project))
            parallel.append(pytest_run(project, "-n", str(args.workers)))
            intact = intact and snapshot_digest(project) == (count, before)
        one, many = (statistics.median(w for w, _ in arm) for arm in (serial, parallel))
        one_cpu, many_cpu = (statistics.median(c for _, c in arm) for arm in (serial, parallel))
        cores = os.cpu_count() or 1
        print(f"{4 * PER_MODEL} round-trip tests, {count} manifest snapshots; "
              f"median of {args.repeat} runs per arm; {cores} cores")
        print(f"one process: {one:.1f} s wall, {one_cpu:.1f} s CPU ({one_cpu / one:.2f} cores "
              f"busy)   -n {args.workers}: {many:.1f} s wall, {many_cpu:.1f} s CPU "
              f"({many_cpu / many:.2f} cores busy)")
        print(f"speed-up: {one / many:.2f}x (target >= 1.7x; bound on this machine "
              f"{cores * one / many_cpu:.2f}x)   snapshots intact: {intact}")


if __name__ == "__main__":
    main()
