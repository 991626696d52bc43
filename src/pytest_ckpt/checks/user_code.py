"""What the project's own code raised, as findings: the frame that raised (file:line and the
source line), torch's load errors parsed into keys and run through the diagnosis, and a key
the code looked up located in the checkpoint (so a bug in the code is not blamed on the file,
nor the other way round)."""

from __future__ import annotations

import difflib
import re
import traceback
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pytest_ckpt.checkpoint.manifest import Manifest, ManifestRow
from pytest_ckpt.checkpoint.schema import TRAINING_KEYS
from pytest_ckpt.diagnosis.findings import Finding
from pytest_ckpt.errors import first_line, without_unsafe_advice

if TYPE_CHECKING:
    import torch

# frames of these packages are never "the user's" (a raise inside torch is reported at the
# user's call into it)
_NOT_USER = ("/torch/", "/pytest_ckpt/", "/_pytest/", "/pluggy/", "/syrupy/", "/safetensors/")
_LOAD_ERROR = "Error(s) in loading state_dict"
_KEYS = re.compile(r'"([^"]*)"')
_SIZE = re.compile(r"size mismatch for (\S+): copying a param with shape "
                   r"torch\.Size\(\[([^\]]*)\]\) from checkpoint, the shape in current model "
                   r"is torch\.Size\(\[([^\]]*)\]\)")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_REFUSAL = re.compile(r"WeightsUnpickler error: ([^\n]*)")
_LOOKUP_ERRORS = (KeyError, IndexError, AttributeError, TypeError)


@dataclass(frozen=True)
class UserFrame:
    """Where the project's code raised."""

    filename: str
    lineno: int
    function: str
    line: str

    def render(self) -> str:
        return f"{self.filename}:{self.lineno} in {self.function}: {self.line}"

    @property
    def short(self) -> str:
        return f"{self.filename.rpartition('/')[2]}:{self.lineno}"


def user_frame(error: BaseException) -> UserFrame | None:
    """The innermost frame of ``error``'s traceback in the project's code."""
    frames = traceback.extract_tb(error.__traceback__)
    mine = [frame for frame in frames if not any(part in frame.filename for part in _NOT_USER)]
    frame = mine[-1] if mine else None
    if frame is None or frame.lineno is None:
        return None
    return UserFrame(frame.filename, frame.lineno, frame.name, (frame.line or "").strip())


def error_line(error: BaseException, limit: int = 300) -> str:
    """``KeyError: 'lr'``: the type and the first line, without ANSI codes. A ``KeyError``
    that carries a message (torch's ``param 'initial_lr' is not specified ...``) shows the
    message's first line, not its repr with escaped newlines."""
    message = error.args[0] if isinstance(error, KeyError) and len(error.args) == 1 else None
    refusal = _REFUSAL.search(str(error))
    if refusal is not None:  # torch's weights_only refusal: its cause, not its preamble
        text = f"weights_only refused it: {refusal.group(1).strip()}"
        text = text if len(text) <= limit else text[:limit - 3] + "..."
    elif isinstance(message, str) and " " in message.strip():
        text = message.strip().splitlines()[0]
        text = text if len(text) <= limit else text[:limit - 3] + "..."
    else:
        text = first_line(error, limit=limit)
    return f"{type(error).__name__}: {_ANSI.sub('', text)}"


def folded_message(error: BaseException) -> str:
    """The whole message of ``error`` on one line: ANSI codes stripped, whitespace folded,
    advice to load with ``weights_only=False`` dropped (a ``KeyError``'s text, not its repr)."""
    message = error.args[0] if isinstance(error, KeyError) and len(error.args) == 1 else None
    text = message if isinstance(message, str) else str(error)
    return " ".join(_ANSI.sub("", without_unsafe_advice(text)).split())


def raised_line(error: BaseException) -> str:
    """``KeyError: 'lr' (at solver.py:236)``: the error line and where the project raised."""
    frame = user_frame(error)
    return error_line(error) + (f" (at {frame.short})" if frame is not None else "")


@dataclass(frozen=True)
class LoadErrorKeys:
    """What torch's ``Error(s) in loading state_dict`` lists."""

    missing: tuple[str, ...]
    unexpected: tuple[str, ...]
    shapes: tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...]  # key, file, model


def parse_load_error(error: BaseException) -> LoadErrorKeys | None:
    """The keys of a strict ``load_state_dict`` failure, or ``None`` for another error."""
    text = str(error)
    if not isinstance(error, RuntimeError) or _LOAD_ERROR not in text:
        return None
    missing: list[str] = []
    unexpected: list[str] = []
    for line in text.splitlines():
        if "Missing key(s)" in line:
            missing += _KEYS.findall(line)
        elif "Unexpected key(s)" in line:
            unexpected += _KEYS.findall(line)
    shapes = tuple((key, _sizes(old), _sizes(new)) for key, old, new in _SIZE.findall(text))
    return LoadErrorKeys(tuple(missing), tuple(unexpected), shapes)


