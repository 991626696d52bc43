"""``ckpt.golden`` and ``ckpt_roundtrip(golden=True)``: goldens written per torch version,
every golden loaded on every run, breaks diagnosed, updates that touch only their own file."""

from __future__ import annotations

import json
import shutil

import torch

from pytest_ckpt.record.goldens import torch_minor
from tests.conftest import lines

CURRENT = f"torch-{torch_minor()}"
GOLDENS = "__goldens__/test_a/test_golden"

# The model a maintainer publishes; HEAD, LAYOUT and ACT are edited by the scenarios.
GOLDEN_TEST = '''
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Linear(4, 8)
        self.conv = LAYOUT(nn.Conv1d(8, 8, 1))
        setattr(self, HEAD, nn.Linear(8, 2))

    def forward(self, x):
        hidden = ACT(self.encoder(x))
        hidden = self.conv(hidden.unsqueeze(-1)).squeeze(-1)
        return getattr(self, HEAD)(hidden)


def test_golden(ckpt):
    torch.manual_seed(1)
    ckpt.golden(Net(), inputs=lambda: torch.randn(3, 4))
'''
PARAMETRIZED = "nn.utils.parametrizations.weight_norm"
LEGACY = "nn.utils.weight_norm"


def _write(project, *, head="head", layout=PARAMETRIZED, act="torch.relu"):
    source = (GOLDEN_TEST.replace("HEAD", repr(head)).replace("LAYOUT", layout)
              .replace("ACT", act))
    project.makepyfile(test_a=source)


def _goldens(project) -> dict[str, bytes]:
    directory = project.path / GOLDENS
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir())}


def _pretend_written_by_another_torch(project, label: str) -> None:
    """Copy the current golden as if an update had run under another torch version."""
    directory = project.path / GOLDENS
    shutil.copy(directory / f"{CURRENT}.pt", directory / f"{label}.pt")
    sidecar = json.loads((directory / f"{CURRENT}.json").read_text())
    sidecar["torch"] = label.removeprefix("torch-") + ".0"
    (directory / f"{label}.json").write_text(json.dumps(sidecar))


def test_golden_life_cycle_create_load_and_provenance(project, mode):
    _write(project)
    first = project.runpytest(*mode)
    first.assert_outcomes(failed=1)
    first.stdout.fnmatch_lines([
        f"no golden checkpoint for this test yet ({GOLDENS})",
        "create it with: pytest --ckpt-snapshot-update 'test_a.py::test_golden'",
    ])
    project.runpytest("--ckpt-snapshot-update", *mode).assert_outcomes(passed=1)
    assert list(_goldens(project)) == [f"{CURRENT}.json", f"{CURRENT}.pt"]
    sidecar = json.loads((project.path / GOLDENS / f"{CURRENT}.json").read_text())
    assert sidecar["torch"] == torch.__version__
    assert sidecar["test"] == "test_a.py::test_golden"
    assert sidecar["seed"] == 1
    assert "conv.parametrizations.weight.original0 float32 [8,1,1] param" in sidecar["manifest"]
    assert sidecar["outputs"]["output"]["shape"] == [3, 2]
    loaded = torch.load(project.path / GOLDENS / f"{CURRENT}.pt", weights_only=True)
    assert loaded["encoder.weight"].shape == (8, 4)
    project.runpytest(*mode).assert_outcomes(passed=1)


def test_every_golden_is_loaded_and_the_failure_names_which_torch_broke(project, mode):
    _write(project)
    project.runpytest("--ckpt-snapshot-update", *mode).assert_outcomes(passed=1)
    _pretend_written_by_another_torch(project, "torch-1.99")
    project.runpytest(*mode).assert_outcomes(passed=1)

    _write(project, head="classifier")  # a renamed attribute
    result = project.runpytest(*mode)
    result.assert_outcomes(failed=1)
    for label in ("torch-1.99", CURRENT):
        result.stdout.fnmatch_lines(lines(
            f"golden checkpoint {label} ({GOLDENS}/{label}.pt, written with torch "
            f"{'1.99.0' if label == 'torch-1.99' else torch.__version__}, pytest-ckpt 0.1.0) "
            "no longer loads into Net as it did: rename (the load raised RuntimeError: "
            "Error(s) in loading state_dict for Net)",
            "  [rename] 2 keys: head.* in the golden is classifier.* in the model (same shapes "
            "and dtypes): rename the attribute back, or map the old keys in the load path",
        ))
    result.stdout.fnmatch_lines([
        f"fix: keep this published checkpoint loading (remap old keys in load=..., or map "
        f"old layouts in a load_state_dict pre-hook of the model); if breaking it is "
        f"intended, delete {CURRENT}.pt or rewrite it under torch {torch_minor()} with: "
        f"pytest --ckpt-snapshot-update 'test_a.py::test_golden'"])


