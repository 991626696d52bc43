"""``torch.save`` zip files: saved with ``torch.save``, read with ``weights_only=True``."""

from __future__ import annotations

import io
import pickle
import warnings
import zipfile
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, final

from pytest_ckpt.checkpoint.container import container_layout
from pytest_ckpt.checkpoint.manifest import Manifest
from pytest_ckpt.errors import (
    CheckpointReadError,
    CkptUsageError,
    first_line,
    without_unsafe_advice,
)

if TYPE_CHECKING:
    import torch

    from pytest_ckpt.checkpoint.container import ContainerLayout
    from pytest_ckpt.diagnosis.findings import Finding
    from pytest_ckpt.formats.pickle_scan import Scanned


@final
class TorchZipFormat:
    name = "torch"
    suffix = ".pt"
    memory_mapped = True

    def save(self, module: torch.nn.Module, path: Path) -> None:
        import torch

        torch.save(module.state_dict(), path)

    def load(self, path: Path) -> dict[str, Any]:
        """Load a file this round-trip just wrote: ``weights_only=True``, memory-mapped (the
        admission checks of :func:`load_weights_only` are for files from elsewhere)."""
        return state_dict_of(torch_load(path, (), mmap=True), path)

    def read_manifest(self, path: Path) -> Manifest:
        """From the pickle and the zip directory alone when the file holds plain tensors
        (no torch import, no tensor bytes read); otherwise from a weights_only load."""
        from pytest_ckpt.formats.torch_header import read_manifest

        header = read_manifest(path)
        if header is not None:
            return header
        return Manifest.from_state_dict(state_dict_of(load_weights_only(path), path))


def load_weights_only(path: Path, safe_globals: Sequence[Any] = (), *,
                      verify_data: bool = False) -> Any:
    """``torch.load(path, weights_only=True)``, memory-mapped when the file is a zip, with
    exactly ``safe_globals`` allowed besides torch's own. The file is admitted first (see
    :func:`admit`); with ``verify_data`` every storage's CRC-32 is checked too. A refusal or a
    damaged file is a :class:`CheckpointReadError` naming the file (and each global the
    refusal is about); nothing else escapes."""
    from pytest_ckpt.formats.torch_file import scan

    scanned = admit(scan(path), path)
    if verify_data and scanned.prefix is not None:
        verify_storages(path)
    return torch_load(path, safe_globals, mmap=scanned.prefix is not None, scanned=scanned)


def load_bytes_weights_only(data: bytes, source: Path) -> Any:
    """:func:`load_weights_only` of a checkpoint held in memory (a DCP slice)."""
    from pytest_ckpt.formats.torch_file import scan_stream

    scanned = admit(scan_stream(io.BytesIO(data), source), source)
    return torch_load(source, (), mmap=False, scanned=scanned, data=data)


