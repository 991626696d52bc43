"""Golden checkpoints: a small file per torch minor version plus a provenance sidecar.

``__goldens__/<test module>/<test name>/torch-2.13.pt`` is the model's state_dict saved with
``torch.save``; ``torch-2.13.json`` beside it records the torch, python and plugin versions,
the format, the seed, the manifest, the file's sha256 and fingerprints of the inputs and of
the eval-mode outputs on them. Every run loads every golden of a test into the current model;
an update writes only the current torch version's pair, atomically.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import platform
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_ckpt.diagnose import diagnose
from pytest_ckpt.errors import CheckpointReadError, first_line
from pytest_ckpt.facts import ModelFacts
from pytest_ckpt.findings import Finding, sort_findings
from pytest_ckpt.manifest import Manifest
from pytest_ckpt.snapshots import atomic_write_bytes

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
              outputs: dict[str, torch.Tensor] | None) -> tuple[bytes, dict[str, Any]]:
    """The golden's bytes and its sidecar (provenance)."""
    import torch

    import pytest_ckpt
    from pytest_ckpt.values import flatten_outputs

    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    data = buffer.getvalue()
    sidecar = {
        "schema": SIDECAR_SCHEMA,
        "test": test,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": f"{platform.system()}-{platform.machine()}",
        "pytest_ckpt": pytest_ckpt.__version__,
        "format": "torch.save (zip), a bare state_dict",
        "seed": seed,
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "manifest": Manifest.from_module(model).render().splitlines(),
        "inputs": None if inputs is None else _fingerprints(flatten_outputs(inputs, "input")),
        "outputs": None if outputs is None else _fingerprints(outputs),
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


# -- fingerprints ------------------------------------------------------------------------

def _fingerprints(tensors: dict[str, torch.Tensor]) -> dict[str, dict[str, Any]]:
    return {name: fingerprint_of(tensor) for name, tensor in tensors.items()}


def fingerprint_of(tensor: torch.Tensor) -> dict[str, Any]:
    """dtype, shape, sha256 of the bits, norms and a strided sample of the values."""
    from pytest_ckpt.manifest import dtype_name
    from pytest_ckpt.values import bits

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


# -- checking ----------------------------------------------------------------------------

@dataclass(frozen=True)
class GoldenOutcome:
    """What loading one golden into the current model found; ``ok`` when nothing."""

    golden: GoldenFile
    written_with: str  # "torch 2.1.2, pytest-ckpt 0.1.0"
    findings: tuple[Finding, ...] = ()
    error: str | None = None
    note: str | None = None  # set when the outputs matched within RTOL, not bitwise
    unreadable: str | None = None  # why the golden (or its sidecar) could not be read

    @property
    def ok(self) -> bool:
        return not self.findings and self.error is None and self.unreadable is None


def check_golden(golden: GoldenFile, target: torch.nn.Module, inputs: Any,
                 load: Callable[..., Any] | None) -> GoldenOutcome:
    """Load ``golden`` into ``target`` (a fresh or poisoned model) through ``load`` and
    compare keys, values and the output fingerprint with what the sidecar recorded."""
    from pytest_ckpt.formats.files import read_bounded
    from pytest_ckpt.formats.torch_zip import load_weights_only, state_dict_of
    from pytest_ckpt.roundtrip import model_outputs, prepare_target, value_findings

    sidecar = golden.provenance()
    written_with = f"torch {sidecar['torch']}, pytest-ckpt {sidecar['pytest_ckpt']}"
    data = read_bounded(golden.path, MAX_GOLDEN_READ, "golden")
    if hashlib.sha256(data).hexdigest() != sidecar["sha256"]:
        raise CheckpointReadError(golden.path, f"does not match the sha256 in "
                                  f"{golden.sidecar.name}: it changed after it was written "
                                  "(or an update was interrupted between the two files)")
    state = state_dict_of(load_weights_only(golden.path), golden.path)
    saved = Manifest.from_state_dict(state)
    before = prepare_target(target, state)
    try:
        (load or _strict_load)(target, state)
    except Exception as error:  # the load path failed: diagnose, then report it
        return GoldenOutcome(golden, written_with, tuple(_key_findings(saved, target)),
                             f"{type(error).__name__}: {first_line(error, limit=300)}")
    findings = _key_findings(saved, target) if load is None else []
    findings += value_findings(state, target.state_dict(keep_vars=True), before)
    note = None
    if sidecar.get("outputs") is not None and inputs is not None:
        outputs = _fingerprints(model_outputs(target, inputs, "the loaded model") or {})
        findings += _output_findings(sidecar, inputs, outputs)
        bitwise = all(outputs.get(name, {}).get("sha256") == recorded["sha256"]
                      for name, recorded in sidecar["outputs"].items())
        note = None if bitwise else (f"outputs within rtol {RTOL:g} of those recorded under "
                                     f"torch {sidecar.get('torch')}, not bitwise equal")
    return GoldenOutcome(golden, written_with, tuple(sort_findings(findings)), note=note)


def _strict_load(target: torch.nn.Module, state: dict[str, Any]) -> Any:
    return target.load_state_dict(state, strict=True)


def _key_findings(saved: Manifest, target: torch.nn.Module) -> list[Finding]:
    return diagnose(saved, Manifest.from_module(target), facts=ModelFacts.from_module(target),
                    reference_name="golden")


def _output_findings(sidecar: dict[str, Any], inputs: Any,
                     outputs: dict[str, dict[str, Any]]) -> list[Finding]:
    from pytest_ckpt.values import flatten_outputs

    recorded_inputs = sidecar.get("inputs") or {}
    current_inputs = _fingerprints(flatten_outputs(inputs, "input"))
    changed = _differences(recorded_inputs, current_inputs)
    if changed:
        return [Finding("output", tuple(changed),
                        "inputs= gives other values than when the golden was written, so its "
                        "outputs cannot be compared: make inputs= deterministic",
                        tuple(f"{name}: {why}" for name, why in changed.items()))]
    differ = _differences(sidecar["outputs"], outputs)
    if not differ:
        return []
    return [Finding("output", tuple(differ),
                    f"eval-mode outputs on inputs= differ from those recorded when the golden "
                    f"was written (torch {sidecar.get('torch')})",
                    tuple(f"{name}: {why}" for name, why in differ.items()))]


def _differences(expected: dict[str, Any], actual: dict[str, Any]) -> dict[str, str]:
    differ = {}
    for name, recorded in expected.items():
        if name not in actual:
            differ[name] = "not produced by the current model"
        elif (why := fingerprint_difference(recorded, actual[name])) is not None:
            differ[name] = why
    return differ
