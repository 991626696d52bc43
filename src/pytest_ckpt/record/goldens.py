"""Golden checkpoints: a small file per torch minor version plus a provenance sidecar.

``__goldens__/<test module>/<test name>/torch-2.13.pt`` is the model's state_dict saved with
``torch.save``; ``torch-2.13.json`` beside it records the torch, python and plugin versions,
the format, the seed, the manifest, the file's sha256 and fingerprints of the inputs and of
the eval-mode outputs on them. Here: the file names, the sidecar (written, read and checked
field by field), the fingerprints; the check that loads goldens is ``checks.golden``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import platform
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_ckpt.checkpoint.manifest import Manifest
from pytest_ckpt.errors import CheckpointReadError, first_line
from pytest_ckpt.record.snapshots import atomic_write_bytes

if TYPE_CHECKING:
    import torch

GOLDEN_DIR = "__goldens__"
SIDECAR_SCHEMA = "pytest-ckpt golden v1"
DEFAULT_MAX_BYTES = 1 << 20
SAMPLES = 64  # output values kept in the sidecar, evenly strided
RTOL = 1e-4  # outputs whose bits differ (another torch or CPU) must agree this closely
_GOLDEN_NAME = re.compile(r"^torch-(\d+)\.(\d+)\.pt$")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(|B|KiB|MiB|GiB|KB|MB|GB)\s*$")
_UNITS = {"": 1, "B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30,
          "KB": 10**3, "MB": 10**6, "GB": 10**9}


class GoldenTooLarge(Exception):
    """The serialised golden is over the size limit; nothing was written."""


def torch_minor() -> str:
    """``2.13`` for torch ``2.13.0+cpu``: goldens are kept per minor version."""
    import torch

    return ".".join(torch.__version__.split("+")[0].split(".")[:2])


def parse_size(text: str | int) -> int:
    """``1048576``, ``"512KiB"``, ``"2MiB"`` -> bytes; ``ValueError`` naming the value."""
    if isinstance(text, int):
        return text
    match = _SIZE.match(text)
    if match is None:
        raise ValueError(f"not a size: {text!r} (write e.g. 1048576, 512KiB or 2MiB)")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


def golden_directory(manifest_location: Path) -> Path:
    """``tests/__snapshots__/test_m/test_x.manifest.txt`` -> ``tests/__goldens__/test_m/test_x``:
    beside syrupy's directory, never inside it (syrupy would count the files as its own)."""
    snapshots = manifest_location.parent.parent
    name = manifest_location.name.removesuffix(".manifest.txt")
    return snapshots.parent / GOLDEN_DIR / manifest_location.parent.name / name


@dataclass(frozen=True)
class GoldenFile:
    """One golden checkpoint and its sidecar."""

    path: Path

    @property
    def label(self) -> str:
        return self.path.stem  # "torch-2.1"

    @property
    def sidecar(self) -> Path:
        return self.path.with_suffix(".json")

    def provenance(self) -> dict[str, Any]:
        """The sidecar, checked field by field (a sidecar is a file a pull request can
        change like any other)."""
        from pytest_ckpt.formats.files import read_bounded

        if not self.sidecar.exists() and not self.sidecar.is_symlink():
            raise CheckpointReadError(self.path, f"has no provenance sidecar {self.sidecar.name}"
                                      )
        raw = read_bounded(self.sidecar, MAX_SIDECAR_BYTES, "golden sidecar")
        try:
            data = json.loads(raw.decode("utf-8"))
        except ValueError as error:
            raise CheckpointReadError(self.sidecar, f"is not a readable golden sidecar "
                                      f"({first_line(error)})") from None
        problem = sidecar_problem(data)
        if problem is not None:
            raise CheckpointReadError(self.sidecar, f"is not a valid {SIDECAR_SCHEMA} sidecar: "
                                      f"{problem}")
        return dict(data)


MAX_SIDECAR_BYTES = 16 << 20
MAX_GOLDEN_READ = 256 << 20  # a golden file is read whole to check its sha256
_TEXT_FIELDS = ("schema", "torch", "pytest_ckpt")
_FINGERPRINT = {"dtype": str, "shape": list, "sha256": str}