def test_update_writes_only_this_torch_versions_golden(project, mode):
    _write(project)
    project.runpytest("--ckpt-snapshot-update", *mode).assert_outcomes(passed=1)
    _pretend_written_by_another_torch(project, "torch-1.99")
    before = _goldens(project)

    _write(project, head="classifier")
    update = project.runpytest("--ckpt-snapshot-update", *mode)
    update.assert_outcomes(failed=1)  # the other version's golden still does not load
    update.stdout.fnmatch_lines(["golden checkpoint torch-1.99 *no longer loads into Net*"])
    assert "golden checkpoint torch-2" not in update.stdout.str()
    after = _goldens(project)
    assert after["torch-1.99.pt"] == before["torch-1.99.pt"]
    assert after["torch-1.99.json"] == before["torch-1.99.json"]
    assert after[f"{CURRENT}.pt"] != before[f"{CURRENT}.pt"]
    assert not list((project.path / GOLDENS).glob(".*"))  # no temporary file left behind


def test_an_unchanged_model_leaves_its_golden_untouched_on_update(project):
    _write(project)
    project.runpytest("--ckpt-snapshot-update").assert_outcomes(passed=1)
    sidecar = project.path / GOLDENS / f"{CURRENT}.json"
    sidecar.write_text(sidecar.read_text().replace('"python"', '"python" ', 1))
    edited = _goldens(project)
    project.runpytest("--ckpt-snapshot-update").assert_outcomes(passed=1)
    assert _goldens(project) == edited


def test_weight_norm_switch_breaks_the_golden_with_a_layout_finding(project):
    _write(project, layout=PARAMETRIZED)
    project.runpytest("--ckpt-snapshot-update").assert_outcomes(passed=1)
    _write(project, layout=LEGACY)
    # the legacy API's deprecation warning: a UserWarning on torch 2.1, a FutureWarning later
    result = project.runpytest("-W", "ignore::FutureWarning", "-W", "ignore::UserWarning")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(lines(
        f"golden checkpoint {CURRENT} * no longer loads into Net as it did: weight_norm_layout "
        "(the load raised RuntimeError: Error(s) in loading state_dict for Net)",
        "  [weight_norm_layout] 2 keys: weight_norm layout differs: golden parametrized "
        "(parametrizations.weight.original0/1) in 1 modules, model legacy (weight_g/weight_v); "
        "torch converts legacy -> parametrized only, never back: map "
        "parametrizations.weight.original0/1 to weight_g/weight_v in the load path",
        "      conv.parametrizations.weight.original0",
        "      conv.parametrizations.weight.original1",
        "      modules: conv",
    ))


def test_changed_forward_breaks_the_output_fingerprint(project):
    _write(project)
    project.runpytest("--ckpt-snapshot-update").assert_outcomes(passed=1)
    _write(project, act="torch.tanh")
    result = project.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(lines(
        f"golden checkpoint {CURRENT} * no longer loads into Net as it did: output",
        "  [output] 1 key: eval-mode outputs on inputs= differ from those recorded when the "
        f"golden was written (torch {torch.__version__})",
        "      output",
        "      output: max abs error * on 6 sampled values *tolerance 0.0001",
    ))


def test_a_golden_over_the_size_limit_is_refused_and_nothing_is_written(project):
    _write(project)
    project.makeini("[pytest]\naddopts = -p no:cacheprovider\nckpt_golden_max_bytes = 1KiB\n")
    result = project.runpytest("--ckpt-snapshot-update")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        f"golden {project.path / GOLDENS / CURRENT}.pt would be 0.00 MiB (* bytes), over the "
        "limit of 0.00 MiB (1024 bytes): goldens are meant to be small and committed",
        "fix: build the golden's model from a tiny config (few layers, small widths), or raise "
        "the limit with max_bytes= or the ini option ckpt_golden_max_bytes",
    ])
    assert not (project.path / "__goldens__").exists()


def test_a_tampered_golden_is_reported_by_file(project):
    _write(project)
    project.runpytest("--ckpt-snapshot-update").assert_outcomes(passed=1)
    golden = project.path / GOLDENS / f"{CURRENT}.pt"
    golden.write_bytes(golden.read_bytes()[:-40])
    result = project.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        f"golden checkpoint {CURRENT} * cannot be read: checkpoint {golden} does not match "
        f"the sha256 in {CURRENT}.json: it changed after it was written (or an update was "
        "interrupted between the two files)",
        f"fix: restore {CURRENT}.pt and {CURRENT}.json from version control, or rewrite both "
        f"under {CURRENT.replace('-', ' ')} with: pytest --ckpt-snapshot-update "
        "'test_a.py::test_golden'"])


