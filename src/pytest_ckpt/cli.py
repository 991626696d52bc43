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
from typing import TYPE_CHECKING, Any

from pytest_ckpt.checkpoint.facts import ModelFacts
from pytest_ckpt.checkpoint.manifest import Manifest
from pytest_ckpt.errors import CheckpointReadError
from pytest_ckpt.record.report import ReportError

if TYPE_CHECKING:
    from pytest_ckpt.diagnosis.container_diff import Container
    from pytest_ckpt.diagnosis.findings import Finding

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
    notes = [f"{side.label} ({letter}): {note}" for side, letter in ((reference, "A"),
                                                                     (current, "B"))
             for note in _file_notes(side)]
    if current.model is not None:  # one key per tied group, as safetensors saves a tied model
        from pytest_ckpt.checkpoint.manifest import dropped_ties, with_kept_ties

        for key, kept in sorted(dropped_ties(reference.manifest, current.manifest).items()):
            notes.append(f"{key} is not in A: B ties it to {kept}, which A holds (one "
                         "key per tied group, as safetensors saves; safetensors.torch."
                         "load_model and from_pretrained re-tie it, a strict load_state_dict "
                         "raises Missing key(s))")
        reference = replace(reference, manifest=with_kept_ties(reference.manifest,
                                                               current.manifest))
    from pytest_ckpt.formats import recorded_ties

    findings = diagnose(reference.manifest, current.manifest, facts=current.facts,
                        reference_name=reference_name, current_name=current_name,
                        recorded_ties=recorded_ties(Path(a)) if reference.model is None else {})
    from pytest_ckpt.formats.dcp import dcp_load_findings, is_dcp_directory

    if is_dcp_directory(Path(a)) and current.model is not None:  # what dcp.load does
        findings += dcp_load_findings(current.model, reference.manifest)
    containers, container_fix = _container_findings(reference, current)
    if as_json:
        print(json.dumps({"a": a, "b": b, "compatible": not (findings or containers),
                          "findings": [finding.to_json() for finding in findings + containers],
                          "notes": notes}, indent=2))
        return EXIT_INCOMPATIBLE if findings or containers else EXIT_OK
    noted = [f"note: {note}" for note in notes]
    if findings or containers:
        every = findings + containers
        count = f"{len(every)} finding{'s' if len(every) > 1 else ''}"
        headline = (f"{a} (A) and {b} (B) differ: {count} ({len(reference.manifest)} entries "
                    f"in A, {len(current.manifest)} in B)") if findings else (
            f"{a} (A) and {b} (B) hold the same weights ({len(current.manifest)} keys, shapes "
            f"and dtypes) but their containers differ: {count}")
        fix = container_fix if not findings else next(
            (finding.fix for finding in findings if finding.fix),
            "fix: apply the hints above in the load path, or restore the old layout")
        *body, last = render_failure(headline, every, fix, color=use_color(sys.stdout)).split(
            "\n")
        print("\n".join([*body, *noted, last]))  # the fix stays the last line
        return EXIT_INCOMPATIBLE
    print("\n".join([f"compatible: {a} and {b} have the same {len(current.manifest)} keys, "
                     "shapes and dtypes", *noted]))
    return EXIT_OK


def _file_notes(side: Side) -> list[str]:
    """The notes ``show`` prints about a checkpoint file (a legacy layout, accelerator
    storages, FSDP shards); none for a model."""
    from pytest_ckpt.formats import file_notes

    return [] if side.model is not None else file_notes(Path(side.label))


def _container_findings(a: Side, b: Side) -> tuple[list[Finding], str]:
    """What differs between the containers of two torch files (where the weights sit, the
    entries beside them), and the fix when nothing else differs."""
    from pytest_ckpt.diagnosis.container_diff import container_fix, diff_containers

    names = side_names(a, b)
    left, right = _container(a, names[0]), _container(b, names[1])
    if left is None or right is None:
        return [], ""
    return diff_containers(left, right), container_fix(left, right)


def _container(side: Side, name: str) -> Container | None:
    """A torch file's container as ``diff`` compares it; ``None`` for a model, another format
    or form, or a file ``torch.load(weights_only=True)`` refuses (its header was read)."""
    from pytest_ckpt.formats import detect_form, detect_format

    path = Path(side.label)
    if side.model is not None or detect_format(path).name != "torch" or detect_form(path):
        return None
    from pytest_ckpt.checkpoint.container import container_layout
    from pytest_ckpt.checkpoint.schema import Schema
    from pytest_ckpt.diagnosis.container_diff import Container
    from pytest_ckpt.formats.torch_zip import load_weights_only

    try:
        loaded = load_weights_only(path)  # memory-mapped: tensor data is not read
    except CheckpointReadError:
        return None
    layout = container_layout(loaded)
    if layout is None:
        return None
    return Container(name, Schema.of(loaded), layout, frozenset(side.manifest.keys()))


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
