"""ChatTTS-style GPT: a small decoder with weight-normed text and audio-code heads."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from example_models.vocoder import WEIGHT_NORM_IMPLS, apply_weight_norm

__all__ = [
    "MLP",
    "Block",
    "CausalSelfAttention",
    "Decoder",
    "GPTHeads",
    "GPTHeadsConfig",
    "sinusoidal_positions",
    "tiny_gpt_heads",
]


@dataclass(frozen=True)
class GPTHeadsConfig:
    """Hyper-parameters of :class:`GPTHeads`."""

    vocab_size: int
    num_audio_tokens: int
    num_vq: int
    dim: int
    n_layers: int
    n_heads: int
    max_seq_len: int
    weight_norm: str = "parametrized"

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if field.name != "weight_norm" and (type(value) is not int or value < 1):
                raise ValueError(f"{field.name} must be a positive int, got {value!r}")
        if self.dim % self.n_heads:
            raise ValueError("dim must split into n_heads equal heads")
        if self.dim % 2:
            raise ValueError("dim must be even for sinusoidal positions")
        if self.weight_norm not in WEIGHT_NORM_IMPLS:
            raise ValueError(f"weight_norm must be one of {WEIGHT_NORM_IMPLS}")

    @property
    def head_dim(self) -> int:
        """Size of one attention head."""
        return self.dim // self.n_heads

    @classmethod
    def tiny(cls, weight_norm: str = "parametrized") -> GPTHeadsConfig:
        """A ~38k-parameter configuration for fast tests."""
        return cls(
            vocab_size=64, num_audio_tokens=32, num_vq=4, dim=32, n_layers=2,
            n_heads=4, max_seq_len=32, weight_norm=weight_norm,
        )  # fmt: skip


def sinusoidal_positions(max_seq_len: int, dim: int) -> Tensor:
    """Fixed (max_seq_len, dim) sine/cosine position table; meta-device safe."""
    positions = torch.arange(max_seq_len, dtype=torch.float32).unsqueeze(1)
    inv_freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(1e4) / dim))
    angles = positions * inv_freq
    return torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(-2)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with separate q/k/v/o projections."""

    def __init__(self, config: GPTHeadsConfig) -> None:
        super().__init__()
        self.n_heads, self.head_dim = config.n_heads, config.head_dim
        self.q_proj = nn.Linear(config.dim, config.dim, bias=False)
        self.k_proj = nn.Linear(config.dim, config.dim, bias=False)
        self.v_proj = nn.Linear(config.dim, config.dim, bias=False)
        self.o_proj = nn.Linear(config.dim, config.dim, bias=False)

    def _heads(self, x: Tensor) -> Tensor:
        batch, seq_len, _ = x.shape
        return x.view(batch, seq_len, self.n_heads, self.head_dim).transpose(1, 2)

    def forward(self, x: Tensor) -> Tensor:
        q = self._heads(self.q_proj(x))
        k = self._heads(self.k_proj(x))
        v = self._heads(self.v_proj(x))
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        merged: Tensor = self.o_proj(out.transpose(1, 2).flatten(-2))
        return merged


class MLP(nn.Module):
    """Two-layer GELU feed-forward network with a 4x hidden width."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(4 * dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.fc2(self.act(self.fc1(x)))
        return out


class Block(nn.Module):
    """Pre-norm attention + MLP block with residual connections."""

    def __init__(self, config: GPTHeadsConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(config.dim)
        self.attn = CausalSelfAttention(config)
        self.ln2 = nn.LayerNorm(config.dim)
        self.mlp = MLP(config.dim)

    def forward(self, x: Tensor) -> Tensor:
        h: Tensor = x + self.attn(self.ln1(x))
        out: Tensor = h + self.mlp(self.ln2(h))
        return out


class Decoder(nn.Module):
    """A stack of :class:`Block` layers over sinusoidally position-encoded inputs."""

    pos_table: Tensor

    def __init__(self, config: GPTHeadsConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        table = sinusoidal_positions(config.max_seq_len, config.dim)
        self.register_buffer("pos_table", table, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        h = x + self.pos_table[: x.shape[1]].to(x.dtype)
        for layer in self.layers:
            h = layer(h)
        return h


class GPTHeads(nn.Module):
    """Maps (B, T) text ids to text logits (B, T, vocab) and code logits (B, T, num_vq, A)."""

    def __init__(self, config: GPTHeadsConfig) -> None:
        super().__init__()
        self.config = config
        impl = config.weight_norm
        self.emb_text = nn.Embedding(config.vocab_size, config.dim)
        self.emb_code = nn.ModuleList(
            nn.Embedding(config.num_audio_tokens, config.dim) for _ in range(config.num_vq)
        )
        self.gpt = Decoder(config)
        self.norm = nn.LayerNorm(config.dim)
        self.head_text = apply_weight_norm(
            nn.Linear(config.dim, config.vocab_size, bias=False), impl
        )
        self.head_code = nn.ModuleList(
            apply_weight_norm(nn.Linear(config.dim, config.num_audio_tokens, bias=False), impl)
            for _ in range(config.num_vq)
        )

    def forward(self, text_ids: Tensor, code_ids: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Optional ``code_ids`` (B, T, num_vq) add their summed code embeddings to the input."""
        if text_ids.dim() != 2:
            raise ValueError(f"text_ids must be (B, T), got shape {tuple(text_ids.shape)}")
        seq_len = text_ids.shape[1]
        if not 1 <= seq_len <= self.config.max_seq_len:
            raise ValueError(f"sequence length {seq_len} not in [1, {self.config.max_seq_len}]")
        h: Tensor = self.emb_text(text_ids)
        if code_ids is not None:
            if code_ids.shape != (*text_ids.shape, self.config.num_vq):
                raise ValueError(f"code_ids must be (B, T, {self.config.num_vq})")
            for i, emb in enumerate(self.emb_code):
                h = h + emb(code_ids[..., i])
        h = self.norm(self.gpt(h))
        text_logits: Tensor = self.head_text(h)
        code_logits = torch.stack([head(h) for head in self.head_code], dim=2)
        return text_logits, code_logits


def tiny_gpt_heads() -> GPTHeads:
    """The tiny GPT: a factory for ``pytest-ckpt diff FILE module:factory``."""
    return GPTHeads(GPTHeadsConfig.tiny())
