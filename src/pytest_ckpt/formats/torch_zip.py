"""``torch.save`` zip files: saved with ``torch.save``, read with ``weights_only=True``."""

from __future__ import annotations

import pickle
import warnings
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, final

from pytest_ckpt.container import WEIGHT_ENTRIES, container_layout
from pytest_ckpt.errors import CheckpointReadError, CkptUsageError, first_line
from pytest_ckpt.manifest import Manifest

if TYPE_CHECKING:
    import torch

    from pytest_ckpt.findings import Finding


@final
class TorchZipFormat:
    name = "torch"
    suffix = ".pt"
    memory_mapped = True

    def save(self, module: torch.nn.Module, path: Path) -> None:
        import torch

        torch.save(module.state_dict(), path)

    def load(self, path: Path) -> dict[str, Any]:
        """Load with ``weights_only=True``, memory-mapped when the file is a zip."""
        loaded = load_weights_only(path)
        return state_dict_of(loaded, path)

    def read_manifest(self, path: Path) -> Manifest:
        """From the pickle and the zip directory alone when the file holds plain tensors
        (no torch import, no tensor bytes read); otherwise from a weights_only load."""
        from pytest_ckpt.formats.torch_header import read_manifest

        header = read_manifest(path)
        return header if header is not None else Manifest.from_state_dict(self.load(path))


def load_weights_only(path: Path, safe_globals: Sequence[Any] = ()) -> Any:
    """``torch.load(path, weights_only=True)``, memory-mapped when the file is a zip, with
    exactly ``safe_globals`` allowed besides torch's own; a refusal or a corrupt file names
    the file (and each global the refusal is about)."""
    import torch

    mmap = zipfile.is_zipfile(path)
    try:
        with warnings.catch_warnings(), allowed_globals(safe_globals):
            # torch warns before refusing a raw pickle; the refusal below says it better
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            # torch 2.1's weights_only unpickler itself warns about TypedStorage
            warnings.filterwarnings("ignore", message="TypedStorage is deprecated")
            return torch.load(str(path), map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as error:
        raise _refusal(path, error, safe_globals) from None
    except (RuntimeError, EOFError, ValueError, OSError, zipfile.BadZipFile) as error:
        raise CheckpointReadError(path, f"is corrupt or truncated ({first_line(error)})") from None


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
    return cause[0] if cause else first_line(error, 400)


def _unsafe_by_torch(path: Path) -> set[str]:
    """torch's own list of the globals a zip checkpoint needs (torch >= 2.5), if it has one."""
    import torch

    get = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)
    if not callable(get) or not zipfile.is_zipfile(path):
        return set()
    try:
        return set(get(str(path)))
    except Exception:  # torch's scanner failed on this file: the refusal itself still stands
        return set()


def _allowed_by_torch() -> set[str]:
    """Globals the user already allowed through torch's own allow-list (torch >= 2.4)."""
    import torch

    get = getattr(torch.serialization, "get_safe_globals", None)
    entries = get() if callable(get) else []
    return {entry[1] if isinstance(entry, tuple) else global_name(entry) for entry in entries}


def _refusal(path: Path, error: Exception, safe_globals: Sequence[Any]) -> CheckpointReadError:
    """Why weights_only refused the file: each global it needs and where it sits."""
    from pytest_ckpt.pickle_scan import unsafe_globals

    allowed = {global_name(value) for value in safe_globals} | _allowed_by_torch()
    found = [(where, name) for where, name in unsafe_globals(path) if name not in allowed]
    placed = {name for _, name in found}
    found += [("<somewhere in the container>", name)
              for name in sorted(_unsafe_by_torch(path) - allowed - placed)]
    if not found:
        return CheckpointReadError(
            path, f"was refused by torch.load(weights_only=True): {_unpickler_line(error)}. "
                  "It needs globals that are not plain tensors or containers; nothing from it "
                  "was executed")
    shown = "; ".join(f"{where}: {name}" for where, name in found[:6])
    more = f" (and {len(found) - 6} more)" if len(found) > 6 else ""
    return CheckpointReadError(
        path, f"was refused by torch.load(weights_only=True); nothing from it was executed. "
              f"It needs these globals: {shown}{more}", unsafe=tuple(found))


def state_dict_of(loaded: Any, path: Path) -> dict[str, Any]:
    """The state_dict inside a loaded checkpoint: bare, or under a well-known key."""
    layout = container_layout(loaded)
    if layout is None:
        raise CheckpointReadError(
            path, f"holds no state_dict (a {type(loaded).__name__} that is neither a mapping of "
                  f"tensors nor a dict with one under {', '.join(map(repr, WEIGHT_ENTRIES))})")
    inner = loaded if layout.weights_entry is None else loaded[layout.weights_entry]
    return dict(inner)


# globals no allow-list should admit: calling them runs code or touches files, processes, the
# network or the interpreter (a data class such as argparse.Namespace is not among them)
NEVER_ALLOW = ("builtins.", "__builtin__.", "os.", "posix.", "nt.", "subprocess.", "sys.",
               "shutil.", "pathlib.", "importlib.", "runpy.", "pickle.", "socket.", "operator.",
               "functools.", "code.", "pty.", "webbrowser.", "ctypes.", "marshal.", "types.")


def read_failure(error: CheckpointReadError, *, color: bool = False) -> tuple[str, list[Finding]]:
    """The message for a file that could not be read; a weights_only refusal becomes an
    ``unsafe_pickle`` finding with both fixes."""
    from pytest_ckpt.findings import Finding, render_failure

    if not error.unsafe:
        return str(error), []
    places = tuple(dict.fromkeys(where for where, _ in error.unsafe))
    finding = Finding("unsafe_pickle", places,
                      "torch.load(weights_only=True) refuses the globals these entries need; "
                      "nothing from the file was executed",
                      tuple(f"{where}: {name}" for where, name in error.unsafe))
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
