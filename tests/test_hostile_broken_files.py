"""Broken, truncated, inconsistent and foreign inputs through every entry point: each is one
clear paragraph naming the file (exit 2 in the CLI, a failed test in the fixture), never a
traceback, never torch's advice to load with ``weights_only=False``.

The inputs are ``tests/hostile/broken.py``'s table (generated at test time). A few of them
are legal checkpoints nonetheless (a DEFLATE-compressed zip, trailing bytes after the
archive, ...): those may load, but must not crash either.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pytest_ckpt import cli
from pytest_ckpt.record.goldens import torch_minor
from tests.hostile.broken import BROKEN, KIND_FORMAT, expected_words

FILE_KINDS = sorted(kind for kind, family in KIND_FORMAT.items() if family != "golden")
GOLDEN_KINDS = sorted(kind for kind, family in KIND_FORMAT.items() if family == "golden")
# legal checkpoints in the table: reading them may succeed
READABLE = {"torch_deflated_data_pkl", "torch_deflated_all", "torch_cuda_storage",
            "torch_big_endian", "torch_future_version", "torch_no_prefix",
            "torch_trailing_garbage"}
# what the message says where the table's guess is another word for it
WORDS = {"torch_two_data_pkl": "2 data.pkl entries", "st_only_length": "not a checkpoint",
         "st_header_not_json": "not a checkpoint", "st_header_list": "not a checkpoint",
         "other_symlink_dev_zero": "character device",
         "other_symlink_dev_null": "character device"}
READ = "snapshot for this test yet"  # the read succeeded; only the snapshot is missing


def is_one_paragraph(message: str, path: Path) -> bool:
    """The file named, no blank line, no traceback, no advice to load unsafely."""
    text = message.strip()
    return bool(text) and str(path) in text and "\n\n" not in text \
        and "Traceback" not in text and "weights_only=False" not in text \
        and "internal error" not in text


def _made(kind: str, root: Path) -> Path:
    """The input of ``kind``, made in its own folder under ``root``."""
    folder = root / kind
    folder.mkdir()
    return BROKEN[kind](folder)


def _target(kind: str, made: Path) -> Path:
    """What a user passes for a golden kind: its ``.pt`` (or what is named so)."""
    return made / f"torch-{torch_minor()}.pt" if KIND_FORMAT[kind] == "golden" else made


@pytest.mark.parametrize("command", ["show", "diff"])
@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_the_cli_answers_every_broken_input_with_one_paragraph_and_exit_2(kind, command,
                                                                         tmp_path, capsys):
    path = _target(kind, _made(kind, tmp_path))
    code = cli.main(["show", str(path)] if command == "show" else
                    ["diff", str(path), "torch.nn:Identity"])
    out, err = capsys.readouterr()
    if code == cli.EXIT_USAGE:
        assert is_one_paragraph(err, path), err
        assert err.startswith(f"pytest-ckpt: checkpoint {path}"), err
        word = WORDS.get(kind, expected_words(kind))
        if command == "show" and word and KIND_FORMAT[kind] != "golden":
            assert word in err.lower(), (word, err)
    else:
        assert kind in READABLE or KIND_FORMAT[kind] == "golden", (code, out, err)
        assert code in (cli.EXIT_OK, cli.EXIT_INCOMPATIBLE) and not err, err


def test_random_bytes_are_not_a_checkpoint_rather_than_a_refusal(tmp_path, capsys):
    for kind in ("other_random", "other_random_pickle_header", "other_plain_pickle"):
        path = BROKEN[kind](tmp_path)
        assert cli.main(["show", str(path)]) == cli.EXIT_USAGE
        err = capsys.readouterr().err
        assert "is not a checkpoint" in err and "globals" not in err, err


INNER_CONFTEST = '''
import json
import pytest

RESULTS = {}


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if call.when == "call":
        excinfo = call.excinfo
        RESULTS[item.nodeid] = {
            "kind": item.callspec.params["kind"],
            "outcome": report.outcome,
            "raised": excinfo.typename if excinfo else None,
            "message": str(excinfo.value) if excinfo else "",
        }
    return report


def pytest_sessionfinish(session):
    with open("results.json", "w") as stream:
        json.dump(RESULTS, stream)
'''

INNER_TESTS = '''
import json
from pathlib import Path

import pytest
import torch

from tests.hostile.broken import golden_inputs, golden_model

FILES = json.loads(Path("files.json").read_text())
GOLDENS = json.loads(Path("goldens.json").read_text())


@pytest.mark.parametrize("entry", ["assert_manifest", "assert_loads", "assert_schema"])
@pytest.mark.parametrize("kind", sorted(FILES))
def test_file(ckpt, kind, entry):
    path = Path(FILES[kind])
    if entry == "assert_manifest":
        ckpt.assert_manifest(path)
    elif entry == "assert_loads":
        ckpt.assert_loads(torch.nn.Linear(4, 3), path)
    else:
        ckpt.assert_schema(path)


@pytest.mark.parametrize("kind", GOLDENS)
def test_golden(ckpt, kind):
    ckpt.golden(golden_model(), inputs=golden_inputs)
'''


def test_the_fixture_fails_every_broken_input_with_one_paragraph(pytester, tmp_path):
    """One pytest run over every kind and fixture entry point (and every golden kind through
    ckpt.golden): each ends in a failed check whose message names the file, none in an
    exception of another kind."""
    files = {kind: str(_made(kind, tmp_path)) for kind in FILE_KINDS}
    for kind in GOLDEN_KINDS:
        shutil.copytree(_made(kind, tmp_path), pytester.path / "__goldens__" / "test_inner" /
                        f"test_golden[{kind}]", symlinks=True)
    (pytester.path / "files.json").write_text(json.dumps(files))
    (pytester.path / "goldens.json").write_text(json.dumps(GOLDEN_KINDS))
    shutil.copytree(Path(__file__).parent / "hostile", pytester.path / "tests" / "hostile",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (pytester.path / "tests" / "__init__.py").write_text("")
    pytester.makeconftest(INNER_CONFTEST)
    pytester.makepyfile(test_inner=INNER_TESTS)
    pytester.makeini("[pytest]\naddopts = -p no:cacheprovider\nfilterwarnings =\n"
                     "    ignore::UserWarning\n")
    pytester.runpytest_subprocess("-q", "-p", "no:randomly")
    results = json.loads((pytester.path / "results.json").read_text())
    assert len(results) == 3 * len(FILE_KINDS) + len(GOLDEN_KINDS)
    unclear = []
    for nodeid, result in results.items():
        kind, message = result["kind"], result["message"]
        schema = nodeid.endswith("-assert_schema]")  # any container has a schema
        path = files[kind] if nodeid.startswith("test_inner.py::test_file") else (
            f"test_golden[{kind}]")
        if result["raised"] is None or READ in message:
            if kind in READABLE or (schema and READ in message):
                continue  # a legal file (or container) that was read
        elif result["raised"] == "Failed" and is_one_paragraph(message, path):
            continue
        unclear.append((nodeid, result["raised"], message[:300]))
    assert unclear == []
