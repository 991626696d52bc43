"""Peak memory and time of refusing hostile files, against plain torch on the same files.

Each hostile input (memory and time bombs from ``tests/hostile``) is handed, in a fresh child
under a 1 GiB address-space limit, to ``pytest-ckpt show`` and to the plain read a user would
otherwise make (``torch.load(weights_only=True)``; ``dcp.load`` for a DCP directory). The
child reports its own peak RSS (``VmHWM``: a parent's ``ru_maxrss`` of a forked child counts
the pages it shared before ``exec``). Columns: what each answered, wall seconds, peak MiB, and
the ratio of the peaks (pytest-ckpt / plain; plain often dies first, which is the point).
Usage: python benchmarks/bench_hostile_rss.py   (run from the repository root; ~2 min)
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.hostile.bombs import BOMBS, write_bomb
from tests.hostile.broken import BROKEN

LIMIT = 1 << 30
BUDGET_MIB = 512
TABLE = ("torch_zip_bomb", "torch_memo_bomb", "torch_binbytes8_huge", "torch_binunicode_huge",
         "torch_billion_laughs", "torch_deep_nesting", "torch_self_reference",
         "dcp_huge_tensor")
PRELUDE = f"""
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, ({LIMIT}, {LIMIT}))
def peak():
    line = next(l for l in open("/proc/self/status") if l.startswith("VmHWM"))
    print("PEAK", line.split()[1], file=sys.stderr)
"""
CKPT = PRELUDE + """
from pytest_ckpt.cli import main
code = main(["show", sys.argv[1]])
peak()
sys.exit(code)
"""
PLAIN = PRELUDE + """
import os, warnings
import torch
warnings.simplefilter("ignore")
try:
    if os.path.isdir(sys.argv[1]):
        import torch.distributed.checkpoint as dcp
        dcp.load({"w": torch.empty(3)}, checkpoint_id=sys.argv[1])
    else:
        torch.load(sys.argv[1], weights_only=True, map_location="cpu")
    print("ANSWER loaded", file=sys.stderr)
except BaseException as error:
    print("ANSWER", type(error).__name__, file=sys.stderr)
peak()
"""


def run(code: str, path: Path) -> tuple[str, float, float | None]:
    """(answer, wall seconds, peak MiB or None when the child died before reporting)."""
    start = time.perf_counter()
    child = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                           text=True, timeout=600, check=False)
    wall = time.perf_counter() - start
    lines = child.stderr.splitlines()
    peaks = [float(line.split()[1]) / 1024 for line in lines if line.startswith("PEAK ")]
    answers = [line.removeprefix("ANSWER ") for line in lines if line.startswith("ANSWER ")]
    if answers:
        answer = answers[0]
    elif child.returncode == 2 and lines and "internal error" not in lines[0]:
        answer = "refused"
    else:
        answer = f"exit {child.returncode}"
    return answer, wall, peaks[0] if peaks else None


def main() -> int:
    rows = []
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        for name in [*TABLE, *BOMBS]:
            if name in BOMBS:
                path = write_bomb(name, root)
            else:
                (root / name).mkdir()
                path = BROKEN[name](root / name)
            rows.append((name, run(CKPT, path), run(PLAIN, path)))
    print(f"{'input':26} {'pytest-ckpt show':>28} {'plain torch':>30} {'peak ratio':>10}")
    worst = 0.0
    for name, (answer, wall, peak), (plain, plain_wall, plain_peak) in rows:
        worst = max(worst, peak or float("inf"))
        ratio = f"{peak / plain_peak:.2f}" if peak and plain_peak else "-"
        shown = f"{answer} {wall:5.1f}s {peak or 0:6.0f}MiB"
        plain_shown = f"{plain} {plain_wall:5.1f}s {plain_peak or 0:6.0f}MiB"
        print(f"{name:26} {shown:>28} {plain_shown:>30} {ratio:>10}")
    verdict = "ok" if worst < BUDGET_MIB else "MISS"
    print(f"worst pytest-ckpt peak: {worst:.0f} MiB (budget {BUDGET_MIB} MiB): {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
