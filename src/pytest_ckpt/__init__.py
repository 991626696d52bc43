"""pytest-ckpt: checkpoint compatibility as a tested property of PyTorch projects.

Importing this package imports nothing else (the pytest plugin module ``pytest_ckpt.plugin``
is imported on every pytest start); the public names below load on first use, and torch is
imported only where a ckpt feature runs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pytest_ckpt.checkpoint.facts import ModelFacts
    from pytest_ckpt.checkpoint.keys import fold_keys
    from pytest_ckpt.checkpoint.manifest import Manifest, ManifestRow
    from pytest_ckpt.diagnosis.findings import Finding, render_failure
    from pytest_ckpt.errors import CheckpointReadError, CkptUsageError

_PUBLIC = {
    "CheckpointReadError": "pytest_ckpt.errors",
    "CkptUsageError": "pytest_ckpt.errors",
    "Finding": "pytest_ckpt.diagnosis.findings",
    "Manifest": "pytest_ckpt.checkpoint.manifest",
    "ManifestRow": "pytest_ckpt.checkpoint.manifest",
    "ModelFacts": "pytest_ckpt.checkpoint.facts",
    "fold_keys": "pytest_ckpt.checkpoint.keys",
    "render_failure": "pytest_ckpt.diagnosis.findings",
}
__all__ = [
    "CheckpointReadError",
    "CkptUsageError",
    "Finding",
    "Manifest",
    "ManifestRow",
    "ModelFacts",
    "fold_keys",
    "render_failure",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'pytest_ckpt' has no attribute {name!r}")
