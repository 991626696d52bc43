"""pytest-ckpt: checkpoint compatibility as a tested property of PyTorch projects.

Importing this package never imports torch; torch is imported where a ckpt feature runs.
"""

from __future__ import annotations

from pytest_ckpt.errors import CheckpointReadError, CkptUsageError
from pytest_ckpt.findings import Finding, fold_keys, render_failure
from pytest_ckpt.manifest import Manifest, ManifestRow

__all__ = [
    "CheckpointReadError",
    "CkptUsageError",
    "Finding",
    "Manifest",
    "ManifestRow",
    "fold_keys",
    "render_failure",
]
__version__ = "0.1.0"
