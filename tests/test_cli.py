"""The ``pytest-ckpt`` console command, run as users run it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

COMMAND = shutil.which("pytest-ckpt", path=str(Path(sys.executable).parent))


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    assert COMMAND is not None
    return subprocess.run([COMMAND, *args], capture_output=True, text=True, cwd=cwd)


def legacy_net() -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return nn.Sequential(*(nn.utils.weight_norm(nn.Conv1d(4, 4, 3)) for _ in range(12)))


@pytest.fixture
def files(tmp_path: Path) -> Path:
    torch.save({"model": legacy_net().state_dict(), "epoch": 3}, tmp_path / "old.pt")
    save_file(legacy_net().state_dict(), str(tmp_path / "old.safetensors"))
    (tmp_path / "newnet.py").write_text(
        "import torch\n"
        "from torch import nn\n"
        "def build():\n"
        "    return nn.Sequential(*(nn.utils.parametrizations.weight_norm(nn.Conv1d(4, 4, 3))\n"
        "                           for _ in range(12)))\n"
        "def broken():\n"
        "    raise RuntimeError('no config')\n")
    return tmp_path


def test_show_prints_the_container_and_the_manifest(files):
    result = run("show", "old.pt", cwd=files)
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert lines[:3] == [
        "old.pt: torch, 36 entries, 672 elements "
        "(header read; tensor data not read or CRC-checked)",
        "container: {'model': state_dict}; also epoch (int)",
        "# pytest-ckpt manifest v1: 36 entries, 672 elements",
    ]
    assert "0.weight_g float32 [4,1,1] tensor" in lines


def test_show_json_of_a_safetensors_file(files):
    result = run("show", "old.safetensors", "--json", cwd=files)
    assert result.returncode == 0
    shown = json.loads(result.stdout)
    assert shown["format"] == "safetensors"
    assert shown["container"]["layout"] == "safetensors (flat tensor map)"
    assert {"key": "0.bias", "dtype": "float32", "shape": [4], "kind": "tensor",
            "tie": None} in shown["manifest"]


def test_diff_of_a_checkpoint_against_a_model_factory_names_the_weight_norm_layout(files):
    result = run("diff", "old.pt", "newnet:build", cwd=files)
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert lines[0] == ("old.pt (A) and newnet:build (B) differ: 1 finding "
                        "(36 entries in A, 36 in B)")
    assert lines[1].startswith("  [weight_norm_layout] 24 keys: weight_norm layout differs: "
                               "checkpoint legacy (weight_g/weight_v) in 12 modules, model "
                               "parametrized")
    assert "converts it inside Module.load_state_dict for 12 of 12 modules" in lines[1]
    assert lines[2:4] == ["      {0..11}.weight_g", "      {0..11}.weight_v"]


def test_diff_of_identical_files_is_compatible(files):
    result = run("diff", "old.pt", "old.safetensors", cwd=files)
    assert (result.returncode, result.stdout.strip()) == (
        0, "compatible: old.pt and old.safetensors have the same 36 keys, shapes and dtypes")


def test_diff_json_carries_the_findings(files):
    result = run("diff", "old.safetensors", "newnet:build", "--json", cwd=files)
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["compatible"] is False
    assert [f["kind"] for f in report["findings"]] == ["weight_norm_layout"]
    assert report["findings"][0]["folded"] == ["{0..11}.weight_g", "{0..11}.weight_v"]


@pytest.mark.parametrize(("args", "message"), [
    (("show", "missing.pt"), "pytest-ckpt: checkpoint missing.pt does not exist"),
    (("show", "newnet.py"), "pytest-ckpt: checkpoint newnet.py is not a checkpoint"),
    (("diff", "old.pt", "newnet:broken"),
     "pytest-ckpt: calling newnet:broken() raised RuntimeError: no config"),
    (("diff", "old.pt", "nosuch:build"), "pytest-ckpt: cannot import 'nosuch:build'"),
])
def test_bad_input_exits_2_with_one_clear_line(files, args, message):
    result = run(*args, cwd=files)
    assert result.returncode == 2
    assert result.stderr.startswith(message)
    assert "Traceback" not in result.stderr


def test_usage_errors_exit_2(files):
    assert run("diff", "old.pt", cwd=files).returncode == 2


def test_diff_of_a_tied_model_saved_one_key_per_tied_group_against_its_factory_is_compatible(
        tmp_path):
    (tmp_path / "tiedlm.py").write_text(
        "from torch import nn\n"
        "class LM(nn.Module):\n"
        "    def __init__(self, tied=True):\n"
        "        super().__init__()\n"
        "        self.embed = nn.Embedding(10, 4)\n"
        "        self.lm_head = nn.Linear(4, 10, bias=False)\n"
        "        if tied:\n"
        "            self.lm_head.weight = self.embed.weight\n"
        "def tied():\n"
        "    return LM()\n"
        "def untied():\n"
        "    return LM(tied=False)\n")
    from safetensors.torch import save_model

    sys.path.insert(0, str(tmp_path))
    try:
        import tiedlm
    finally:
        sys.path.remove(str(tmp_path))
    save_model(tiedlm.tied(), str(tmp_path / "lm.safetensors"))  # keeps embed.weight only

    result = run("diff", "lm.safetensors", "tiedlm:tied", cwd=tmp_path)
    assert (result.returncode, result.stdout.splitlines()) == (0, [
        "compatible: lm.safetensors and tiedlm:tied have the same 2 keys, shapes and dtypes",
        "note: lm_head.weight is not in A: B ties it to embed.weight, which A holds (one key "
        "per tied group, as safetensors saves; safetensors.torch.load_model and "
        "from_pretrained re-tie it, a strict load_state_dict raises Missing key(s))"])
    untied = run("diff", "lm.safetensors", "tiedlm:untied", cwd=tmp_path)
    assert untied.returncode == 1
    assert "lm_head.weight" in untied.stdout


def test_diff_of_a_gan_checkpoint_against_its_generator_compares_the_generator(tmp_path):
    (tmp_path / "gan.py").write_text(
        "from torch import nn\n"
        "def generator():\n"
        "    return nn.Sequential(nn.Conv1d(4, 8, 3), nn.Conv1d(8, 1, 3))\n"
        "def discriminator():\n"
        "    return nn.Sequential(*(nn.Conv1d(1, 1, 3) for _ in range(4)))\n")
    sys.path.insert(0, str(tmp_path))
    try:
        import gan
    finally:
        sys.path.remove(str(tmp_path))
    torch.save({"generator": gan.generator().state_dict(),  # HiFi-GAN's layout
                "discriminator": gan.discriminator().state_dict(), "steps": 10},
               tmp_path / "g_00010000")

    result = run("diff", "g_00010000", "gan:generator", cwd=tmp_path)
    assert (result.returncode, result.stdout.strip()) == (
        0, "compatible: g_00010000 and gan:generator have the same 4 keys, shapes and dtypes")
    assert run("diff", "g_00010000", "gan:discriminator", cwd=tmp_path).returncode == 0


def test_a_key_with_thousands_of_digits_is_shown_and_diagnosed_not_an_internal_error(tmp_path):
    # int() refuses more than 4300 digits: a file's key may hold more
    long = "a." + "1" * 5000 + ".w"
    save_file({long: torch.zeros(2), "b.w": torch.zeros(2)}, str(tmp_path / "new.safetensors"))
    save_file({"a.w": torch.zeros(2), "b.w": torch.zeros(2)}, str(tmp_path / "old.safetensors"))

    shown = run("show", "new.safetensors", cwd=tmp_path)
    diff = run("diff", "old.safetensors", "new.safetensors", cwd=tmp_path)

    assert shown.returncode == 0, shown.stderr
    assert f"{long} float32 [2] tensor" in shown.stdout.splitlines()
    assert diff.returncode == 1, diff.stderr
    assert [line.strip() for line in diff.stdout.splitlines()[2:5:2]] == [long, "a.w"]
