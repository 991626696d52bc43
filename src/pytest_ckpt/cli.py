"""The pytest-ckpt console command: the same engine outside pytest.

``show FILE`` prints a checkpoint's manifest and container layout; ``diff A B`` diagnoses two
checkpoints, or a checkpoint and a model factory ``package.module:callable``; ``matrix
REPORT.json...`` renders ``--ckpt-report`` files as one Markdown table. Exit status: 0
compatible, 1 not compatible (or a failed check in a report), 2 usage error or unreadable
input, 141 when the reader of the output closed it early (``| head``). Colour only on a
terminal, never with ``NO_COLOR`` set, always with ``FORCE_COLOR`` set.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pytest_ckpt.checkpoint.facts import ModelFacts
from pytest_ckpt.checkpoint.manifest import Manifest
from pytest_ckpt.errors import CheckpointReadError
from pytest_ckpt.record.report import ReportError

EXIT_OK, EXIT_INCOMPATIBLE, EXIT_USAGE = 0, 1, 2
EXIT_BROKEN_PIPE = 141  # what a shell reports for a command whose reader left (| head)
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

    @property
    def kind(self) -> str:
        return "checkpoint" if self.model is None else "model"


def side_names(a: Side, b: Side) -> tuple[str, str]:
    """What the messages call A and B: "checkpoint" and "model", or "checkpoint A" and
    "checkpoint B" when both are files (both models: "model A" and "model B")."""
    if a.kind == b.kind:
        return f"{a.kind} A", f"{b.kind} B"
    return a.kind, b.kind


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
    except BrokenPipeError:  # not an error of ours: nothing more to print, and nowhere to
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # flush it at exit
        return EXIT_BROKEN_PIPE
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
    parser.add_argument("--version", action="version", version=f"pytest-ckpt {_version()}")
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


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("pytest-ckpt")
    except metadata.PackageNotFoundError:  # run from a source tree that is not installed
        return "unknown (not installed)"


def use_color(stream: Any) -> bool:
    """Colour on a terminal; ``NO_COLOR`` (set, not empty) turns it off and wins over
    ``FORCE_COLOR`` (set, not empty), which turns it on (https://no-color.org,
    https://force-color.org)."""
    if os.environ.get("NO_COLOR"):
        return False
    return bool(os.environ.get("FORCE_COLOR")) or bool(getattr(stream, "isatty", bool)())


def _matrix(paths: list[Path]) -> int:
    """Print the table; exit 1 when a check failed in a test not marked xfail."""
    from pytest_ckpt.record.report import failed_checks, read_report, render_matrix

    reports = [read_report(path) for path in paths]
    print(render_matrix(reports, [str(path) for path in paths]), end="")
    failed = sum(failed_checks(report) for report in reports)
    return EXIT_INCOMPATIBLE if failed else EXIT_OK


def _show(path: Path, *, as_json: bool) -> int:
    from pytest_ckpt.formats import checkpoint_layout, detect_format, file_notes, reading_notes

    fmt = detect_format(path)
    manifest = fmt.read_manifest(path)
    layout = checkpoint_layout(path)
    notes = [*reading_notes(path), *file_notes(path)]
    if as_json:
        print(json.dumps({"file": str(path), "format": fmt.name, "container": layout,
                          "notes": notes,
                          "manifest": [_row_json(row) for row in _natural_rows(manifest)]},
                         indent=2))
        return EXIT_OK
    print(f"{path}: {fmt.name}, {len(manifest)} entries, {manifest.numel:,} elements "
          f"({HEADER_ONLY})")
    print(f"container: {layout['layout']}" + "".join(
        f"; also {key} ({kind})" for key, kind in layout["others"].items()))
    for note in notes:
        print(f"note: {note}")
    print(_natural_text(manifest), end="")
    return EXIT_OK


def _natural_rows(manifest: Manifest) -> list[Any]:
    from pytest_ckpt.checkpoint.keys import natural_key

    return sorted(manifest, key=lambda row: (natural_key(row.key), row.key))


def _natural_text(manifest: Manifest) -> str:
    """The manifest's text with its rows in natural key order (``layers.2`` before
    ``layers.10``); snapshots keep the plain sorted order, and both parse to the same rows."""
    from pytest_ckpt.checkpoint.keys import natural_key
    from pytest_ckpt.checkpoint.manifest import unescape_key

    lines = manifest.render().splitlines(keepends=True)
    notes = [line for line in lines if line.startswith("#")]
    rows = [line for line in lines if not line.startswith("#")]

    def order(line: str) -> tuple[list[Any], str]:
        key = unescape_key(line.split(" ", 1)[0])
        return natural_key(key), key

    return "".join(notes + sorted(rows, key=order))


def _row_json(row: Any) -> dict[str, Any]:
    return {"key": row.key, "dtype": row.dtype, "shape": list(row.shape), "kind": row.kind,
            "tie": row.tie}


def _diff(a: str, b: str, *, as_json: bool) -> int:
    from pytest_ckpt.diagnosis.engine import diagnose
    from pytest_ckpt.diagnosis.findings import render_failure

    current = _side(b)  # first: a container of several state_dicts is read for B's model
    reference = _side(a, current.manifest.keys() if current.model is not None else None)
    reference_name, current_name = side_names(reference, current)
    notes = []
    if current.model is not None:  # one key per tied group, as safetensors saves a tied model
        from pytest_ckpt.checkpoint.manifest import dropped_ties, with_kept_ties

        for key, kept in sorted(dropped_ties(reference.manifest, current.manifest).items()):
            notes.append(f"note: {key} is not in A: B ties it to {kept}, which A holds (one "
                         "key per tied group, as safetensors saves; safetensors.torch."
                         "load_model and from_pretrained re-tie it, a strict load_state_dict "
                         "raises Missing key(s))")
        reference = replace(reference, manifest=with_kept_ties(reference.manifest,
                                                               current.manifest))
    findings = diagnose(reference.manifest, current.manifest, facts=current.facts,
                        reference_name=reference_name, current_name=current_name)
    from pytest_ckpt.formats.dcp import dcp_load_findings, is_dcp_directory

    if is_dcp_directory(Path(a)) and current.model is not None:  # what dcp.load does
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
            color=use_color(sys.stdout)))
    else:
        print(f"compatible: {a} and {b} have the same {len(current.manifest)} keys, "
              "shapes and dtypes")
    if not as_json:
        print("\n".join(notes), end="\n" if notes else "")
    return EXIT_INCOMPATIBLE if findings else EXIT_OK


def _side(spec: str, model_keys: Sequence[str] | None = None) -> Side:
    path = Path(spec)
    if path.exists() or ":" not in spec:
        from pytest_ckpt.formats import read_checkpoint_manifest

        return Side(spec, read_checkpoint_manifest(path, model_keys))
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
