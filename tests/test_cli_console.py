"""What a user expects of the ``pytest-ckpt`` command as a console tool: ``--version``,
``NO_COLOR``/``FORCE_COLOR``, natural key order, both files named as checkpoints in ``diff``,
plain ``--help``, a quiet exit when ``| head`` closes the pipe, and matrix columns told
apart."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from importlib import metadata
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

COMMAND = shutil.which("pytest-ckpt", path=str(Path(sys.executable).parent))
ESCAPE = "\x1b["


def _env(**extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items()
           if key not in ("NO_COLOR", "FORCE_COLOR")}
    return {**env, **extra}


def run(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    assert COMMAND is not None
    return subprocess.run([COMMAND, *args], capture_output=True, text=True, cwd=cwd,
                          env=_env(**env))


def run_on_terminal(*args: str, cwd: Path, **env: str) -> str:
    """stdout of the command when it is a terminal (a pseudo-terminal)."""
    pty = pytest.importorskip("pty")
    assert COMMAND is not None
    leader, follower = pty.openpty()
    subprocess.run([COMMAND, *args], stdout=follower, stderr=subprocess.DEVNULL, cwd=cwd,
                   env=_env(**env), check=False)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the terminal's other side is closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    return b"".join(chunks).decode()


def _weight_normed(parametrized: bool) -> dict[str, torch.Tensor]:
    if parametrized:
        conv = nn.utils.parametrizations.weight_norm(nn.Conv1d(2, 2, 1))
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            conv = nn.utils.weight_norm(nn.Conv1d(2, 2, 1))
    return {f"conv.{key}": value.detach() for key, value in conv.state_dict().items()}


@pytest.fixture
def files(tmp_path: Path) -> Path:
    """a.pt and b.safetensors: twelve layers (two of them wider in B), a renamed norm, a
    component only A has, a key on each side only, a dtype change, weight_norm legacy in A
    and parametrized in B; net.py builds A's layers as a model, and one layer more."""
    old = {f"layers.{i}.weight": torch.zeros(4, 4) for i in range(12)}
    old.update({"norm.weight": torch.zeros(4), "aux.proj.weight": torch.zeros(2, 2),
                "aux.proj.bias": torch.zeros(2), "head.weight": torch.zeros(3, 4),
                "old_only": torch.zeros(7), **_weight_normed(parametrized=False)})
    new = {f"layers.{i}.weight": torch.zeros(4, 5 if i in (2, 10) else 4) for i in range(12)}
    new.update({"layer_norm.weight": torch.zeros(4),
                "head.weight": torch.zeros(3, 4, dtype=torch.float16),
                "new_only": torch.zeros(9), **_weight_normed(parametrized=True)})
    torch.save(old, tmp_path / "a.pt")
    save_file(new, str(tmp_path / "b.safetensors"))
    (tmp_path / "net.py").write_text(
        "from torch import nn\n"
        "def build(depth=12):\n"
        "    return nn.ModuleDict({'layers': nn.ModuleList(nn.Linear(4, 4, bias=False)\n"
        "                                                  for _ in range(depth))})\n"
        "def deeper():\n"
        "    return build(13)\n")
    return tmp_path


# -- --version -----------------------------------------------------------------------------

def test_version_prints_the_distribution_version_and_exits_0(tmp_path):
    result = run("--version", cwd=tmp_path)
    assert (result.returncode, result.stdout) == (
        0, f"pytest-ckpt {metadata.version('pytest-ckpt')}\n")


def test_version_does_not_import_torch(tmp_path):
    code = ("import sys\nfrom pytest_ckpt.cli import main\n"
            "try:\n    main(['--version'])\nexcept SystemExit as exit:\n"
            "    print(exit.code, 'torch' in sys.modules)\n")
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                               cwd=tmp_path, check=True)
    assert completed.stdout.splitlines()[-1] == "0 False"


# -- colour --------------------------------------------------------------------------------

def test_diff_on_a_terminal_is_coloured_unless_no_color_is_set(files):
    assert ESCAPE in run_on_terminal("diff", "a.pt", "b.safetensors", cwd=files)
    assert ESCAPE in run_on_terminal("diff", "a.pt", "b.safetensors", cwd=files, NO_COLOR="")
    plain = run_on_terminal("diff", "a.pt", "b.safetensors", cwd=files, NO_COLOR="1")
    assert plain.startswith("a.pt (A) and b.safetensors (B) differ")
    assert ESCAPE not in plain


def test_force_color_colours_a_pipe_and_no_color_wins_over_it(files):
    forced = run("diff", "a.pt", "b.safetensors", cwd=files, FORCE_COLOR="1")
    assert forced.stdout.startswith(f"{ESCAPE}1ma.pt (A) and b.safetensors (B) differ")
    both = run("diff", "a.pt", "b.safetensors", cwd=files, FORCE_COLOR="1", NO_COLOR="1")
    assert ESCAPE not in both.stdout
    assert ESCAPE not in run("diff", "a.pt", "b.safetensors", cwd=files).stdout


# -- natural key order ---------------------------------------------------------------------

def test_show_lists_layers_2_before_layers_10(files):
    lines = run("show", "a.pt", cwd=files).stdout.splitlines()
    layers = [line.split(" ")[0] for line in lines if line.startswith("layers.")]
    assert layers == [f"layers.{i}.weight" for i in range(12)]
    shown = json.loads(run("show", "a.pt", "--json", cwd=files).stdout)["manifest"]
    assert [row["key"] for row in shown if row["key"].startswith("layers.")] == layers


