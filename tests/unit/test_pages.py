"""pages.py: a memory-mapped checkpoint's pages leave the process as the load consumes them,
and every tensor keeps its value."""

from __future__ import annotations

import os
import struct
import sys
from pathlib import Path

import pytest
import torch

from pytest_ckpt.checks.roundtrip import run_roundtrip
from pytest_ckpt.checks.roundtrip_format import RoundtripSpec
from pytest_ckpt.formats.pages import PAGE, release, released_as_loaded, settle

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="madvise(MADV_PAGEOUT) and /proc/self/pagemap are Linux's")


def resident_pages(tensor: torch.Tensor) -> int:
    """Pages of the tensor's bytes mapped into this process (bit 63 of /proc/self/pagemap)."""
    start = tensor.data_ptr()
    first = start // PAGE
    count = -(-(start + tensor.numel() * tensor.element_size()) // PAGE) - first
    with open("/proc/self/pagemap", "rb") as pagemap:
        pagemap.seek(first * 8)
        entries = struct.unpack(f"{count}Q", pagemap.read(count * 8))
    return sum(entry >> 63 for entry in entries)


EDGES = 2 + (64 << 10) // PAGE


def mapped(state: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    torch.save(state, path)
    assert settle(path, min_bytes=0)
    return torch.load(str(path), weights_only=True, mmap=True)


def mapped_safetensors(state: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """What the safetensors format loads: one private mapping of the file, each tensor a
    slice of it."""
    safetensors_torch = pytest.importorskip("safetensors.torch")
    safetensors_torch.save_file(state, str(path))
    assert settle(path, min_bytes=0)
    return dict(safetensors_torch.load_file(str(path)))


def model() -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(*(torch.nn.Linear(256, 256) for _ in range(4)))


def test_a_released_tensor_leaves_the_process_and_keeps_its_value(tmp_path: Path) -> None:
    original = torch.randn(1 << 20)
    loaded = mapped({"w": original}, tmp_path / "w.pt")["w"]
    assert torch.equal(loaded, original)  # touches every page
    touched = resident_pages(loaded)

    released = release([loaded])

    assert touched >= (4 << 20) // PAGE - 1
    assert released >= (4 << 20) - 2 * PAGE
    assert resident_pages(loaded) <= 2  # at most the partly shared edge pages
    assert torch.equal(loaded, original)


def test_a_file_just_written_is_released_without_a_flush(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(os, "fsync", lambda fd: pytest.fail("the file was flushed"))
    original = torch.randn(1 << 20)
    loaded = mapped({"w": original}, tmp_path / "w.pt")["w"]  # its pages are still dirty
    assert torch.equal(loaded, original)

    release([loaded])

    assert resident_pages(loaded) <= 2
    assert torch.equal(loaded, original)


def test_a_tensor_written_after_mapping_keeps_the_written_value(tmp_path: Path) -> None:
    loaded = mapped({"w": torch.zeros(1 << 18)}, tmp_path / "w.pt")["w"]
    loaded[: 1 << 17].add_(3.0)  # copy-on-write pages: releasing them must not revert them
    assert torch.equal(loaded[1 << 17 :], torch.zeros(1 << 17))  # and these are the file's

    release([loaded])

    assert torch.equal(loaded[: 1 << 17], torch.full((1 << 17,), 3.0))
    assert torch.equal(loaded[1 << 17 :], torch.zeros(1 << 17))


@pytest.mark.parametrize("load", [mapped, mapped_safetensors])
def test_a_load_releases_the_incoming_tensors_module_by_module(tmp_path: Path, load) -> None:
    source = model()
    state = load(source.state_dict(), tmp_path / "m.ckpt")
    target = torch.nn.Sequential(*(torch.nn.Linear(256, 256) for _ in range(4)))
    seen_during_load: list[int] = []
    target[3]._register_load_state_dict_pre_hook(
        lambda *_: seen_during_load.append(resident_pages(state["0.weight"])))

    with released_as_loaded(target):
        target.load_state_dict(state)

    # module 0's tensors (64 pages of weight) were gone before module 3 loaded: at most the
    # partly shared edge pages, and those the kernel's fault-around (64 KiB) maps back when a
    # neighbouring tensor of the same mapping is read
    assert len(seen_during_load) == 1
    assert seen_during_load[0] <= EDGES
    assert all(resident_pages(tensor) <= EDGES for tensor in state.values())
    assert all(torch.equal(target.state_dict()[key], value)
               for key, value in source.state_dict().items())
    assert all(torch.equal(state[key], value) for key, value in source.state_dict().items())
    assert len(target[3]._load_state_dict_pre_hooks) == 1  # ours are removed, the user's stays


def test_an_assigned_load_keeps_the_values_of_the_released_tensors(tmp_path: Path) -> None:
    source = model()
    state = mapped(source.state_dict(), tmp_path / "m.pt")
    with torch.device("meta"):
        target = torch.nn.Sequential(*(torch.nn.Linear(256, 256) for _ in range(4)))

    with released_as_loaded(target):
        target.load_state_dict(state, assign=True)

    assert all(torch.equal(target.state_dict()[key], value)
               for key, value in source.state_dict().items())


@pytest.mark.parametrize("fmt", ["torch", "safetensors"])
def test_a_roundtrip_through_a_mapped_format_still_catches_a_wrong_value(tmp_path: Path,
                                                                         fmt: str) -> None:
    def corrupting_load(target: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
        target.load_state_dict(state)
        with torch.no_grad():
            target[2].bias[0] += 1

    outcomes = run_roundtrip(model(), model, RoundtripSpec(formats=(fmt,), load=corrupting_load),
                             tmp_path)

    assert [finding.kind for finding in outcomes[0].findings] == ["value"]
    assert outcomes[0].findings[0].keys == ("2.bias",)


def test_only_a_large_file_s_pages_are_released(tmp_path: Path) -> None:
    path = tmp_path / "small.pt"
    torch.save({"w": torch.zeros(16)}, path)

    assert not settle(path)  # a small state's third copy costs less than the release
    assert settle(path, min_bytes=path.stat().st_size)


@pytest.mark.parametrize("fmt", ["torch", "safetensors"])
def test_a_roundtrip_gives_back_the_pages_of_each_mapped_format(tmp_path: Path, fmt: str,
                                                                monkeypatch) -> None:
    from pytest_ckpt.checks import roundtrip_format
    from pytest_ckpt.formats import pages

    released: list[int] = []

    def recorded(tensors):
        released.append(release(tensors))
        return released[-1]

    # the state is small: flush it as a large one would be
    monkeypatch.setattr(roundtrip_format, "settle", lambda path: settle(path, min_bytes=0))
    monkeypatch.setattr(pages, "release", recorded)
    outcomes = run_roundtrip(model(), model, RoundtripSpec(formats=(fmt,)), tmp_path)

    assert outcomes[0].ok
    assert sum(released) >= 4 * (256 * 256 * 4 - 2 * PAGE)  # every weight, less its edges
