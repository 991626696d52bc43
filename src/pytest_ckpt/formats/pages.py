"""Give a memory-mapped checkpoint's pages back as the load consumes them.

A round-trip holds the source model and the target model; the file's tensors, mapped with
``torch.load(mmap=True)`` or by ``safetensors.torch.load_file`` (one private mapping, each
tensor a slice of it), would add a third copy of the state to the process's resident set as
``load_state_dict`` copies them. Each module's tensors are released once the next module
starts loading, so peak RSS stays near source + target, and every tensor keeps its value:

* a span whose mapped pages are all still the file's (``/proc/self/pagemap`` says so: none
  was written, so none is a private copy) is dropped with ``madvise(MADV_DONTNEED)``; a page
  touched again maps the file's page back (dirty or not, the page cache holds the bytes), so
  the file need not be flushed first;
* a span holding a written page (a loader that changed a loaded tensor in place), or any span
  where the pagemap cannot be read, gets ``madvise(MADV_PAGEOUT)``, a hint that never changes
  what a page holds (a clean page re-reads from the file, a written one is kept in swap); file
  pages still dirty from the write are not paged out, so without the pagemap a large file
  just written is first flushed to disk (:func:`settle`).

A file under ``SETTLE_BYTES`` is neither flushed nor released. Linux >= 5.4; elsewhere
nothing is released.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

if TYPE_CHECKING:
    import torch

MADV_DONTNEED = 4  # linux/mman.h; drops the pages: only for pages that are the file's
MADV_PAGEOUT = 21  # a hint that never changes what a page holds
_FILE_PAGE = 1 << 61  # in a /proc/self/pagemap entry; bit 63 (present) is its sign
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


def _pagemap_readable() -> bool:
    probe = ctypes.create_string_buffer(PAGE)  # written, so mapped
    try:
        with open("/proc/self/pagemap", "rb") as pagemap:
            pagemap.seek(ctypes.addressof(probe) // PAGE * 8)
            return len(pagemap.read(8)) == 8
    except OSError:
        return False


_PAGEMAP = _MADVISE is not None and _pagemap_readable()


def settle(path: Path, min_bytes: int = SETTLE_BYTES) -> bool:
    """Whether :func:`release` should give back the pages of a just-written file of
    ``path``'s size (at least ``min_bytes``); where the pagemap cannot be read, the file is
    flushed first, so that its pages are clean and can be paged out."""
    if _MADVISE is None or path.stat().st_size < min_bytes:
        return False
    if not _PAGEMAP:
        with open(path, "rb+") as handle:
            os.fsync(handle.fileno())
    return True


def release(tensors: Iterable[torch.Tensor]) -> int:
    """Give back the whole pages of each tensor's storage; the bytes released (0 where the
    kernel declines or the platform cannot)."""
    if _MADVISE is None:
        return 0
    released = 0
    seen: set[int] = set()
    with _open_pagemap() or nullcontext() as pagemap:
        for tensor in tensors:
            start, stop = _span(tensor)
            if start in seen or tensor.device.type != "cpu":
                continue
            seen.add(start)
            first = -(-start // PAGE) * PAGE  # whole pages only: a neighbour may share edges
            last = stop // PAGE * PAGE
            if last <= first:
                continue
            dropped = pagemap is not None and _only_file_pages(pagemap, first, last)
            if _MADVISE(first, last - first, MADV_DONTNEED if dropped else MADV_PAGEOUT) == 0:
                released += last - first
    return released


def _open_pagemap() -> BinaryIO | None:
    """``/proc/self/pagemap``, opened once for a release; ``None`` where it cannot be read."""
    if not _PAGEMAP:
        return None
    try:
        return open("/proc/self/pagemap", "rb")  # the caller's with closes it
    except OSError:
        return None


def _only_file_pages(pagemap: BinaryIO, first: int, last: int) -> bool:
    """Whether every page of [first, last) mapped into this process is a page of a file
    (none was written through a private mapping)."""
    import torch

    count = (last - first) // PAGE
    try:
        pagemap.seek(first // PAGE * 8)
        raw = pagemap.read(count * 8)
    except OSError:
        return False
    if len(raw) != count * 8:
        return False
    entries = torch.frombuffer(bytearray(raw), dtype=torch.int64)
    present = entries < 0  # bit 63
    return not bool((present & ((entries & _FILE_PAGE) == 0)).any())


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
