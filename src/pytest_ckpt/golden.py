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
        try:
            data = json.loads(self.sidecar.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise CheckpointReadError(self.path, f"has no provenance sidecar {self.sidecar.name}"
                                      ) from None
        except (OSError, ValueError) as error:
            raise CheckpointReadError(self.sidecar, f"is not a readable golden sidecar "
                                      f"({first_line(error)})") from None
        if not isinstance(data, dict) or data.get("schema") != SIDECAR_SCHEMA:
            raise CheckpointReadError(self.sidecar, f"is not a {SIDECAR_SCHEMA} sidecar")
        return data


def goldens_in(directory: Path) -> list[GoldenFile]:
    """The goldens of one test, oldest torch first."""
    if not directory.is_dir():
        return []
    found = [(tuple(map(int, match.groups())), path) for path in directory.iterdir()
             if (match := _GOLDEN_NAME.match(path.name))]
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
    golden = GoldenFile(path)
    if path.is_file() and path.read_bytes() == data and golden.sidecar.is_file():
        return None
    atomic_write_bytes(path, data)
    atomic_write_bytes(golden.sidecar, (json.dumps(sidecar, indent=1) + "\n").encode())
    return path


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

    @property
    def ok(self) -> bool:
        return not self.findings and self.error is None


def check_golden(golden: GoldenFile, target: torch.nn.Module, inputs: Any,
                 load: Callable[..., Any] | None) -> GoldenOutcome:
    """Load ``golden`` into ``target`` (a fresh or poisoned model) through ``load`` and
    compare keys, values and the output fingerprint with what the sidecar recorded."""
    from pytest_ckpt.formats.torch_zip import load_weights_only, state_dict_of
    from pytest_ckpt.roundtrip import model_outputs, prepare_target, value_findings

    sidecar = golden.provenance()
    written_with = f"torch {sidecar.get('torch')}, pytest-ckpt {sidecar.get('pytest_ckpt')}"
    data = golden.path.read_bytes()
    if hashlib.sha256(data).hexdigest() != sidecar.get("sha256"):
        raise CheckpointReadError(golden.path, f"does not match the sha256 in "
                                  f"{golden.sidecar.name}: it changed after it was written")
    state = state_dict_of(load_weights_only(golden.path), golden.path)
    saved = Manifest.from_state_dict(state)
    before = prepare_target(target, state)
    try:
        (load or _strict_load)(target, state)
    except Exception as error:  # the load path failed: diagnose, then report it
        return GoldenOutcome(golden, written_with, tuple(_key_findings(saved, target)),
                             f"{type(error).__name__}: {first_line(error, limit=300)}")
    findings = _key_findings(saved, target) if load is None else []
    findings += value_findings(state, target.state_dict(), before)
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
