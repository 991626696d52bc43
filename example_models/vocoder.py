"""HiFiGAN-style neural vocoder (mel spectrogram -> waveform)."""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrizations, parametrize
from torch.nn.utils.weight_norm import WeightNorm

__all__ = [
    "WEIGHT_NORM_IMPLS",
    "ResBlock",
    "Vocoder",
    "VocoderConfig",
    "apply_weight_norm",
    "remove_weight_norm",
    "tiny_vocoder",
]

WEIGHT_NORM_IMPLS = ("parametrized", "legacy", "none")
LRELU_SLOPE = 0.1
# torch 2.1 warns with UserWarning, newer versions with FutureWarning; both match this.
_LEGACY_WN_MESSAGE = r"`?torch\.nn\.utils\.weight_norm`? is deprecated"

M = TypeVar("M", bound=nn.Module)


@dataclass(frozen=True)
class VocoderConfig:
    """Hyper-parameters of :class:`Vocoder`; defaults follow HiFiGAN V1."""

    n_mels: int = 80
    upsample_initial_channel: int = 512
    upsample_rates: tuple[int, ...] = (8, 8, 2, 2)
    upsample_kernel_sizes: tuple[int, ...] = (16, 16, 4, 4)
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilations: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    weight_norm: str = "parametrized"

    def __post_init__(self) -> None:
        if self.weight_norm not in WEIGHT_NORM_IMPLS:
            raise ValueError(f"weight_norm must be one of {WEIGHT_NORM_IMPLS}")
        if len(self.upsample_rates) != len(self.upsample_kernel_sizes):
            raise ValueError("upsample_rates and upsample_kernel_sizes differ in length")
        if len(self.resblock_kernel_sizes) != len(self.resblock_dilations):
            raise ValueError("resblock_kernel_sizes and resblock_dilations differ in length")
        for u, k in zip(self.upsample_rates, self.upsample_kernel_sizes, strict=True):
            if k < u or (k - u) % 2:
                raise ValueError(f"upsample kernel {k} incompatible with rate {u}")

    @classmethod
    def tiny(cls, weight_norm: str = "parametrized") -> VocoderConfig:
        """A ~33k-parameter configuration for fast tests."""
        return cls(
            upsample_initial_channel=32,
            upsample_rates=(4, 4),
            upsample_kernel_sizes=(8, 8),
            resblock_kernel_sizes=(3, 5),
            resblock_dilations=((1, 3), (1, 3)),
            weight_norm=weight_norm,
        )

    @property
    def hop_length(self) -> int:
        """Output samples produced per input frame."""
        return math.prod(self.upsample_rates)


def apply_weight_norm(module: M, impl: str) -> M:
    """Apply weight norm to ``module.weight`` using ``impl`` (see WEIGHT_NORM_IMPLS)."""
    if impl == "parametrized":
        parametrizations.weight_norm(module)
    elif impl == "legacy":
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_LEGACY_WN_MESSAGE)
            torch.nn.utils.weight_norm(module)
    elif impl != "none":
        raise ValueError(f"unknown weight norm impl {impl!r}; expected {WEIGHT_NORM_IMPLS}")
    return module


def _has_legacy_weight_norm(module: nn.Module) -> bool:
    hooks = module._forward_pre_hooks.values()
    return any(isinstance(h, WeightNorm) and h.name == "weight" for h in hooks)


def remove_weight_norm(model: M) -> M:
    """Fold weight norm (either implementation) back into plain ``weight`` tensors."""
    for module in model.modules():
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight")
        elif _has_legacy_weight_norm(module):
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=_LEGACY_WN_MESSAGE)
                torch.nn.utils.remove_weight_norm(module)
    return model


def _conv(channels: int, kernel: int, dilation: int, impl: str) -> nn.Conv1d:
    padding = (kernel * dilation - dilation) // 2
    conv = nn.Conv1d(channels, channels, kernel, dilation=dilation, padding=padding)
    return apply_weight_norm(conv, impl)


class ResBlock(nn.Module):
    """HiFiGAN ResBlock1: residual pairs of dilated and undilated convolutions."""

    def __init__(
        self, channels: int, kernel_size: int, dilations: tuple[int, ...], impl: str
    ) -> None:
        super().__init__()
        self.convs1 = nn.ModuleList(_conv(channels, kernel_size, d, impl) for d in dilations)
        self.convs2 = nn.ModuleList(_conv(channels, kernel_size, 1, impl) for _ in dilations)

    def forward(self, x: Tensor) -> Tensor:
        for c1, c2 in zip(self.convs1, self.convs2, strict=True):
            xt = c1(F.leaky_relu(x, LRELU_SLOPE))
            xt = c2(F.leaky_relu(xt, LRELU_SLOPE))
            x = xt + x
        return x


class Vocoder(nn.Module):
    """Maps (B, n_mels, T) mel frames to a (B, 1, T * hop_length) waveform in [-1, 1]."""

    def __init__(self, config: VocoderConfig) -> None:
        super().__init__()
        self.config = config
        impl, ch = config.weight_norm, config.upsample_initial_channel
        self.num_kernels = len(config.resblock_kernel_sizes)
        self.conv_pre = apply_weight_norm(nn.Conv1d(config.n_mels, ch, 7, padding=3), impl)
        self.ups = nn.ModuleList()
        self.resblocks = nn.ModuleList()
        for u, k in zip(config.upsample_rates, config.upsample_kernel_sizes, strict=True):
            up = nn.ConvTranspose1d(ch, ch // 2, k, stride=u, padding=(k - u) // 2)
            self.ups.append(apply_weight_norm(up, impl))
            ch //= 2
            kernels_dilations = zip(
                config.resblock_kernel_sizes, config.resblock_dilations, strict=True
            )
            for rk, rd in kernels_dilations:
                self.resblocks.append(ResBlock(ch, rk, rd, impl))
        self.conv_post = apply_weight_norm(nn.Conv1d(ch, 1, 7, padding=3), impl)

    def forward(self, mel: Tensor) -> Tensor:
        x = self.conv_pre(mel)
        for i, up in enumerate(self.ups):
            x = up(F.leaky_relu(x, LRELU_SLOPE))
            blocks = self.resblocks[i * self.num_kernels : (i + 1) * self.num_kernels]
            x = torch.stack([block(x) for block in blocks]).mean(dim=0)
        x = self.conv_post(F.leaky_relu(x))
        return torch.tanh(x)

    def save_pretrained(self, directory: Path) -> None:
        """A Hugging Face-style release folder: ``config.json`` + ``model.pt``."""
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "config.json").write_text(json.dumps(dataclasses.asdict(self.config)))
        torch.save(self.state_dict(), directory / "model.pt")

    @classmethod
    def from_pretrained(cls, directory: Path) -> Vocoder:
        """The vocoder a release folder describes, with its weights loaded."""
        fields: dict[str, Any] = json.loads((directory / "config.json").read_text())
        config = VocoderConfig(**{key: _tuples(value) for key, value in fields.items()})
        model = cls(config)
        model.load_state_dict(torch.load(directory / "model.pt", weights_only=True))
        return model


def _tuples(value: Any) -> Any:
    """JSON arrays back to the config's (nested) tuples."""
    return tuple(_tuples(item) for item in value) if isinstance(value, list) else value


def tiny_vocoder() -> Vocoder:
    """The tiny vocoder: a factory for ``pytest-ckpt diff FILE module:factory``."""
    return Vocoder(VocoderConfig.tiny())
