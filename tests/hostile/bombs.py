"""Small pickles that ask a reader for a lot: each fits in 10 MB, and each targets one bound of
pytest-ckpt's scan (``pickle_bounds``, the stand-in limit) with memo indices that follow the
memo's own count (so the memo check alone does not stop them)."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

from tests.hostile.payloads import replace_zip_entry


def laughs(levels: int = 60) -> bytes:
    """A list holding the same list twice, ``levels`` deep: 2**60 leaves in 1.5 KB."""
    parts = [b"\x80\x02", b"]q\x00"]
    for level in range(1, levels + 1):
        parts.append(b"]q" + bytes([level]) + b"(h" + bytes([level - 1]) + b"h"
                     + bytes([level - 1]) + b"e")
    return b"".join(parts) + b"."


def memoize_spam(count: int = 4_500_000) -> bytes:
    """``None`` memoised 4.5 million times (protocol 4 MEMOIZE, two bytes each)."""
    return b"\x80\x04" + b"N\x94" * count + b"."


def global_spam(count: int = 800_000) -> bytes:
    """800,000 distinct globals, each a class for a reader that makes one per global."""
    return b"\x80\x02" + b"".join(b"cm\nn%d\n0" % index for index in range(count)) + b"N."


def reduce_spam(count: int = 2_400_000) -> bytes:
    """2.4 million objects built by calling one global, kept in one list."""
    return b"\x80\x02cm\nf\nq\x00]q\x01(" + b"h\x00)R" * count + b"e."


BOMBS: dict[str, Callable[[], bytes]] = {
    "laughs_sequential_memo": laughs,
    "memoize_spam": memoize_spam,
    "global_spam": global_spam,
    "reduce_spam": reduce_spam,
}


def write_bomb(name: str, directory: Path) -> Path:
    """``directory/<name>.pt``: a real torch zip whose ``data.pkl`` is the bomb."""
    import torch

    buffer = io.BytesIO()
    torch.save({"w": torch.zeros(2)}, buffer)
    path = directory / f"{name}.pt"
    path.write_bytes(replace_zip_entry(buffer.getvalue(), "/data.pkl", BOMBS[name]()))
    return path