def sidecar_problem(data: Any) -> str | None:
    """What is wrong with a parsed sidecar, or ``None``."""
    if not isinstance(data, dict):
        return f"a JSON {type(data).__name__}, not an object"
    if data.get("schema") != SIDECAR_SCHEMA:
        return f"its schema is {data.get('schema')!r}"
    for name in _TEXT_FIELDS:
        if not isinstance(data.get(name), str):
            return f"field {name!r} is {_kind(data.get(name))}, not a string"
    digest = data.get("sha256")
    if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
        return f"field 'sha256' is {_kind(digest)}, not a hex sha256"
    if not isinstance(data.get("manifest", []), list):
        return "field 'manifest' is not a list of lines"
    for name in ("inputs", "outputs"):
        problem = _fingerprints_problem(data.get(name), name)
        if problem is not None:
            return problem
    return None


def _fingerprints_problem(value: Any, name: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        return f"field {name!r} is {_kind(value)}, not an object of fingerprints"
    for key, entry in value.items():
        if not isinstance(entry, dict):
            return f"{name}[{key!r}] is {_kind(entry)}, not a fingerprint"
        for field_name, kind in _FINGERPRINT.items():
            if not isinstance(entry.get(field_name), kind):
                return f"{name}[{key!r}] has no {field_name} ({kind.__name__})"
        if not all(type(size) is int for size in entry["shape"]) or not all(
                isinstance(entry.get(part), (int, float, type(None))) for part in ("l1",)):
            return f"{name}[{key!r}] has a malformed shape or norm"
        sample = entry.get("sample")
        if sample is not None and (not isinstance(sample, list) or not all(
                isinstance(item, (int, float)) for item in sample)):
            return f"{name}[{key!r}] has a malformed sample"
    return None


def _kind(value: Any) -> str:
    return "missing" if value is None else f"a {type(value).__name__}"


def goldens_in(directory: Path) -> list[GoldenFile]:
    """The goldens of one test, oldest torch first."""
    if not directory.is_dir():
        return []
    found = [(tuple(map(int, match.groups())), path) for path in directory.iterdir()
             if (match := _GOLDEN_NAME.match(path.name))]  # a directory so named is refused later
    return [GoldenFile(path) for _, path in sorted(found)]


# -- writing -----------------------------------------------------------------------------

def serialise(model: torch.nn.Module, inputs: Any, *, test: str, seed: int,
              outputs: dict[str, torch.Tensor] | None, data: bytes | None = None,
              ) -> tuple[bytes, dict[str, Any]]:
    """The golden's bytes (``torch.save`` of the state_dict, or ``data`` the project's saver
    wrote) and its sidecar (provenance)."""
    from importlib import metadata

    import torch

    from pytest_ckpt.checkpoint.values import flatten_outputs

    written = "torch.save (zip), a bare state_dict" if data is None else (
        "the project's saver (save_to=)")
    if data is None:
        buffer = io.BytesIO()
        torch.save(model.state_dict(), buffer)
        data = buffer.getvalue()
    sidecar = {
        "schema": SIDECAR_SCHEMA,
        "test": test,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": f"{platform.system()}-{platform.machine()}",
        "pytest_ckpt": metadata.version("pytest-ckpt"),
        "format": written,
        "seed": seed,
        "threads": torch.get_num_threads(),  # intra-op threads: they split float reductions
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "manifest": Manifest.from_module(model).render().splitlines(),
        "inputs": None if inputs is None else fingerprints(flatten_outputs(inputs, "input")),
        "outputs": None if outputs is None else fingerprints(outputs),
    }
    return data, sidecar


def write_golden(directory: Path, data: bytes, sidecar: dict[str, Any], *,
                 max_bytes: int) -> Path | None:
    """Write this torch version's golden (data first, then its sidecar); ``None`` when the
    stored golden already holds these exact bytes. Other versions' files are never touched."""
    path = directory / f"torch-{torch_minor()}.pt"
    if len(data) > max_bytes:
        raise GoldenTooLarge(
            f"golden {path} would be {_size(len(data))}, over the limit of {_size(max_bytes)}")
    if _pair_holds(GoldenFile(path), data):
        return None
    # data first, then its sidecar: a run killed between the two leaves a pair whose sidecar
    # does not match; the next update finds that here and rewrites both
    atomic_write_bytes(path, data)
    atomic_write_bytes(GoldenFile(path).sidecar, (json.dumps(sidecar, indent=1) + "\n").encode())
    return path


def _pair_holds(golden: GoldenFile, data: bytes) -> bool:
    """Whether the stored golden is already ``data`` with a valid sidecar that says so."""
    from pytest_ckpt.formats.files import read_bounded

    try:
        stored = read_bounded(golden.path, len(data), "golden")
        recorded = golden.provenance()
    except CheckpointReadError:
        return False
    return stored == data and recorded["sha256"] == hashlib.sha256(data).hexdigest()


def _size(count: int) -> str:
    return f"{count / (1 << 20):.2f} MiB ({count} bytes)"


@contextlib.contextmanager
def recorded_threads(sidecar: dict[str, Any]) -> Iterator[None]:
    """Run with the intra-op thread count the golden's outputs were computed with, when it
    was recorded under this torch version: a float reduction split over another number of
    threads (pytest-xdist workers share the cores) rounds differently, so outputs compare
    bitwise only with the same split."""
    import torch

    recorded = sidecar.get("threads")
    if not isinstance(recorded, int) or recorded < 1 or sidecar.get("torch") != torch.__version__:
        yield
        return
    current = torch.get_num_threads()
    torch.set_num_threads(recorded)
    try:
        yield
    finally:
        torch.set_num_threads(current)


def recorded_under(sidecar: dict[str, Any]) -> str:
    """What differs between the golden's recording and this run, for a 'not bitwise' note."""
    import torch

    if sidecar.get("torch") != torch.__version__:
        return f"torch {sidecar.get('torch')} (this run: torch {torch.__version__})"
    threads = sidecar.get("threads")
    if not isinstance(threads, int):
        return (f"torch {sidecar.get('torch')} with an intra-op thread count it did not record "
                f"(this run: {torch.get_num_threads()}; float reductions split differently)")
    return (f"torch {sidecar.get('torch')} with {threads} intra-op threads (this run: the same; "
            "the model's kernels are not deterministic on this machine)")


# -- fingerprints ------------------------------------------------------------------------

def fingerprints(tensors: dict[str, torch.Tensor]) -> dict[str, dict[str, Any]]:
    return {name: fingerprint_of(tensor) for name, tensor in tensors.items()}


def fingerprint_of(tensor: torch.Tensor) -> dict[str, Any]:
    """dtype, shape, sha256 of the bits, norms and a strided sample of the values."""
    from pytest_ckpt.checkpoint.manifest import dtype_name
    from pytest_ckpt.checkpoint.values import bits

    flat = tensor.detach().cpu().contiguous()
    wide = None if flat.is_complex() else flat.reshape(-1).double()
    step = max(1, math.ceil(flat.numel() / SAMPLES))
    return {
        "dtype": dtype_name(flat.dtype),
        "shape": list(flat.shape),
        "sha256": hashlib.sha256(bits(flat).numpy().tobytes()).hexdigest(),
        "l1": None if wide is None else float(wide.abs().sum()),
        "sample": None if wide is None else [float(value) for value in wide[::step]],
    }


def fingerprint_difference(expected: dict[str, Any], actual: dict[str, Any]) -> str | None:
    """``None`` when equal (bitwise, or within ``RTOL`` when the bits differ); else why."""
    if (expected["dtype"], expected["shape"]) != (actual["dtype"], actual["shape"]):
        return (f"{actual['dtype']}{actual['shape']} where the golden had "
                f"{expected['dtype']}{expected['shape']}")
    if expected["sha256"] == actual["sha256"]:
        return None
    if expected["sample"] is None or actual["sample"] is None:
        return "values differ"
    pairs = list(zip(expected["sample"], actual["sample"], strict=True))
    scale = max((abs(value) for value, _ in pairs), default=0.0) or 1.0
    worst = max((abs(a - e) for e, a in pairs), default=0.0)
    l1_gap = abs(actual["l1"] - expected["l1"]) / max(abs(expected["l1"]), 1e-30)
    if worst <= RTOL * scale and l1_gap <= RTOL:
        return None
    return (f"max abs error {worst:.3g} on {len(pairs)} sampled values (scale {scale:.3g}), "
            f"L1 norm off by {l1_gap:.3g} (relative); tolerance {RTOL:g}")