def _sizes(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(",") if part.strip())


def load_error_manifests(keys: LoadErrorKeys, model: Manifest,
                         handed: Manifest | None) -> tuple[Manifest, Manifest]:
    """(what the load path handed torch, the model) restricted to the keys torch named; rows
    the handed state_dict does not describe are made from the error text."""
    handed_rows = handed.row_map() if handed is not None else {}
    model_rows = model.row_map()
    reference: dict[str, ManifestRow] = {}
    for key in keys.unexpected:
        reference[key] = handed_rows.get(key) or ManifestRow(key, "?", ())
    current = {key: model_rows[key] for key in keys.missing if key in model_rows}
    for key, old, new in keys.shapes:
        row = model_rows.get(key)
        dtype = row.dtype if row is not None else "?"
        reference[key] = ManifestRow(key, dtype, old)
        current[key] = row if row is not None else ManifestRow(key, dtype, new)
    return Manifest(tuple(reference.values())), Manifest(tuple(current.values()))


def frame_container(error: BaseException) -> tuple[str | None, Any]:
    """The dict among the raising frame's locals that holds the key a lookup error names (the
    checkpoint the code loaded itself), with its name; ``(None, None)`` when none does."""
    key = looked_up(error)
    frame, traceback_ = None, error.__traceback__
    while traceback_ is not None:
        if not any(part in traceback_.tb_frame.f_code.co_filename for part in _NOT_USER):
            frame = traceback_.tb_frame
        traceback_ = traceback_.tb_next
    if key is None or frame is None:
        return None, None
    for name, value in frame.f_locals.items():
        if isinstance(value, dict) and _places(value, key):
            return name, value
    return None, None


def lookup_findings(error: BaseException, frame: UserFrame | None, container: Any,
                    model: torch.nn.Module | None, *, holder: str = "") -> list[Finding]:
    """A ``KeyError``/``IndexError``/``AttributeError``/``TypeError`` of the project's code:
    a buffer of the model, or a field of the training state, and whether the checkpoint
    (or the code's local ``holder``) holds it, and where."""
    if not isinstance(error, _LOOKUP_ERRORS):
        return []
    key = looked_up(error)
    raised = f"the code at {frame.short} raised {error_line(error, 120)}" if frame else (
        f"the code raised {error_line(error, 120)}")
    where = f"raised at {frame.render()}" if frame else "raised in the project's code"
    buffers = _buffers(model)
    if key is not None and (key in buffers or key.rpartition(".")[2] in
                            {name.rpartition(".")[2] for name in buffers}):
        held = ", ".join(_places(container, key)[:2]) or "no such key"
        return [Finding("buffer_persistence", (key,), (
            f"{raised}: it handles the buffer `{key}`, which the model does not save "
            f"(persistent=False) and the checkpoint holds {held}; the loader must not "
            "require it"), (where,), fix=(
            f"fix: in the loader, drop the buffer with state_dict.pop({key!r}, None) (it "
            "is absent from checkpoints saved since it became persistent=False)"))]
    places = _places(container, key) if key is not None else []
    if places:
        at = f" at {frame.short}" if frame else ""
        return [Finding("training_state", (), (
            f"{f'`{holder}` (the checkpoint the code loaded)' if holder else 'the checkpoint'}"
            f" HAS {places[0]}: {raised}, not the file"),
            (where, *(f"also at {place}" for place in places[1:3])), fix=(
            f"fix: the bug is in the code{at}: read {key!r} where the checkpoint keeps it "
            f"({holder or 'checkpoint'}{places[0]})"))]
    if key is not None and container is not None:
        return [Finding("training_state", (key,), _absent_hint(key, container, raised),
                        (where, _top_level(container)), fix=_absent_fix(key, container, frame))]
    return [Finding("training_state", (), f"{raised} (a lookup failed in the load or resume "
                                          "path)", (where,))]


def looked_up(error: BaseException) -> str | None:
    """The key or attribute a lookup error names (``'lr'`` of ``KeyError: 'lr'``)."""
    if isinstance(error, KeyError) and error.args and isinstance(error.args[0], (str, int)):
        return str(error.args[0])
    match = re.search(r"has no attribute '([^']+)'", str(error))
    return match.group(1) if match else None


def _absent_hint(key: str, container: Any, raised: str) -> str:
    if _weights_only(key, container):
        return (f"{raised}: the checkpoint holds no `{key}`, and no training state at all: "
                "a weights-only checkpoint given to a training resume")
    other = _saved_as(key, container)
    if other is not None:
        value = container[other]
        shown = f" ({value!r})" if isinstance(value, (int, float, str)) else ""
        return (f"{raised}: the checkpoint holds no `{key}` but holds `{other}`{shown}: the "
                "save writes it under another name than the resume reads, so the frame shown "
                "is the bug")
    return f"{raised}: the checkpoint holds no `{key}`"


