"""The ecosystem's checkpoint forms, read wherever pytest-ckpt reads checkpoints (``show``,
``diff``, ``assert_manifest``, ``assert_loads``, ``assert_schema``): save_pretrained
directories, sharded checkpoints (their directory or their index), Lightning ``.ckpt``
files, accelerate ``save_state`` folders, and containers whose weights sit under any entry.
Each form is written here with safetensors, torch.save and json, as its tool lays it out."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from pytest_ckpt import cli
from pytest_ckpt.checkpoint.manifest import Manifest
from tests.conftest import lines

MODELS = '''
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, hidden=8):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(4, hidden), nn.ReLU(), nn.Linear(hidden, hidden))
        self.norm = nn.BatchNorm1d(hidden)
        self.head = nn.Linear(hidden, 2)


class Generator(nn.Module):
    def __init__(self, extra=False):
        super().__init__()
        self.conv_pre = nn.Conv1d(4, 8, 3)
        self.conv_post = nn.Conv1d(8, 1, 3)
        if extra:
            self.refiner = nn.Conv1d(1, 1, 3)


class Discriminator(nn.Module):
    def __init__(self):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv1d(16, 16, 5) for _ in range(3))
'''
_MODELS: dict[str, Any] = {}
exec(compile(MODELS, "models.py", "exec"), _MODELS)  # the same classes the inner tests import
Net, Generator, Discriminator = _MODELS["Net"], _MODELS["Generator"], _MODELS["Discriminator"]
HEADER_ONLY = "(header read; tensor data not read or CRC-checked)"
SHARDS_FIX = ("fix: the index and its shards come from different saves: download the "
              "checkpoint again (the index and every shard), or re-save it with save_pretrained")
INDEX_FIX = ("fix: re-create the checkpoint with save_pretrained (it writes the index and its "
             "shards together), or download the index file again")


# -- the forms, written as their tools write them ------------------------------------------

def save_pretrained(directory: Path, state: dict[str, torch.Tensor],
                    weights: str = "model.safetensors") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps({"hidden": 8}))
    if weights.endswith(".safetensors"):
        save_file(state, str(directory / weights))
    else:
        torch.save(state, directory / weights)
    return directory


def save_sharded(directory: Path, state: dict[str, torch.Tensor], *,
                 kind: str = "safetensors") -> Path:
    """Two shards in key order and their index (``max_shard_size`` cut after ``head``)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps({"hidden": 8}))
    keys = sorted(state)
    weight_map = {}
    for number, part in enumerate([keys[:6], keys[6:]], start=1):
        tensors = {key: state[key] for key in part}
        if kind == "safetensors":
            name = f"model-{number:05d}-of-00002.safetensors"
            save_file(tensors, str(directory / name))
        else:
            name = f"pytorch_model-{number:05d}-of-00002.bin"
            torch.save(tensors, directory / name)
        weight_map.update(dict.fromkeys(part, name))
    index = "model.safetensors.index.json" if kind == "safetensors" else \
        "pytorch_model.bin.index.json"
    total = sum(tensor.numel() * tensor.element_size() for tensor in state.values())
    (directory / index).write_text(json.dumps({"metadata": {"total_size": total},
                                               "weight_map": weight_map}, indent=2))
    return directory


def trained(model: torch.nn.Module) -> tuple[Any, Any]:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 2)
    for parameter in model.parameters():
        parameter.grad = torch.ones_like(parameter)
    optimizer.step()
    scheduler.step()
    return optimizer, scheduler


def save_lightning(path: Path, hyper_parameters: Any = None) -> Path:
    """A Lightning ``.ckpt`` as ``Trainer.save_checkpoint`` lays it out."""
    model = Net()
    optimizer, scheduler = trained(model)
    torch.save({
        "epoch": 2, "global_step": 40, "pytorch-lightning_version": "2.4.0",
        "state_dict": model.state_dict(),
        "loops": {"fit_loop": {"state_dict": {}, "epoch_loop.state_dict": {
            "_batches_that_stepped": 40}}},
        "callbacks": {"ModelCheckpoint{'monitor': 'val_loss', 'mode': 'min'}": {
            "best_model_score": torch.tensor(0.25), "best_model_path": "epoch=1.ckpt"}},
        "optimizer_states": [optimizer.state_dict()],
        "lr_schedulers": [scheduler.state_dict()],
        "hparams_name": "kwargs",
        "hyper_parameters": {"hidden": 8} if hyper_parameters is None else hyper_parameters,
    }, path)
    return path


