"""``torch.save`` zip files: saved with ``torch.save``, read with ``weights_only=True``."""

from __future__ import annotations

import pickle
import warnings
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, final

from pytest_ckpt.container import WEIGHT_ENTRIES, container_layout
from pytest_ckpt.errors import CheckpointReadError, first_line
from pytest_ckpt.manifest import Manifest

if TYPE_CHECKING:
    import torch


@final
class TorchZipFormat:
    name = "torch"
    suffix = ".pt"

    def save(self, module: torch.nn.Module, path: Path) -> None:
        import torch

        torch.save(module.state_dict(), path)

    def load(self, path: Path) -> dict[str, Any]:
        """Load with ``weights_only=True``, memory-mapped when the file is a zip."""
        loaded = load_weights_only(path)
        return state_dict_of(loaded, path)

    def read_manifest(self, path: Path) -> Manifest:
        return Manifest.from_state_dict(self.load(path))


def load_weights_only(path: Path) -> Any:
    """``torch.load(path, weights_only=True)``; a refusal or a corrupt file names the file."""
    import torch

    mmap = zipfile.is_zipfile(path)
    try:
        with warnings.catch_warnings():
            # torch warns before refusing a raw pickle; the refusal below says it better
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            # torch 2.1's weights_only unpickler itself warns about TypedStorage
            warnings.filterwarnings("ignore", message="TypedStorage is deprecated")
            return torch.load(str(path), map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as error:
        raise CheckpointReadError(path, _refusal(path, error)) from None
    except (RuntimeError, EOFError, ValueError, OSError, zipfile.BadZipFile) as error:
        raise CheckpointReadError(path, f"is corrupt or truncated ({first_line(error)})") from None


def _refusal(path: Path, error: Exception) -> str:
    """Why weights_only refused the file: each global it needs and where it sits."""
    from pytest_ckpt.pickle_scan import unsafe_globals

    found = unsafe_globals(path)
    if not found:
        return (f"was refused by torch.load(weights_only=True): {first_line(error)}. It needs "
                "globals that are not plain tensors or containers; nothing from it was executed")
    shown = "; ".join(f"{where}: {name}" for where, name in found[:6])
    more = f" (and {len(found) - 6} more)" if len(found) > 6 else ""
    names = sorted({name for _, name in found})
    return (f"was refused by torch.load(weights_only=True); nothing from it was executed. "
            f"It needs these globals: {shown}{more}. Fix: store plain Python values there "
            f"(float(x), dict(vars(args))), or allow exactly these globals: "
            f"torch.serialization.add_safe_globals([{', '.join(names)}])")


def state_dict_of(loaded: Any, path: Path) -> dict[str, Any]:
    """The state_dict inside a loaded checkpoint: bare, or under a well-known key."""
    layout = container_layout(loaded)
    if layout is None:
        raise CheckpointReadError(
            path, f"holds no state_dict (a {type(loaded).__name__} that is neither a mapping of "
                  f"tensors nor a dict with one under {', '.join(map(repr, WEIGHT_ENTRIES))})")
    inner = loaded if layout.weights_entry is None else loaded[layout.weights_entry]
    return dict(inner)
