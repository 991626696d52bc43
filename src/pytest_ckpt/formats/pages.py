"""Give a memory-mapped checkpoint's pages back as the load consumes them.

A round-trip holds the source model and the target model; the file's tensors, mapped with
``torch.load(mmap=True)`` or by ``safetensors.torch.load_file`` (one mapping, each tensor a
slice of it), would add a third copy of the state to the process's resident set as
``load_state_dict`` copies them. Each module's tensors are released with
``madvise(MADV_PAGEOUT)`` once the next module starts loading: the kernel drops the pages from
this process (a clean page re-reads from the file, a written one is kept in swap), so the
tensors keep their values and peak RSS stays near source + target. File pages still dirty
from the write are not dropped, so a large file just written is first flushed to disk
(:func:`settle`); a file under ``SETTLE_BYTES`` is neither flushed nor released. Linux >= 5.4;
elsewhere nothing is released.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

MADV_PAGEOUT = 21  # linux/mman.h; a hint that never changes what a page holds
PAGE = mmap.PAGESIZE
SETTLE_BYTES = 64 << 20  # below this a third copy of the state costs less than a flush


def _madvise() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    function.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    function.restype = ctypes.c_int
    return function


_MADVISE = _madvise()


def settle(path: Path, min_bytes: int = SETTLE_BYTES) -> bool:
    """Flush a just-written file of at least ``min_bytes`` so that its mapped pages are clean
    and :func:`release` can give them back; whether it did."""
    if _MADVISE is None or path.stat().st_size < min_bytes:
        return False
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())
    return True


def release(tensors: Iterable[torch.Tensor]) -> int:
    """Page out the whole pages of each tensor's storage; the bytes released (0 where the
    kernel declines or the platform cannot)."""
    if _MADVISE is None:
        return 0
    released = 0
    seen: set[int] = set()
    for tensor in tensors:
        start, stop = _span(tensor)
        if start in seen or tensor.device.type != "cpu":
            continue
        seen.add(start)
        first = -(-start // PAGE) * PAGE  # whole pages only: a neighbour may share the edges
        last = stop // PAGE * PAGE
        if last > first and _MADVISE(first, last - first, MADV_PAGEOUT) == 0:
            released += last - first
    return released


def _span(tensor: torch.Tensor) -> tuple[int, int]:
    """The bytes a contiguous tensor covers (safetensors maps a whole file as one storage,
    each tensor a slice of it); its whole storage otherwise."""
    if tensor.is_contiguous():
        start = tensor.data_ptr()
        return start, start + tensor.numel() * tensor.element_size()
    storage = tensor.untyped_storage()
    return storage.data_ptr(), storage.data_ptr() + storage.nbytes()


@contextmanager
def released_as_loaded(target: torch.nn.Module) -> Iterator[None]:
    """While loading into ``target``, release each module's incoming tensors when the next
    module's load starts (and the last ones at the end)."""
    import torch

    pending: list[torch.Tensor] = []

    def hook(state_dict: dict[str, Any], prefix: str, *_: Any) -> None:
        release(pending)
        pending.clear()
        pending.extend(value for key, value in state_dict.items()
                       if key.startswith(prefix) and "." not in key[len(prefix):]
                       and isinstance(value, torch.Tensor))

    # the private registration is the one whose hook gets the prefix on torch 2.1 as today
    handles = [module._register_load_state_dict_pre_hook(hook)  # type: ignore[no-untyped-call]
               for module in target.modules()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        release(pending)