def save_accelerate(directory: Path, *models: torch.nn.Module, rng_state: Any = None) -> Path:
    """An accelerate ``save_state`` folder: each model's weights, optimizer, scheduler, the
    process's RNG states (numpy's generator among them) and a registered object."""
    directory.mkdir(parents=True, exist_ok=True)
    for number, model in enumerate(models):
        suffix = f"_{number}" if number else ""
        save_file(model.state_dict(), str(directory / f"model{suffix}.safetensors"))
    optimizer, scheduler = trained(models[0])
    torch.save(optimizer.state_dict(), directory / "optimizer.bin")
    torch.save(scheduler.state_dict(), directory / "scheduler.bin")
    states = {"step": 40, "random_state": random.getstate(),
              "numpy_random_seed": np.random.get_state(),
              "torch_manual_seed": torch.get_rng_state()}
    torch.save(states if rng_state is None else rng_state, directory / "random_states_0.pkl")
    torch.save({"ema_decay": 0.999, "updates": 40}, directory / "custom_checkpoint_0.pkl")
    return directory


def save_hifigan(path: Path) -> Path:
    torch.save({"generator": Generator().state_dict(),
                "discriminator": Discriminator().state_dict(), "steps": 1000}, path)
    return path


def show(path: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli.main(["show", str(path), *args])
    out, err = capsys.readouterr()
    return code, out, err


def manifest_lines(state: dict[str, torch.Tensor]) -> list[str]:
    return Manifest.from_state_dict(state).render().splitlines()


# -- show and diff -------------------------------------------------------------------------

@pytest.mark.parametrize(("weights", "kind", "container"), [
    ("model.safetensors", "safetensors", "safetensors (flat tensor map) in model.safetensors"),
    ("pytorch_model.bin", "torch", "bare state_dict in pytorch_model.bin"),
])
def test_show_reads_a_save_pretrained_directory_through_its_weights_file(
        tmp_path, capsys, weights, kind, container):
    state = Net().state_dict()
    directory = save_pretrained(tmp_path / "release", state, weights)
    code, out, err = show(directory, capsys)
    assert (code, err) == (0, "")
    assert out.splitlines()[:3] == [
        f"{directory}: save_pretrained directory ({kind}), 11 entries, 163 elements "
        f"{HEADER_ONLY}",
        f"container: {container}",
        f"note: save_pretrained directory: weights read from {weights}",
    ]
    assert sorted(out.splitlines()[4:]) == sorted(manifest_lines(state)[1:])


@pytest.mark.parametrize(("kind", "index", "first", "last"), [
    ("safetensors", "model.safetensors.index.json", "model-00001-of-00002.safetensors",
     "model-00002-of-00002.safetensors"),
    ("torch", "pytorch_model.bin.index.json", "pytorch_model-00001-of-00002.bin",
     "pytorch_model-00002-of-00002.bin"),
])
def test_show_reads_a_sharded_checkpoint_from_its_directory_or_its_index(
        tmp_path, capsys, kind, index, first, last):
    state = Net().state_dict()
    directory = save_sharded(tmp_path / "sharded", state, kind=kind)
    code, out, _ = show(directory, capsys)
    assert code == 0
    assert out.splitlines()[:3] == [
        f"{directory}: save_pretrained directory (sharded {kind}), 11 entries, 163 elements "
        f"{HEADER_ONLY}",
        f"container: 2 {kind} shards named by {index} (flat tensor map); also "
        "metadata.total_size (int)",
        f"note: save_pretrained directory: weights read from 2 shards ({first}, {last}), each "
        f"header-only, as {index} maps 11 keys to them",
    ]
    code, from_index, _ = show(directory / index, capsys)
    assert code == 0
    assert from_index.splitlines()[0].startswith(f"{directory / index}: sharded {kind}, ")
    assert sorted(from_index.splitlines()[4:]) == sorted(out.splitlines()[4:]) == sorted(
        manifest_lines(state)[1:])


def test_diff_of_a_sharded_checkpoint_and_its_single_file_is_compatible(tmp_path, capsys):
    state = Net().state_dict()
    sharded = save_sharded(tmp_path / "sharded", state)
    save_file(state, str(tmp_path / "whole.safetensors"))
    assert cli.main(["diff", str(sharded), str(tmp_path / "whole.safetensors")]) == 0
    assert capsys.readouterr().out.strip() == (
        f"compatible: {sharded} and {tmp_path / 'whole.safetensors'} have the same 11 keys, "
        "shapes and dtypes")


def test_a_missing_shard_is_named_by_the_index_with_the_keys_it_held(tmp_path, capsys):
    directory = save_sharded(tmp_path / "sharded", Net().state_dict())
    (directory / "model-00002-of-00002.safetensors").unlink()
    code, _, err = show(directory, capsys)
    assert code == 2
    assert err.splitlines() == [
        f"pytest-ckpt: checkpoint {directory}/model.safetensors.index.json names a shard "
        "that is not beside it (1 of 2): model-00002-of-00002.safetensors, holding 5 "
        "keys: norm.bias, norm.num_batches_tracked, norm.running_mean, norm.running_var "
        "(and 1 more)",
        "fix: put every shard the index names beside it (a download that stopped early "
        "leaves some out), or re-save the checkpoint with save_pretrained",
    ]


def test_a_shard_that_lacks_a_key_the_index_maps_to_it_is_named(tmp_path, capsys):
    state = Net().state_dict()
    directory = save_sharded(tmp_path / "sharded", state)
    save_file({key: state[key] for key in ("norm.bias", "norm.num_batches_tracked",
                                           "norm.running_mean", "norm.running_var")},
              str(directory / "model-00002-of-00002.safetensors"))
    code, _, err = show(directory, capsys)
    assert code == 2
    assert err.splitlines() == [
        f"pytest-ckpt: checkpoint {directory}/model-00002-of-00002.safetensors lacks 1 key "
        "that model.safetensors.index.json maps to it: norm.weight", SHARDS_FIX]


def test_a_key_a_shard_holds_that_the_index_does_not_map_to_it_is_named(tmp_path, capsys):
    state = Net().state_dict()
    directory = save_sharded(tmp_path / "sharded", state)
    first = {key: state[key] for key in sorted(state)[:6]}
    save_file({**first, "norm.weight": state["norm.weight"], "ema.0.weight": torch.ones(2),
               "ema.1.weight": torch.ones(2)},
              str(directory / "model-00001-of-00002.safetensors"))
    code, _, err = show(directory, capsys)
    assert code == 2
    assert err.splitlines() == [
        f"pytest-ckpt: checkpoint {directory}/model-00001-of-00002.safetensors holds 3 keys "
        "that model.safetensors.index.json does not map to it (1 of them to another shard): "
        "ema.{0,1}.weight, norm.weight", SHARDS_FIX]


@pytest.mark.parametrize("shard", ["../outside.safetensors", "/tmp/outside.safetensors",
                                   "sub/model.safetensors", "..", ""])
def test_an_index_naming_a_shard_outside_its_directory_is_refused_unopened(
        tmp_path, capsys, shard):
    state = Net().state_dict()
    save_file(state, str(tmp_path / "outside.safetensors"))  # readable, were it opened
    directory = tmp_path / "release"
    directory.mkdir()
    (directory / "sub").mkdir()
    save_file(state, str(directory / "sub" / "model.safetensors"))
    index = directory / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": dict.fromkeys(state, shard)}))
    code, _, err = show(directory, capsys)
    assert code == 2
    assert err.splitlines() == [
        f"pytest-ckpt: checkpoint {index} is not a usable sharded checkpoint index: it maps "
        f"'encoder.0.weight' to {shard!r}: a shard must be a plain file name beside the index "
        "(no directories, no '..'); refused without opening it", INDEX_FIX]


@pytest.mark.parametrize(("text", "why"), [
    ('{"weight_map": {"w": 3}}', "it maps 'w' to a JSON int, not a shard file name"),
    ('{"weight_map": {"w": "a.safetensors", "w": "b.safetensors"}}',
     "it is not JSON (key 'w' appears twice)"),
    ('{"weight_map": {"w": "a.safetensors"', "it is not JSON (Expecting"),
    ('{"weight_map": ' + "[" * 100_000 + "]" * 100_000 + "}", "it is not JSON ("),
])
def test_a_malformed_index_is_one_paragraph_naming_it(tmp_path, capsys, text, why):
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(text)
    code, _, err = show(index, capsys)
    assert code == 2
    first, fix = err.splitlines()
    assert first.startswith(f"pytest-ckpt: checkpoint {index} is not a usable sharded "
                            f"checkpoint index: {why}")
    assert fix == INDEX_FIX


def test_an_index_larger_than_the_bound_is_refused_unread(tmp_path, capsys, monkeypatch):
    from pytest_ckpt.formats import sharded

    monkeypatch.setattr(sharded, "MAX_INDEX_BYTES", 100)
    directory = save_sharded(tmp_path / "sharded", Net().state_dict())
    code, _, err = show(directory, capsys)
    assert code == 2
    assert err.splitlines()[0] == (
        f"pytest-ckpt: checkpoint {directory}/model.safetensors.index.json is larger than a "
        "sharded checkpoint index can be (100 bytes): refused without reading it whole")


def test_show_of_an_accelerate_folder_names_the_weights_and_the_rng_state_it_does_not_read(
        tmp_path, capsys):
    directory = save_accelerate(tmp_path / "checkpoint_40", Net(), Generator())
    code, out, _ = show(directory, capsys)
    assert code == 0
    shown = out.splitlines()
    assert shown[:5] == [
        f"{directory}: accelerate save_state directory (safetensors), 11 entries, 163 "
        f"elements {HEADER_ONLY}",
        "container: accelerate save_state directory, weights in model.safetensors; also "
        "custom_checkpoint_0 (custom_checkpoint_0.pkl); also model_1 (model_1.safetensors); "
        "also optimizer (optimizer.bin); also random_states_0 (random_states_0.pkl); also "
        "scheduler (scheduler.bin)",
        "note: accelerate save_state directory: weights read from model.safetensors",
        "note: beside the weights, not in the manifest (ckpt.assert_schema describes them): "
        "custom_checkpoint_0.pkl, model_1.safetensors, optimizer.bin, random_states_0.pkl, "
        "scheduler.bin",
        shown[4],
    ]
    assert shown[4].startswith("note: random_states_0.pkl is present but not read: "
                               "weights_only=True refuses its numpy globals (numpy.")
    assert shown[4].endswith("); nothing from it was executed")


def test_show_says_which_of_several_state_dicts_it_read_and_the_others(tmp_path, capsys):
    path = save_hifigan(tmp_path / "g_00100000.pt")
    code, out, _ = show(path, capsys)
    assert code == 0
    assert out.splitlines()[1:3] == [
        "container: {'discriminator': state_dict}; also generator (OrderedDict); also steps "
        "(int)",
        "note: weights read from ['discriminator'] (the largest; also a state_dict: "
        "'generator')"]
    code, out, _ = show(path, capsys, "--json")
    container = json.loads(out)["container"]
    assert (container["weights_entry"], container["state_dicts"]) == (
        "discriminator", ["discriminator", "generator"])


@pytest.mark.parametrize("entry", ["net", "ema", "generator"])
def test_weights_under_any_entry_name_are_the_manifest(tmp_path, capsys, entry):
    state = Net().state_dict()
    torch.save({entry: state, "epoch": 3}, tmp_path / "last.pt")
    code, out, _ = show(tmp_path / "last.pt", capsys)
    assert code == 0
    assert out.splitlines()[1] == f"container: {{{entry!r}: state_dict}}; also epoch (int)"
    assert sorted(out.splitlines()[3:]) == sorted(manifest_lines(state)[1:])


def test_a_directory_of_no_known_form_names_what_it_looked_for(tmp_path, capsys):
    (tmp_path / "weights.npz").write_bytes(b"PK\x03\x04")
    code, _, err = show(tmp_path, capsys)
    assert code == 2
    assert err.splitlines() == [
        f"pytest-ckpt: checkpoint {tmp_path} is a directory without a .metadata file "
        "(torch.distributed.checkpoint), a model.safetensors or a pytorch_model.bin (or their "
        ".index.json): not a checkpoint directory",
        "fix: pass a checkpoint file, a save_pretrained or accelerate save_state directory, or "
        "the directory torch.distributed.checkpoint.save wrote"]


# -- the fixture -----------------------------------------------------------------------------

def test_assert_manifest_and_assert_loads_read_pretrained_and_sharded_directories(
        pytester, mode):
    pytester.makepyfile(models=MODELS)
    state = Net().state_dict()
    save_pretrained(pytester.path / "release", state)
    save_sharded(pytester.path / "sharded", state, kind="torch")
    pytester.makepyfile(test_a='''
        from models import Net

        def test_manifests(ckpt):
            ckpt.assert_manifest("release", name="release")
            ckpt.assert_manifest("sharded/pytorch_model.bin.index.json", name="sharded")

        def test_loads(ckpt):
            ckpt.assert_loads(Net(), "release")
            ckpt.assert_loads(Net(), "sharded")
    ''')
    pytester.runpytest("--ckpt-snapshot-update", *mode).assert_outcomes(passed=2)
    snapshots = pytester.path / "__snapshots__" / "test_a"
    expected = Manifest.from_state_dict(state).render()
    assert (snapshots / "test_manifests[release].manifest.txt").read_text() == expected
    assert (snapshots / "test_manifests[sharded].manifest.txt").read_text() == expected
    pytester.runpytest(*mode).assert_outcomes(passed=2)


def test_a_round_trip_through_a_save_pretrained_saver_reads_the_directory_it_wrote(pytester):
    pytester.makepyfile(models=MODELS, test_a='''
        import json
        from safetensors.torch import save_file
        from models import Net

        def save_pretrained(model, directory):
            directory.mkdir()
            (directory / "config.json").write_text(json.dumps({"hidden": 8}))
            save_file(model.state_dict(), str(directory / "model.safetensors"))

        def test_release(ckpt):
            ckpt.roundtrip(Net(), factory=Net, save_to=save_pretrained, snapshot=False)
    ''')
    pytester.runpytest().assert_outcomes(passed=1)


def test_a_sharded_load_merges_the_shards_and_an_inconsistent_one_fails_naming_the_shard(
        pytester):
    pytester.makepyfile(models=MODELS)
    state = Net().state_dict()
    save_sharded(pytester.path / "sharded", state)
    broken = save_sharded(pytester.path / "broken", state)
    save_file({key: state[key] for key in sorted(state)[:5]},
              str(broken / "model-00001-of-00002.safetensors"))
    pytester.makepyfile(test_a='''
        from models import Net

        def test_loads(ckpt):
            ckpt.assert_loads(Net(), "sharded")

        def test_broken(ckpt):
            ckpt.assert_loads(Net(), "broken")
    ''')
    result = pytester.runpytest()
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines([
        "checkpoint broken/model-00001-of-00002.safetensors lacks 1 key that "
        "model.safetensors.index.json maps to it: head.weight", SHARDS_FIX])


def test_assert_loads_reads_the_entry_matching_the_model_and_says_so(pytester, mode):
    pytester.makepyfile(models=MODELS)
    save_hifigan(pytester.path / "g_00100000.pt")
    pytester.makepyfile(test_a='''
        from models import Generator

        def test_generator(ckpt):
            ckpt.assert_loads(Generator(), "g_00100000.pt")

        def test_generator_with_a_new_layer(ckpt):
            ckpt.assert_loads(Generator(extra=True), "g_00100000.pt")
    ''')
    result = pytester.runpytest(*mode)
    result.assert_outcomes(passed=1, failed=1)
    choice = ("weights read from ['generator'] (matches the model; also a state_dict: "
              "'discriminator')")
    result.stdout.fnmatch_lines(lines(
        "checkpoint g_00100000.pt does not load into Generator as declared", choice,
        "  [missing_component] 2 keys: component `refiner`*"))
    result.stdout.fnmatch_lines(lines("*pytest-ckpt notes*",
                                      f"test_a.py::test_generator loads: {choice}"))


def test_the_strict_load_guard_names_the_entry_matching_the_model(pytester):
    pytester.makepyfile(models=MODELS)
    save_hifigan(pytester.path / "g_00100000.pt")
    pytester.makepyfile(test_a='''
        import torch
        from models import Generator

        def test_load():
            Generator().load_state_dict(torch.load("g_00100000.pt"), strict=False)
    ''')
    result = pytester.runpytest("--ckpt-strict-loads")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(lines(
        "  [not_loaded] load_state_dict was given the whole checkpoint (container: "
        "{'generator': state_dict}; also discriminator (OrderedDict), steps (int)): its "
        "weights sit under ['generator'] (matches the model; also a state_dict: "
        "'discriminator'), so nothing matched"))


LIGHTNING_RESUME = """
import torch
from models import Net


def resume(model, path):
    checkpoint = torch.load(path, weights_only=True)
    model.load_state_dict(checkpoint["state_dict"])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    optimizer.load_state_dict(checkpoint["optimizer_states"][0])
"""


def test_a_lightning_checkpoint_schema_and_a_resume_given_its_weights_only_export(pytester,
                                                                                  mode):
    """The schema of a ``.ckpt`` lists its optimizer and scheduler states (torch's own flags
    in their param_groups may differ between torch versions); a resume that reads
    ``optimizer_states`` from a release export (``state_dict`` and hyper-parameters only) is
    told it was given a weights-only checkpoint."""
    pytester.makepyfile(models=MODELS, lightning_resume=LIGHTNING_RESUME)
    save_lightning(pytester.path / "last.ckpt")
    torch.save({"state_dict": Net().state_dict(), "hyper_parameters": {"hidden": 8}},
               pytester.path / "release.ckpt")
    pytester.makepyfile(test_a='''
        from lightning_resume import resume
        from models import Net

        def test_resume_state(ckpt):
            ckpt.assert_schema("last.ckpt")
            ckpt.assert_loads(Net(), "last.ckpt", load_from=resume)

        def test_resume_from_the_release(ckpt):
            ckpt.assert_loads(Net(), "release.ckpt", load_from=resume)
    ''')
    result = pytester.runpytest("--ckpt-snapshot-update", *mode)
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(lines(
        "*the checkpoint holds no `optimizer_states`, and no training state at all: a "
        "weights-only checkpoint given to a training resume*",
        "fix: resume from a training checkpoint (one that saves 'optimizer_states'), or let "
        "the resume path start fresh on a weights-only file*"))
    location = pytester.path / "__snapshots__/test_a/test_resume_state.schema.txt"
    stored = location.read_text().splitlines()
    assert stored[1] == "# container: {'state_dict': state_dict}"
    assert {"optimizer_states: list of 1", "optimizer_states[0].param_groups[0].lr: float",
            "optimizer_states[0].state[*].exp_avg: tensor float32",
            "lr_schedulers[0].last_epoch: int", "global_step: int",
            "state_dict: state_dict (11 tensors, 163 elements)"} <= set(stored)
    other_torch = [line for line in stored if ".param_groups[0].foreach" not in line]
    location.write_text("\n".join([*other_torch, "optimizer_states[0].param_groups[0]."
                                                 "flag_of_a_newer_torch: bool"]) + "\n")
    pytester.runpytest(*mode, "-k", "resume_state").assert_outcomes(passed=1)


def test_a_lightning_checkpoint_with_pickled_hyper_parameters_is_the_clear_refusal(pytester):
    pytester.makepyfile(models=MODELS, hparams='''
        class AttributeDict(dict):
            """Lightning's hyper_parameters container, pickled as a class."""
    ''')
    pytester.syspathinsert()
    import hparams  # the module pytester just wrote

    save_lightning(pytester.path / "last.ckpt", hparams.AttributeDict(hidden=8))
    pytester.makepyfile(test_a='''
        def test_schema(ckpt):
            ckpt.assert_schema("last.ckpt")
    ''')
    result = pytester.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(lines(
        "checkpoint last.ckpt cannot be loaded with weights_only=True",
        "  [unsafe_pickle] 1 entry: torch.load(weights_only=True) refuses the globals these "
        "entries need; nothing from the file was executed",
        "      ['hyper_parameters']: hparams.AttributeDict",
        "fix: store plain Python values there*safe_globals=[hparams.AttributeDict]*"))


def test_an_accelerate_folder_schema_and_loads_of_each_of_its_models(pytester, mode):
    pytester.makepyfile(models=MODELS)
    save_accelerate(pytester.path / "checkpoint_40", Net(), Generator())
    pytester.makepyfile(test_a='''
        from models import Generator, Net

        def test_state(ckpt):
            ckpt.assert_schema("checkpoint_40")

        def test_net(ckpt):
            ckpt.assert_loads(Net(), "checkpoint_40")

        def test_generator(ckpt):
            ckpt.assert_loads(Generator(), "checkpoint_40")
    ''')
    result = pytester.runpytest("--ckpt-snapshot-update", *mode)
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(lines(
        "test_a.py::test_generator loads: weights read from ['model_1'] (matches the model; "
        "also a state_dict: 'model')",
        "test_a.py::test_net loads: weights read from ['model'] (matches the model; also a "
        "state_dict: 'model_1')"))
    stored = (pytester.path / "__snapshots__/test_a/test_state.schema.txt").read_text()
    assert stored.splitlines()[1] == ("# container: accelerate save_state directory: "
                                      "{'model': state_dict}")
    assert {"model: state_dict (11 tensors, 163 elements)",
            "model_1: state_dict (4 tensors, 129 elements)",
            "optimizer.param_groups[0].lr: float", "scheduler.last_epoch: int",
            "custom_checkpoint_0.updates: int",
            "random_states_0: file not read (weights_only=True refuses its numpy globals)",
            } <= set(stored.splitlines())
    pytester.runpytest(*mode).assert_outcomes(passed=3)


@dataclass
class TrainingArguments:
    """A trainer's arguments, pickled as a class (as transformers' Trainer saves them)."""

    learning_rate: float = 5e-5


def save_trainer_checkpoint(directory: Path) -> Path:
    """A transformers ``Trainer`` checkpoint folder (``checkpoint-500/``)."""
    model = Net()
    save_pretrained(directory, model.state_dict())
    optimizer, scheduler = trained(model)
    torch.save(optimizer.state_dict(), directory / "optimizer.pt")
    torch.save(scheduler.state_dict(), directory / "scheduler.pt")
    torch.save({"python": random.getstate(), "numpy": np.random.get_state(),
                "cpu": torch.get_rng_state()}, directory / "rng_state.pth")
    torch.save(TrainingArguments(), directory / "training_args.bin")
    (directory / "trainer_state.json").write_text(json.dumps({"global_step": 500}))
    return directory


def test_a_trainer_checkpoint_folder_is_shown_and_its_schema_names_what_was_not_read(
        pytester, capsys):
    directory = save_trainer_checkpoint(pytester.path / "checkpoint-500")
    code, out, _ = show(directory, capsys)
    assert code == 0
    assert out.splitlines()[:4] == [
        f"{directory}: Trainer checkpoint directory (safetensors), 11 entries, 163 elements "
        f"{HEADER_ONLY}",
        "container: Trainer checkpoint directory, weights in model.safetensors; also optimizer "
        "(optimizer.pt); also rng_state (rng_state.pth); also scheduler (scheduler.pt); also "
        "training_args (training_args.bin)",
        "note: Trainer checkpoint directory: weights read from model.safetensors",
        "note: beside the weights, not in the manifest (ckpt.assert_schema describes them): "
        "optimizer.pt, rng_state.pth, scheduler.pt, training_args.bin",
    ]
    pytester.makepyfile(test_a='''
        def test_state(ckpt):
            ckpt.assert_schema("checkpoint-500")
    ''')
    pytester.runpytest("--ckpt-snapshot-update").assert_outcomes(passed=1)
    stored = (pytester.path / "__snapshots__/test_a/test_state.schema.txt").read_text()
    assert {"# container: Trainer checkpoint directory: {'model': state_dict}",
            "optimizer.param_groups[0].lr: float", "scheduler.last_epoch: int",
            "rng_state: file not read (weights_only=True refuses its numpy globals)",
            "training_args: file not read (weights_only=True refuses its tests globals)",
            } <= set(stored.splitlines())


class CreatesAFile:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.target,))


def test_a_hostile_rng_state_file_is_refused_and_never_run(pytester, capsys):
    canary = pytester.path / "pwned"
    directory = save_accelerate(pytester.path / "checkpoint_40", Net(),
                                rng_state={"step": 1, "numpy_random_seed": CreatesAFile(canary)})
    code, out, _ = show(directory, capsys)
    assert code == 0
    assert "note: random_states_0.pkl is present but not read: weights_only=True refuses its " \
           "pathlib globals (pathlib.Path.touch, pathlib.PosixPath); nothing from it was " \
           "executed" in out.splitlines()
    pytester.makepyfile(test_a='''
        def test_state(ckpt):
            ckpt.assert_schema("checkpoint_40")
    ''')
    result = pytester.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(lines(
        "checkpoint checkpoint_40/random_states_0.pkl cannot be loaded with weights_only=True",
        "      ['numpy_random_seed']: pathlib.Path.touch",
        "fix: never allow pathlib.Path.touch*"))
    assert not canary.exists()