def torch_load(path: Path, safe_globals: Sequence[Any], *, mmap: bool,
               scanned: Scanned | None = None, data: bytes | None = None) -> Any:
    """``torch.load(weights_only=True)`` of ``path`` (or of ``data``, which ``path`` then only
    names) with every failure a :class:`CheckpointReadError`."""
    import torch

    try:
        with warnings.catch_warnings(), allowed_globals(safe_globals):
            # torch warns before refusing a raw pickle; the refusal below says it better
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            # torch 2.1's weights_only unpickler itself warns about TypedStorage
            warnings.filterwarnings("ignore", message="TypedStorage is deprecated")
            source: Any = str(path) if data is None else io.BytesIO(data)
            return torch.load(source, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as error:
        raise _refusal(path, error, safe_globals, scanned, data) from None
    except CkptUsageError:
        raise
    except Exception as error:  # torch's reader and unpickler raise many kinds on bad files
        raise CheckpointReadError(path, f"is corrupt or truncated ({type(error).__name__}: "
                                        f"{first_line(error)})") from None


def admit(scanned: Scanned, path: Path) -> Scanned:
    """What every torch file passes before ``torch.load`` reads it (``scanned`` is its
    :func:`~pytest_ckpt.formats.torch_file.scan`, which checked that it is a regular file; a zip
    whose entries lie inside the file and do not inflate out of proportion, or a legacy file
    whose storages fit in it; a pickle within the opcode and structure bounds): for a zip,
    every storage the pickle names is present with the bytes it says."""
    if scanned.prefix is None:
        return scanned
    for record in scanned.storages:
        entry = f"{scanned.prefix}data/{record.key}"
        held, wanted = scanned.sizes.get(entry), record.nbytes
        if held is None:
            raise CheckpointReadError(path, f"is corrupt: its pickle names the storage "
                                            f"data/{record.key}, which the archive lacks")
        if wanted is not None and held != wanted:
            raise CheckpointReadError(path, f"is corrupt: its storage data/{record.key} holds "
                                            f"{held:,} bytes where its tensors need {wanted:,}")
    return scanned


def verify_storages(path: Path, chunk: int = 1 << 20) -> None:
    """Read every storage entry of a zip checkpoint in chunks and check its CRC-32 (the
    header-only readers do not read tensor data)."""
    from pytest_ckpt.formats.files import open_regular

    with open_regular(path) as handle, zipfile.ZipFile(handle) as archive:
        for info in archive.infolist():
            if "/data/" not in info.filename and not info.filename.startswith("data/"):
                continue
            try:
                with archive.open(info) as stream:
                    while stream.read(chunk):
                        pass
            except zipfile.BadZipFile:
                raise CheckpointReadError(path, f"is corrupt: its storage {info.filename} "
                                                "fails its CRC-32 check (the file changed "
                                                "after it was written)") from None
            except (OSError, EOFError, ValueError, RuntimeError, NotImplementedError) as error:
                raise CheckpointReadError(path, f"is corrupt: its storage {info.filename} "
                                                f"cannot be read ({error})") from None


@contextmanager
def allowed_globals(safe_globals: Sequence[Any]) -> Iterator[None]:
    """Allow ``safe_globals`` in weights_only loads for the duration, through torch's own
    allow-list (``serialization.safe_globals``, or ``add_safe_globals`` undone afterwards)."""
    if not safe_globals:
        yield
        return
    import torch

    serialization = torch.serialization
    scoped = getattr(serialization, "safe_globals", None)
    if callable(scoped):
        with scoped(list(safe_globals)):
            yield
        return
    if not hasattr(serialization, "add_safe_globals"):
        raise CkptUsageError(
            f"safe_globals= needs torch.serialization.add_safe_globals, which torch "
            f"{torch.__version__} lacks; store plain Python values in the checkpoint instead")
    previous = serialization.get_safe_globals()
    serialization.add_safe_globals(list(safe_globals))
    try:
        yield
    finally:
        serialization.clear_safe_globals()
        serialization.add_safe_globals(previous)


def global_name(value: Any) -> str:
    return f"{getattr(value, '__module__', '?')}.{getattr(value, '__qualname__', value)}"


def _unpickler_line(error: Exception) -> str:
    """The line of torch's refusal that names the cause (``WeightsUnpickler error: ...``)."""
    lines = [line.strip() for line in str(error).splitlines()]
    cause = [line for line in lines if line.startswith("WeightsUnpickler error")]
    return without_unsafe_advice(cause[0]) if cause else first_line(error, 400)


def _names_a_global(cause: str) -> bool:
    """Whether torch's refusal is about a class or function it will not build (and not about
    the bytes being damaged)."""
    return any(word in cause.lower() for word in ("unsupported", "global", "class", "allowed"))


def _unsafe_by_torch(path: Path, data: bytes | None) -> set[str]:
    """torch's own list of the globals a zip checkpoint needs (torch >= 2.5), if it has one."""
    import torch

    get = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)
    if not callable(get) or not zipfile.is_zipfile(str(path) if data is None
                                                   else io.BytesIO(data)):
        return set()
    try:
        return set(get(str(path) if data is None else io.BytesIO(data)))
    except Exception:  # torch's scanner failed on this file: the refusal itself still stands
        return set()


def _allowed_by_torch() -> set[str]:
    """Globals the user already allowed through torch's own allow-list (torch >= 2.4)."""
    import torch

    get = getattr(torch.serialization, "get_safe_globals", None)
    entries = get() if callable(get) else []
    return {entry[1] if isinstance(entry, tuple) else global_name(entry) for entry in entries}


def _refusal(path: Path, error: Exception, safe_globals: Sequence[Any],
             scanned: Scanned | None, data: bytes | None) -> CheckpointReadError:
    """Why weights_only refused the file: each global it needs and where it sits."""
    from pytest_ckpt.formats.pickle_scan import unsafe_globals
    from pytest_ckpt.formats.torch_file import scan

    allowed = {global_name(value) for value in safe_globals} | _allowed_by_torch()
    if scanned is None and data is None:  # a file this process wrote: scanned only now
        try:
            scanned = scan(path)
        except CheckpointReadError:
            scanned = None
    listed = unsafe_globals(scanned) if scanned is not None else []
    found = [(where, name) for where, name in listed if name not in allowed]
    placed = {name for _, name in found}
    found += [("<somewhere in the container>", name)
              for name in sorted(_unsafe_by_torch(path, data) - allowed - placed)]
    if not found and not _names_a_global(_unpickler_line(error)):
        # torch 2.1 reports a damaged file as a weights_only failure too
        return CheckpointReadError(path, f"is corrupt or truncated ({_unpickler_line(error)})")
    if not found:
        return CheckpointReadError(
            path, f"was refused by torch.load(weights_only=True): {_unpickler_line(error)}. "
                  "Nothing from it was executed", advice=(
                "fix: save plain tensors and containers only (torch.save(model.state_dict())), "
                "so that weights_only=True loads it"))
    shown = "; ".join(f"{where}: {name}" for where, name in found[:6])
    more = f" (and {len(found) - 6} more)" if len(found) > 6 else ""
    return CheckpointReadError(
        path, f"was refused by torch.load(weights_only=True); nothing from it was executed. "
              f"It needs these globals: {shown}{more}", unsafe=tuple(found))