def _saved_as(key: str, container: Any) -> str | None:
    """The top-level entry that is ``key`` under another name (``step`` for ``global_step``,
    ``initial_lr`` for ``lr_initial``): a name of ``key``'s words, or a close spelling."""
    words = set(key.lower().split("_"))
    tops = [str(top) for top in _tops(container)]
    for top in tops:
        other = set(top.lower().split("_"))
        if top != key and other <= words:
            return top
    close = difflib.get_close_matches(key, tops, n=1, cutoff=0.8)
    return close[0] if close else None


def _weights_only(key: str, container: Any) -> bool:
    training = key in TRAINING_KEYS or key.rpartition(".")[2] in TRAINING_KEYS
    return training and not any(str(top) in TRAINING_KEYS for top in _tops(container))


def _absent_fix(key: str, container: Any, frame: UserFrame | None) -> str:
    if _weights_only(key, container):
        return (f"fix: resume from a training checkpoint (one that saves {key!r}), or let the "
                f"resume path start fresh on a weights-only file (checkpoint.get({key!r}, 0))")
    other = _saved_as(key, container)
    if other is not None:
        at = f" at {frame.short}" if frame is not None else ""
        return (f"fix: read checkpoint[{other!r}]{at} (the name save() writes), or save it as "
                f"{key!r}: one name on both sides")
    return (f"fix: save {key!r} in the checkpoint, or read it with a default "
            f"(checkpoint.get({key!r}))")


def _tops(container: Any) -> list[Any]:
    return list(container) if isinstance(container, Mapping) else []


def _top_level(container: Any) -> str:
    tops = [str(key) for key in _tops(container)]
    return f"the checkpoint's top-level entries: {', '.join(tops[:8]) or type(container).__name__}"


def _buffers(model: torch.nn.Module | None) -> set[str]:
    if model is None:
        return set()
    return {name for name, _ in model.named_buffers(remove_duplicate=False)}


def _places(container: Any, key: str | None, limit: int = 4) -> list[str]:
    """Where ``key`` sits in the container, as subscripts
    (``['optimizer']['param_groups'][0]['lr']``)."""
    if key is None or container is None:
        return []
    found: list[str] = []
    for path, value in _walk(container, ""):
        if isinstance(value, Mapping) and key in value:
            found.append(f"{path}[{key!r}]")
        if len(found) >= limit:
            break
    return found


def _walk(value: Any, path: str, depth: int = 0) -> Iterator[tuple[str, Any]]:
    if depth > 8:
        return
    yield path, value
    if isinstance(value, Mapping):
        for key, item in value.items():
            if isinstance(item, (Mapping, list, tuple)):
                yield from _walk(item, f"{path}[{key!r}]", depth + 1)
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value[:64]):
            if isinstance(item, (Mapping, list, tuple)):
                yield from _walk(item, f"{path}[{index}]", depth + 1)


def load_call(error: BaseException) -> tuple[torch.nn.Module | None, Mapping[str, Any] | None]:
    """The module whose ``load_state_dict`` raised, and the state_dict it was given, read from
    the outermost ``load_state_dict`` frame of torch in the traceback."""
    import torch

    traceback_ = error.__traceback__
    while traceback_ is not None:
        frame = traceback_.tb_frame
        if frame.f_code.co_name == "load_state_dict" and "/torch/" in frame.f_code.co_filename:
            module, given = frame.f_locals.get("self"), frame.f_locals.get("state_dict")
            if isinstance(module, torch.nn.Module):
                return module, given if isinstance(given, Mapping) else None
        traceback_ = traceback_.tb_next
    return None, None


def raised_findings(error: BaseException, *, model: torch.nn.Module | None,
                    handed: Manifest | None, container: Any,
                    reference_name: str = "state_dict the load path passed") -> list[Finding]:
    """The findings for an exception of the project's load or resume code: torch's load
    errors diagnosed by key, lookups located in the checkpoint, anything else named with
    its frame."""
    from pytest_ckpt.checkpoint.facts import ModelFacts
    from pytest_ckpt.diagnosis.engine import diagnose

    frame = user_frame(error)
    keys = parse_load_error(error)
    where = (f"raised at {frame.render()}",) if frame is not None else ()
    if keys is not None:
        raising, given = load_call(error)  # a from_pretrained builds its own model
        if raising is not None and raising is not model:
            model = raising
            handed = Manifest.from_state_dict(given) if given is not None else None
    if keys is not None and model is not None:
        # what load_state_dict was given, whole, against the whole model (ties and
        # components need every key); from torch's message alone when it is not known
        reference, current = (handed, Manifest.from_module(model)) if handed is not None \
            else load_error_manifests(keys, Manifest.from_module(model), None)
        found = diagnose(reference, current, facts=ModelFacts.from_module(model),
                         reference_name=reference_name)
        return found or [Finding("not_loaded", (), (
            f"load_state_dict raised {error_line(error, 80)}: nothing was loaded"), where)]
    found = lookup_findings(error, frame, container, model)
    if found:
        return found
    return [Finding("not_loaded", (), f"the load path raised {error_line(error)} before the "
                                      "model was loaded", where)]
