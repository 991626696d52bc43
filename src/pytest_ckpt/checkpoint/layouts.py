"""How one module's parameters appear as state_dict keys under each weight_norm layout
(legacy hooks ``{name}_g``/``{name}_v``, parametrizations ``parametrizations.{name}.original0/1``,
removed: a plain ``{name}``), and which layout each site of a manifest uses. Pure."""

from __future__ import annotations

import re
from collections.abc import Collection

LEGACY, PARAMETRIZED, REMOVED = "legacy", "parametrized", "removed"
WN_KEYS = {LEGACY: "{n}_g/{n}_v", PARAMETRIZED: "parametrizations.{n}.original0/1",
           REMOVED: "plain {n}"}


def module_key(module: str, name: str) -> str:
    """The state_dict key of parameter ``name`` of module ``module`` (``''`` = root)."""
    return f"{module}.{name}" if module else name


def weight_norm_keys(module: str, name: str, layout: str) -> tuple[str, ...]:
    """The state_dict keys of one weight-normed parameter in a layout."""
    if layout == LEGACY:
        return (module_key(module, f"{name}_g"), module_key(module, f"{name}_v"))
    if layout == PARAMETRIZED:
        base = module_key(module, f"parametrizations.{name}")
        return (f"{base}.original0", f"{base}.original1")
    return (module_key(module, name),)


_PARAMETRIZED_WN = re.compile(r"^(?:(.*)\.)?parametrizations\.([^.]+)\.original0$")


def weight_norm_layouts(keys: Collection[str]) -> dict[tuple[str, str], str]:
    """(module, parameter) -> ``legacy`` or ``parametrized`` for every weight-normed parameter
    of a set of state_dict keys."""
    layouts: dict[tuple[str, str], str] = {}
    for key in keys:
        if not key.endswith(("_g", ".original0")):
            continue
        match = _PARAMETRIZED_WN.match(key)
        if match and key[:-1] + "1" in keys:
            layouts[(match.group(1) or "", match.group(2))] = PARAMETRIZED
        elif key.endswith("_g") and key[:-2] + "_v" in keys:
            module, _, name = key[:-2].rpartition(".")
            if module_key(module, f"{name}_orig") not in keys:
                layouts[(module, name)] = LEGACY
    return layouts