def state_dict_of(loaded: Any, path: Path) -> dict[str, Any]:
    """The state_dict inside a loaded checkpoint: bare, or a top-level entry (see
    :func:`~pytest_ckpt.checkpoint.container.container_layout`)."""
    return weights_of(loaded, path)[0]


def weights_of(loaded: Any, path: Path, model_keys: Collection[str] | None = None,
               ) -> tuple[dict[str, Any], ContainerLayout]:
    """The state_dict inside a loaded checkpoint and where it sat; among several top-level
    state_dicts, the one matching ``model_keys`` best."""
    layout = container_layout(loaded, model_keys=model_keys)
    if layout is None:
        raise CheckpointReadError(
            path, f"holds no state_dict (a {type(loaded).__name__} that is neither a mapping of "
                  "tensors nor a dict with one among its top-level entries)")
    inner = loaded if layout.weights_entry is None else loaded[layout.weights_entry]
    return with_metadata(inner), layout


def with_metadata(state: Any) -> dict[str, Any]:
    """A shallow copy of a state_dict that keeps its ``_metadata`` (the module versions
    ``load_state_dict`` reads: BatchNorm's ``num_batches_tracked`` fill depends on it)."""
    from collections import OrderedDict

    metadata = getattr(state, "_metadata", None)
    # kept only in the shape torch writes (module name -> {'version': int}): a crafted file's
    # other _metadata would make load_state_dict itself raise inside pytest-ckpt's own load
    if not isinstance(metadata, Mapping) or not all(
            isinstance(name, str) and isinstance(entry, Mapping)
            and all(isinstance(value, int) for value in entry.values())
            for name, entry in metadata.items()):
        return dict(state)
    copy: OrderedDict[str, Any] = OrderedDict(state)
    copy._metadata = metadata  # type: ignore[attr-defined]
    return copy


# globals no allow-list should admit: calling them runs code or touches files, processes, the
# network or the interpreter (a data class such as argparse.Namespace is not among them)
NEVER_ALLOW = ("builtins.", "__builtin__.", "os.", "posix.", "nt.", "subprocess.", "sys.",
               "shutil.", "pathlib.", "importlib.", "runpy.", "pickle.", "socket.", "operator.",
               "functools.", "code.", "pty.", "webbrowser.", "ctypes.", "marshal.", "types.")


def unsafe_finding(error: CheckpointReadError) -> Finding:
    """A weights_only refusal as an ``unsafe_pickle`` finding: the places, and each global."""
    from pytest_ckpt.diagnosis.findings import Finding

    places = tuple(dict.fromkeys(where for where, _ in error.unsafe))
    return Finding("unsafe_pickle", places,
                   "torch.load(weights_only=True) refuses the globals these entries need; "
                   "nothing from the file was executed",
                   tuple(f"{where}: {name}" for where, name in error.unsafe))


def read_failure(error: CheckpointReadError, *, color: bool = False) -> tuple[str, list[Finding]]:
    """The message for a file that could not be read; a weights_only refusal becomes an
    ``unsafe_pickle`` finding with both fixes."""
    from pytest_ckpt.diagnosis.findings import render_failure

    if not error.unsafe:
        return error.paragraph(), []
    finding = unsafe_finding(error)
    names = list(dict.fromkeys(name for _, name in error.unsafe))
    acting = [name for name in names if name.startswith(NEVER_ALLOW)]
    if acting:
        fix = (f"fix: never allow {', '.join(acting)}: they run code or reach the system when "
               "unpickled, so this file may carry a payload; re-create the checkpoint from "
               "trusted code, saving tensors and plain values only")
    else:
        fix = (f"fix: store plain Python values there (float(x), dict(vars(args)), dataclasses."
               f"asdict(config)), or allow exactly these globals: safe_globals=["
               f"{', '.join(names)}] (torch.serialization.add_safe_globals in your own load "
               "path)")
    headline = f"checkpoint {error.path} cannot be loaded with weights_only=True"
    return render_failure(headline, [finding], fix, color=color), [finding]
