"""The ``pytest-ckpt`` console command: the same engine outside pytest.

``show FILE`` prints a checkpoint's manifest and container layout; ``diff A B`` diagnoses two
checkpoints, or a checkpoint and a model factory ``package.module:callable``; ``matrix
REPORT.json...`` renders ``--ckpt-report`` files as one Markdown table. Exit status: 0
compatible, 1 not compatible (or a failed check in a report), 2 usage error or unreadable
input.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_ckpt.checkpoint.facts import ModelFacts
from pytest_ckpt.checkpoint.manifest import Manifest
from pytest_ckpt.errors import CheckpointReadError
from pytest_ckpt.record.report import ReportError

EXIT_OK, EXIT_INCOMPATIBLE, EXIT_USAGE = 0, 1, 2
HEADER_ONLY = "header read; tensor data not read or CRC-checked"


class InputError(Exception):
    """An argument that names no readable checkpoint or importable factory."""


@dataclass(frozen=True)
class Side:
    """One operand of ``diff``: a checkpoint file or a model built by a factory."""

    label: str
    manifest: Manifest
    facts: ModelFacts | None = None
    model: Any = None  # the module built by a factory


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "show":
            return _show(Path(args.file), as_json=args.json)
        if args.command == "matrix":
            return _matrix([Path(report) for report in args.reports])
        return _diff(args.a, args.b, as_json=args.json)
    except CheckpointReadError as error:
        from pytest_ckpt.formats.torch_zip import read_failure

        print(f"pytest-ckpt: {read_failure(error)[0]}", file=sys.stderr)
        return EXIT_USAGE
    except (InputError, ReportError) as error:
        print(f"pytest-ckpt: {error}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as error:  # a bug of pytest-ckpt's: still one paragraph, exit 2
        if os.environ.get("PYTEST_CKPT_DEBUG"):
            raise
        from pytest_ckpt.errors import first_line

        print(f"pytest-ckpt: internal error in {args.command} ({type(error).__name__}: "
              f"{first_line(error)})\nfix: none needed in your files; please report it with "
              "the command line (PYTEST_CKPT_DEBUG=1 shows the traceback)", file=sys.stderr)
        return EXIT_USAGE


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pytest-ckpt", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    show = commands.add_parser("show", help="manifest and container layout of a checkpoint, "
                                             "from its header (tensor data is not read)")
    show.add_argument("file")
    show.add_argument("--json", action="store_true", help="print JSON")
    diff = commands.add_parser("diff", help="diagnose A (checkpoint) against B (model or file)")
    diff.add_argument("a", help="checkpoint file or package.module:factory")
    diff.add_argument("b", help="checkpoint file or package.module:factory")
    diff.add_argument("--json", action="store_true", help="print JSON")
    matrix = commands.add_parser(
        "matrix", help="Markdown table of checks x environments from --ckpt-report files")
    matrix.add_argument("reports", nargs="+", metavar="REPORT.json")
    return parser


def _matrix(paths: list[Path]) -> int:
    """Print the table; exit 1 when a check failed in a test not marked xfail."""
    from pytest_ckpt.record.report import failed_checks, read_report, render_matrix

    reports = [read_report(path) for path in paths]
    print(render_matrix(reports), end="")
    failed = sum(failed_checks(report) for report in reports)
    return EXIT_INCOMPATIBLE if failed else EXIT_OK


def _show(path: Path, *, as_json: bool) -> int:
    from pytest_ckpt.formats import detect_format, file_notes

    fmt = detect_format(path)
    manifest = fmt.read_manifest(path)
    layout = _layout_of(path, fmt.name)
    notes = file_notes(path)
    if as_json:
        print(json.dumps({"file": str(path), "format": fmt.name, "container": layout,
                          "notes": notes, "manifest": [_row_json(row) for row in manifest]},
                         indent=2))
        return EXIT_OK
    print(f"{path}: {fmt.name}, {len(manifest)} entries, {manifest.numel:,} elements "
          f"({HEADER_ONLY})")
    print(f"container: {layout['layout']}" + "".join(
        f"; also {key} ({kind})" for key, kind in layout["others"].items()))
    for note in notes:
        print(f"note: {note}")
    print(manifest.render(), end="")
    return EXIT_OK


def _layout_of(path: Path, format_name: str) -> dict[str, Any]:
    if format_name == "safetensors":
        from pytest_ckpt.formats.safetensors_file import read_header

        metadata = read_header(path).get("__metadata__", {})
        return {"layout": "safetensors (flat tensor map)", "weights_entry": None,
                "others": {f"metadata.{key}": "str" for key in metadata}}
    if format_name == "dcp":
        return {"layout": "torch.distributed.checkpoint directory (read from .metadata)",
                "weights_entry": None, "others": {}}
    from pytest_ckpt.checkpoint.container import container_layout
    from pytest_ckpt.formats.torch_header import is_record, read_container

    container = read_container(path)
    if container is not None:
        layout = container_layout(container, is_record)
    else:
        from pytest_ckpt.formats.torch_zip import load_weights_only

        layout = container_layout(load_weights_only(path))
    if layout is None:
        raise CheckpointReadError(path, "holds no state_dict")
    return layout.to_json()


def _row_json(row: Any) -> dict[str, Any]:
    return {"key": row.key, "dtype": row.dtype, "shape": list(row.shape), "kind": row.kind,
            "tie": row.tie}


def _diff(a: str, b: str, *, as_json: bool) -> int:
    from pytest_ckpt.diagnosis.engine import diagnose
    from pytest_ckpt.diagnosis.findings import render_failure

    reference, current = _side(a), _side(b)
    findings = diagnose(reference.manifest, current.manifest, facts=current.facts,
                        reference_name="checkpoint" if reference.facts is None else "model A")
    if Path(a).is_dir() and current.model is not None:  # a DCP checkpoint: what dcp.load does
        from pytest_ckpt.formats.dcp import dcp_load_findings

        findings += dcp_load_findings(current.model, reference.manifest)
    if as_json:
        print(json.dumps({"a": a, "b": b, "compatible": not findings,
                          "findings": [finding.to_json() for finding in findings]}, indent=2))
    elif findings:
        print(render_failure(
            f"{a} (A) and {b} (B) differ: {len(findings)} "
            f"finding{'s' if len(findings) > 1 else ''} "
            f"({len(reference.manifest)} entries in A, {len(current.manifest)} in B)",
            findings, "fix: apply the hints above in the load path, or restore the old layout",
            color=sys.stdout.isatty()))
    else:
        print(f"compatible: {a} and {b} have the same {len(current.manifest)} keys, "
              "shapes and dtypes")
    return EXIT_INCOMPATIBLE if findings else EXIT_OK


def _side(spec: str) -> Side:
    path = Path(spec)
    if path.exists() or ":" not in spec:
        from pytest_ckpt.formats import read_checkpoint_manifest

        return Side(spec, read_checkpoint_manifest(path))
    module_name, _, attribute = spec.partition(":")
    sys.path.insert(0, os.getcwd())
    try:
        factory = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise InputError(f"cannot import {spec!r}: {error}") from None
    try:
        model = factory()
    except Exception as error:
        raise InputError(f"calling {spec}() raised {type(error).__name__}: {error}") from None
    import torch

    if not isinstance(model, torch.nn.Module):
        raise InputError(f"{spec} returned {type(model).__name__}, not a torch.nn.Module")
    return Side(spec, Manifest.from_module(model), ModelFacts.from_module(model), model)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
