"""Memory and time bounds: every hostile input under 10 MB is refused by ``pytest-ckpt show``
and by the fixture inside a 1 GiB address space, at under 512 MiB of peak resident memory,
with one paragraph naming the file (a MemoryError would be an "internal error", a kill a
negative exit status).

Each child reports its own peak (``VmHWM`` of ``/proc/self/status``): the parent's
``ru_maxrss`` of a child counts the pages it shared with the parent before ``exec``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.hostile.bombs import BOMBS, write_bomb
from tests.hostile.broken import BROKEN

ADDRESS_SPACE = 1 << 30
PEAK_BUDGET_KIB = 512 * 1024
TABLE_BOMBS = ("torch_zip_bomb", "torch_memo_bomb", "torch_binbytes8_huge",
               "torch_binunicode_huge", "torch_billion_laughs", "torch_deep_nesting",
               "torch_self_reference", "dcp_huge_tensor", "dcp_negative_dim")
LINUX = pytest.mark.skipif(not sys.platform.startswith("linux"),
                           reason="peaks are read from /proc/self/status")

SHOW = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))
from pytest_ckpt.cli import main
code = main(["show", sys.argv[1]])
peak = next(line for line in open("/proc/self/status") if line.startswith("VmHWM"))
print("PEAK", peak.split()[1], file=sys.stderr)
sys.exit(code)
"""


def hostile_input(name: str, directory: Path) -> Path:
    if name in BOMBS:
        return write_bomb(name, directory)
    folder = directory / name
    folder.mkdir()
    return BROKEN[name](folder)


@LINUX
@pytest.mark.parametrize("name", [*TABLE_BOMBS, *BOMBS])
def test_show_refuses_each_bomb_inside_a_1_gib_address_space(name, tmp_path):
    path = hostile_input(name, tmp_path)
    assert sum(p.stat().st_size for p in [path, *path.rglob("*")] if p.is_file()) < 10 << 20
    child = subprocess.run([sys.executable, "-c", SHOW.format(limit=ADDRESS_SPACE), str(path)],
                           capture_output=True, text=True, timeout=300, check=False)
    message, _, peak = child.stderr.rpartition("PEAK ")
    assert child.returncode == 2, child.stderr
    assert message.startswith(f"pytest-ckpt: checkpoint {path}"), message
    assert "internal error" not in message and "Traceback" not in message, message
    assert int(peak) < PEAK_BUDGET_KIB


FIXTURE_CONFTEST = """
import json, resource
resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))
RAISED = {{}}


def pytest_runtest_makereport(item, call):
    if call.when == "call":
        RAISED[item.nodeid] = call.excinfo.typename if call.excinfo else None


def pytest_unconfigure(config):
    peak = next(line for line in open("/proc/self/status") if line.startswith("VmHWM"))
    with open("peak.json", "w") as stream:
        json.dump({{"peak": int(peak.split()[1]), "raised": RAISED}}, stream)
"""

FIXTURE_TESTS = """
import json
from pathlib import Path

import pytest
import torch

PATHS = json.loads(Path("paths.json").read_text())


@pytest.mark.parametrize("path", PATHS)
def test_loads(ckpt, path):
    ckpt.assert_loads(torch.nn.Linear(2, 2), path)


@pytest.mark.parametrize("path", PATHS)
def test_schema(ckpt, path):
    ckpt.assert_schema(path)
"""


def _torch_fits_in(limit: int) -> bool:
    """Whether torch itself imports inside ``limit`` bytes of address space (the CUDA builds
    of older torch map more than 1 GiB of libraries)."""
    code = (f"import resource; resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit})); "
            "import torch")
    return subprocess.run([sys.executable, "-c", code], capture_output=True,
                          check=False).returncode == 0


@LINUX
@pytest.mark.skipif(not _torch_fits_in(ADDRESS_SPACE),
                    reason="this torch's own libraries need more than 1 GiB of address space")
def test_the_fixture_refuses_every_bomb_inside_a_1_gib_address_space(pytester, tmp_path):
    paths = [str(hostile_input(name, tmp_path)) for name in [*TABLE_BOMBS, *BOMBS]]
    (pytester.path / "paths.json").write_text(json.dumps(paths))
    pytester.makeconftest(FIXTURE_CONFTEST.format(limit=ADDRESS_SPACE))
    pytester.makepyfile(test_bombs=FIXTURE_TESTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-W", "ignore")
    result.assert_outcomes(failed=2 * len(paths))
    recorded = json.loads((pytester.path / "peak.json").read_text())
    assert set(recorded["raised"].values()) == {"Failed"}  # checks failed, nothing else
    assert recorded["peak"] < PEAK_BUDGET_KIB