def test_marker_golden_uses_the_marker_inputs_and_a_fresh_target(project):
    project.makepyfile(test_m='''
        import pytest
        import torch
        from nets import Net

        @pytest.mark.ckpt_roundtrip(golden=True, inputs=lambda: torch.randn(5, 4))
        def test_net():
            return Net().eval()
    ''')
    project.runpytest("--ckpt-snapshot-update").assert_outcomes(passed=1)
    sidecar = json.loads((project.path / "__goldens__/test_m/test_net" /
                          f"{CURRENT}.json").read_text())
    assert sidecar["seed"] == 0 and sidecar["inputs"]["input"]["shape"] == [5, 4]
    project.runpytest().assert_outcomes(passed=1)


def test_marker_golden_takes_only_booleans(project):
    project.makepyfile(test_m='''
        import pytest
        from nets import Net

        @pytest.mark.ckpt_roundtrip(golden="yes")
        def test_net():
            return Net()
    ''')
    result = project.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["ckpt_roundtrip used wrongly in test_m.py::test_net: golden= "
                                 "takes True or False, got 'yes'"])


def test_a_raising_save_to_is_one_paragraph_with_its_frame(project):
    project.makepyfile(test_a='''
        from nets import Net

        def save(model, path):
            raise OSError("disk full")

        def test_golden(ckpt):
            ckpt.golden(Net(), save_to=save)
    ''')
    result = project.runpytest("--ckpt-snapshot-update")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(lines(
        "the project's saver (save_to=) raised OSError: disk full writing the golden of "
        "test_a.py::test_golden",
        '  raised at */test_a.py:* in save: raise OSError("disk full")',
        "fix: make save_to(model, path) write the checkpoint to path",
    ))
    assert "During handling of the above exception" not in result.stdout.str()


def test_a_model_built_from_a_random_seed_leaves_its_golden_byte_identical_on_update(
        project, mode):
    # as the README shows it: no manual_seed, so every run builds different values
    project.makepyfile(test_a=GOLDEN_TEST.replace("    torch.manual_seed(1)\n", "")
                       .replace("HEAD", "'head'").replace("LAYOUT", PARAMETRIZED)
                       .replace("ACT", "torch.relu"))
    project.runpytest("--ckpt-snapshot-update", *mode).assert_outcomes(passed=1)
    written = _goldens(project)
    project.runpytest("--ckpt-snapshot-update", *mode).assert_outcomes(passed=1)
    assert _goldens(project) == written
    project.runpytest(*mode).assert_outcomes(passed=1)


THREADS_TEST = '''
import torch
from torch import nn


class ThreadSensitive(nn.Module):
    """Outputs that depend on the intra-op thread count, as float reductions do."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Linear(4, 4)

    def forward(self, x):
        return self.scale(x) * torch.get_num_threads()


def test_golden(ckpt):
    torch.manual_seed(1)
    ckpt.golden(ThreadSensitive(), inputs=lambda: torch.randn(3, 4))
'''


def test_a_golden_recorded_in_one_process_compares_bitwise_under_xdist(project):
    project.makepyfile(test_a=THREADS_TEST)
    project.runpytest("--ckpt-snapshot-update").assert_outcomes(passed=1)
    recorded = json.loads((project.path / GOLDENS / f"{CURRENT}.json").read_text())
    assert recorded["threads"] == torch.get_num_threads()
    result = project.runpytest("-n", "2", "-rA")
    result.assert_outcomes(passed=1)
    assert "not bitwise" not in result.stdout.str()


def test_a_not_bitwise_note_says_what_differed_from_the_recording(project):
    project.makepyfile(test_a=THREADS_TEST.replace(
        "        return self.scale(x) * torch.get_num_threads()",
        "        CALLS.append(1)  # each call drifts by one part in 10 million\n"
        "        return self.scale(x) * (1 + 1e-7 * len(CALLS))").replace(
        "class ThreadSensitive", "CALLS = []\n\n\nclass ThreadSensitive"))
    result = project.runpytest("--ckpt-snapshot-update")  # written, then loaded and compared
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(lines(
        f"*outputs within rtol * of those recorded under torch {torch.__version__} with "
        f"{torch.get_num_threads()} intra-op threads (this run: the same; the model's kernels "
        "are not deterministic on this machine), not bitwise equal*"))
