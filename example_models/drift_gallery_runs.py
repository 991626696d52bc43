"""The drift classes only a real run shows: a maintainer's test file run by pytest (in this
process, with the plugin as installed) and ``pytest-ckpt diff`` run on real files. Each case
is the test a maintainer writes, with the loader or resume code they really have."""

from __future__ import annotations

import contextlib
import io
import tempfile
import textwrap
from pathlib import Path
from typing import Any

import pytest

Result = tuple[str, list[str], str]  # (title, the lines shown, the fix line)


# (title, test body: one test function named test_case, given ckpt and tmp_path)
RUN_CASES: list[tuple[str, str]] = [
    ("strict=False remap one character off (strict-load guard)", '''
        @pytest.mark.ckpt_strict_loads
        def test_case(tmp_path):
            save_sed_checkpoint(tmp_path / "sed.pt")
            load_sed(CLAP(), tmp_path / "sed.pt")
    '''),
    ("BatchNorm num_batches_tracked dropped, _metadata version 2", '''
        def test_case(ckpt, tmp_path):
            save_without_count(tmp_path / "bn.pt", version=2)
            ckpt.assert_loads(batchnorm_net(), tmp_path / "bn.pt")
    '''),
    ("BatchNorm num_batches_tracked absent, momentum=None, hand-copy loader", '''
        def test_case(ckpt, tmp_path):
            save_without_count(tmp_path / "bn.pt", version=1, momentum=None)
            ckpt.assert_loads(batchnorm_net(None), tmp_path / "bn.pt", load_from=copy_by_hand)
    '''),
    ("assign=True load that changes the model's dtype", '''
        def test_case(ckpt, tmp_path):
            torch.save(Scaled().half().state_dict(), tmp_path / "half.pt")
            ckpt.assert_loads(Scaled(), tmp_path / "half.pt", load_from=load_assigned)
    '''),
    ("cast that merges distinct values (fp32 checkpoint, bf16 model)", '''
        def test_case(ckpt, tmp_path):
            torch.save(Scaled().state_dict(), tmp_path / "full.pt")
            ckpt.assert_loads(Scaled().to(torch.bfloat16), tmp_path / "full.pt")
    '''),
    ("loader strips only module. of module._orig_mod.", '''
        def test_case(ckpt, tmp_path):
            torch.save({"module._orig_mod." + k: v for k, v in blocks().state_dict().items()},
                       tmp_path / "c.pt")
            ckpt.assert_loads(blocks(), tmp_path / "c.pt", load_from=strip_ddp)
    '''),
    ("blanket gamma/beta rename that hits a layer scale", '''
        def test_case(ckpt, tmp_path):
            state = {k.replace("norm.weight", "norm.gamma").replace("norm.bias", "norm.beta"): v
                     for k, v in blocks().state_dict().items()}
            torch.save(state, tmp_path / "g.pt")
            ckpt.assert_loads(blocks(), tmp_path / "g.pt", load_from=legacy_norm_names)
    '''),
]

# the trainer's resume bugs (example_models/classifier_trainer.py), by title
_RESUME_BUGS = (
    ("scheduler resumed without initial_lr (optimizer saved as None)",
     "optimizer saved as None"),
    ("KeyError raised by the resume code itself", "lr_initial typo"),
    ("optimizer state matched by position (BatchNorm frozen on resume)", "bn frozen"),
    ("RNG state refused by weights_only (numpy RNG pickled)", "numpy rng saved"),
    ("RNG state saved as floats", "rng saved as floats"),
)
RUN_CASES += [(title, f'''
        def test_case(ckpt):
            ckpt.assert_resumes(Trainer({bug!r}), steps=6, at=3)
    ''') for title, bug in _RESUME_BUGS]


class _Failures:
    """Collects the failure text of each test of an in-process pytest run."""

    def __init__(self) -> None:
        self.texts: dict[str, str] = {}

    def pytest_runtest_logreport(self, report: Any) -> None:
        if report.failed and report.when == "call":
            self.texts[report.nodeid.split("::")[0]] = report.longreprtext


def run_tests(cases: list[tuple[str, str]]) -> list[Result]:
    """Run each case as its own test file with pytest, in this process."""
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        (root / "conftest.py").write_text("")
        for index, (_, body) in enumerate(cases):
            (root / f"test_case_{index:02d}.py").write_text(
                "import pytest\nimport torch\nfrom torch import nn\n\n"
                "from example_models.classifier_trainer import Trainer\n"
                "from example_models.drift_cases import *  # noqa: F403\n\n"
                + textwrap.dedent(body))
        failures = _Failures()
        with contextlib.redirect_stdout(io.StringIO()):
            pytest.main([str(root), "-q", "-p", "no:randomly", "-p", "no:cacheprovider",
                         "-W", "ignore::DeprecationWarning", "--rootdir", str(root),
                         "--basetemp", str(root / "tmp")],
                        plugins=[failures])
        results = []
        for index, (title, _) in enumerate(cases):
            text = failures.texts.get(f"test_case_{index:02d}.py", "(the test passed)")
            shown = text.replace(str(root), "<tmp>").replace(
                f"{Path(__file__).parents[1]}/", "").splitlines()
            results.append((title, shown[:-1], shown[-1]))
    return results


def _training_checkpoints(folder: Path) -> list[str]:
    """A plain training script's checkpoint and a Lightning-shaped one of the same model."""
    import torch
    from torch import nn

    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=10)
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "iteration": 10}, folder / "a.pth")
    torch.save({"state_dict": model.state_dict(), "optimizer_states": [optimizer.state_dict()],
                "lr_schedulers": [scheduler.state_dict()], "epoch": 1, "global_step": 10,
                "pytorch-lightning_version": "2.1.0"}, folder / "b.ckpt")
    return ["diff", "a.pth", "b.ckpt"]


def _legacy_file(folder: Path) -> list[str]:
    import torch
    from torch import nn

    model = nn.Linear(4, 4)
    torch.save(model.state_dict(), folder / "old.pth", _use_new_zipfile_serialization=False)
    torch.save(model.state_dict(), folder / "new.pth")
    return ["diff", "old.pth", "new.pth"]


CLI_CASES: list[tuple[str, Any]] = [
    ("diff of two training checkpoints (same weights, other containers)",
     _training_checkpoints),
    ("diff of a legacy-format (non-zip) file", _legacy_file),
]


def run_cli(cases: list[tuple[str, Any]]) -> list[Result]:
    """Run ``pytest-ckpt`` on the files each case writes, in this process."""
    import os

    from pytest_ckpt.cli import main

    results = []
    for title, make in cases:
        with tempfile.TemporaryDirectory() as folder:
            before = Path.cwd()
            os.chdir(folder)
            try:
                argv = make(Path(folder))
                out = io.StringIO()
                with contextlib.redirect_stdout(out):
                    main(argv)
            finally:
                os.chdir(before)
        shown = [f"$ pytest-ckpt {' '.join(argv)}", *out.getvalue().splitlines()]
        last = shown[-1] if shown[-1].startswith("fix:") else ""
        results.append((title, shown[:-1] if last else shown, last))
    return results
