"""Models and the loaders maintainers really write (each reads a path, raises on trouble and
returns nothing), one per drift class that only shows through such code. The drift gallery
runs them, and tests/test_drift_remedies.py asserts what users read."""

from __future__ import annotations

from pathlib import Path

import safetensors.torch
import torch
from torch import nn


class CLAP(nn.Module):
    """An audio-text model whose audio branch starts from a sound-event-detection model."""

    def __init__(self) -> None:
        super().__init__()
        self.audio_branch = nn.Sequential(nn.Conv1d(1, 4, 3), nn.BatchNorm1d(4))
        self.text_branch = nn.Sequential(nn.Conv1d(1, 4, 3), nn.Linear(4, 8))


def save_sed_checkpoint(path: Path) -> None:
    sed = nn.Sequential(nn.Conv1d(1, 4, 3), nn.BatchNorm1d(4))
    torch.save({"sed_model." + k: v for k, v in sed.state_dict().items()}, path)


def load_sed(model: nn.Module, path: Path) -> None:
    state = torch.load(path, map_location="cpu", weights_only=True)
    # key[10:] was meant: 'sed_model.' is 10 characters
    model.load_state_dict({"audio_branch." + k[9:]: v for k, v in state.items()},
                          strict=False)


def batchnorm_net(momentum: float | None = 0.1) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, momentum=momentum), nn.ReLU())


def save_without_count(path: Path, version: int | None, momentum: float | None = 0.1) -> None:
    """A checkpoint without num_batches_tracked, its _metadata at ``version`` (None: a plain
    dict, as a remap or safetensors gives)."""
    state = batchnorm_net(momentum).state_dict()
    del state["1.num_batches_tracked"]
    if version is None:
        torch.save(dict(state), path)
        return
    state._metadata["1"]["version"] = version  # type: ignore[attr-defined]
    torch.save(state, path)


def copy_by_hand(model: nn.Module, path: Path) -> None:
    """A loader that copies tensors into the model's own (no load_state_dict call)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    own = model.state_dict()
    with torch.no_grad():
        for key, value in state.items():
            own[key].copy_(value)


class Scaled(nn.Module):
    """A projection and a table of close values (frequencies, timestamps)."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 4)
        self.register_buffer("freqs", torch.tensor([1.0, 1.0001, 1.0002, 1.0003]))


def load_assigned(model: nn.Module, path: Path) -> None:
    model.load_state_dict(torch.load(path, weights_only=True), assign=True)


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(8)
        self.fc = nn.Linear(8, 8)
        self.gamma = nn.Parameter(1e-6 * torch.ones(8))  # a layer scale (ConvNeXt, CaiT)


def blocks() -> nn.Module:
    return nn.Sequential(Block(), Block())


def strip_ddp(model: nn.Module, path: Path) -> None:
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict({k.replace("module.", "", 1): v for k, v in state.items()})


def legacy_norm_names(model: nn.Module, path: Path) -> None:
    """Old checkpoints name LayerNorm's parameters gamma/beta: a blanket rename."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = {k.replace("gamma", "weight").replace("beta", "bias"): v for k, v in state.items()}
    model.load_state_dict(state, strict=False)


class TinyLM(nn.Module):
    def __init__(self, tie: bool = True, vocab: int = 32) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, 8)
        self.lm_head = nn.Linear(8, vocab, bias=False)
        if tie:
            self.lm_head.weight = self.embed.weight


def export_tied(path: Path) -> None:
    """How the maintainer publishes: safetensors.torch.save_model (one key per tied group,
    the left-out keys recorded in the file's metadata)."""
    safetensors.torch.save_model(TinyLM(), str(path))


def load_untied(model: nn.Module, path: Path) -> None:
    safetensors.torch.load_model(model, str(path), strict=False)