def test_diff_lists_shape_changes_in_natural_key_order(files):
    lines = run("diff", "a.pt", "b.safetensors", cwd=files).stdout.splitlines()
    shape = lines.index("  [shape] 2 keys: shape differs: load_state_dict raises 'size mismatch'")
    assert lines[shape + 1:shape + 4] == [
        "      layers.{2,10}.weight",
        "      layers.2.weight: [4, 4] in the checkpoint A, [4, 5] in the checkpoint B "
        "(dim 1: 4 -> 5)",
        "      layers.10.weight: [4, 4] in the checkpoint A, [4, 5] in the checkpoint B "
        "(dim 1: 4 -> 5)",
    ]


# -- diff FILE FILE names both as checkpoints ------------------------------------------------

def test_diff_of_two_files_calls_them_checkpoint_a_and_checkpoint_b_never_the_model(files):
    result = run("diff", "a.pt", "b.safetensors", cwd=files)
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert "model" not in result.stdout
    assert [line.split(":")[0] for line in lines if line.startswith("  [")] == [
        "  [missing] 1 key", "  [unexpected] 2 keys", "  [unexpected] 1 key", "  [rename] 1 key",
        "  [weight_norm_layout] 2 keys", "  [shape] 2 keys", "  [dtype] 1 key"]
    assert ("  [missing] 1 key: in the checkpoint B but not in the checkpoint A: a strict "
            "load_state_dict raises 'Missing key(s) in state_dict'") in lines
    assert ("  [unexpected] 2 keys: component `aux` (2 tensors) of the checkpoint A is absent "
            "from the checkpoint B") in lines
    assert any(line.startswith("  [rename] 1 key: norm.* in the checkpoint A is layer_norm.* in "
                               "the checkpoint B (same shapes and dtypes)") for line in lines)
    assert any(line.startswith("  [weight_norm_layout] 2 keys: weight_norm layout differs: "
                               "checkpoint A legacy (weight_g/weight_v) in 1 modules, "
                               "checkpoint B parametrized") for line in lines)
    assert ("  [dtype] 1 key: dtype differs: load_state_dict casts to the checkpoint B's dtype "
            "without a warning (an assign=True load keeps the checkpoint's instead)") in lines


def test_diff_of_two_factories_calls_them_model_a_and_model_b(files):
    lines = run("diff", "net:build", "net:deeper", cwd=files).stdout.splitlines()
    assert lines[1:3] == ["  [missing] 1 key: in the model B but not in the model A: a strict "
                          "load_state_dict raises 'Missing key(s) in state_dict'",
                          "      layers.12.weight"]


# -- --help --------------------------------------------------------------------------------

RST = ("``", ":class:", ":func:", ":meth:", ":mod:")


@pytest.mark.parametrize("command", [(), ("show",), ("diff",), ("matrix",)])
def test_help_has_no_rst_markup(tmp_path, command):
    result = run(*command, "--help", cwd=tmp_path)
    assert result.returncode == 0
    assert "pytest-ckpt" in result.stdout
    assert [markup for markup in RST if markup in result.stdout] == []


def test_pytest_help_of_the_plugin_options_is_plain_and_names_what_an_update_writes(
        pytester: pytest.Pytester):
    out = pytester.runpytest("--help").stdout.str()
    section = out[out.index("checkpoint compatibility (pytest-ckpt):"):]
    section = section[:section.index("\n\n")]
    assert [markup for markup in RST if markup in section] == []
    flat = " ".join(section.split())
    assert ("--ckpt-snapshot-update create and update pytest-ckpt's files only: manifest and "
            "schema snapshots and golden checkpoints") in flat


# -- | head ---------------------------------------------------------------------------------

def test_show_piped_into_a_reader_that_stops_early_exits_quietly(tmp_path):
    torch.save({f"layers.{i}.weight": torch.zeros(1) for i in range(6000)}, tmp_path / "big.pt")
    assert COMMAND is not None
    process = subprocess.Popen([COMMAND, "show", "big.pt"], cwd=tmp_path, env=_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None and process.stderr is not None
    first = process.stdout.readline()
    process.stdout.close()  # what `| head -1` does
    stderr = process.stderr.read()
    process.stderr.close()
    assert process.wait(timeout=60) == 141
    assert first.startswith(b"big.pt: torch, 6000 entries")
    assert stderr == b""


# -- matrix --------------------------------------------------------------------------------

def test_matrix_of_two_reports_from_the_same_environment_names_each_column_by_its_file(
        tmp_path):
    from pytest_ckpt.record.report import build_report, check_entry, column_label

    report = build_report([("t.py::test_a", check_entry("manifest"))])
    for lane in ("cpu", "cuda"):
        (tmp_path / lane).mkdir()
        (tmp_path / lane / "report.json").write_text(json.dumps(report))
    result = run("matrix", "cpu/report.json", "cuda/report.json", cwd=tmp_path)
    label = column_label(report["environment"])
    assert result.returncode == 0
    assert result.stdout.splitlines()[4] == (
        f"| test | check | {label} · cpu/report.json | {label} · cuda/report.json |")
    assert report["environment"]["platform"] in label
