"""Diagnosis rules about how one module's parameters are laid out as keys: weight_norm and
spectral_norm (legacy hooks, parametrizations, removed) and legacy norm names
(``gamma``/``beta``); attention's q/k/v projections are in :mod:`.attention`."""

from __future__ import annotations

import re

from pytest_ckpt.checkpoint.keys import fold_keys
from pytest_ckpt.checkpoint.layouts import (
    LEGACY,
    PARAMETRIZED,
    REMOVED,
    WN_KEYS,
    module_key,
    weight_norm_keys,
    weight_norm_layouts,
)
from pytest_ckpt.checkpoint.manifest import Manifest
from pytest_ckpt.checkpoint.weight_norm import norm_dim
from pytest_ckpt.diagnosis.findings import Finding
from pytest_ckpt.diagnosis.pool import KeyPool


def _layout_in(manifest: Manifest, known: dict[tuple[str, str], str],
               site: tuple[str, str]) -> str | None:
    if site in known:
        return known[site]
    return REMOVED if module_key(*site) in manifest else None


def weight_norm_rule(pool: KeyPool) -> None:
    reference, current = weight_norm_layouts(pool.reference.key_set()), weight_norm_layouts(
        pool.current.key_set())
    changes: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for site in sorted(set(reference) | set(current)):
        old, new = _layout_in(pool.reference, reference, site), _layout_in(
            pool.current, current, site)
        if old is None or new is None or old == new:
            continue
        before, after = weight_norm_keys(*site, old), weight_norm_keys(*site, new)
        if all(k in pool.unexpected for k in before) and all(k in pool.missing for k in after):
            changes.setdefault((old, new), []).append(site)
    for (old, new), sites in changes.items():
        old_keys = [key for site in sites for key in weight_norm_keys(*site, old)]
        new_keys = [key for site in sites for key in weight_norm_keys(*site, new)]
        removal = REMOVED in (old, new)
        pool.claim(Finding("weight_norm_layout", tuple(sorted(old_keys)),
                           _weight_norm_hint(pool, old, new, sites),
                           (f"modules: {', '.join(fold_keys(s[0] or '<root>' for s in sites))}",
                            *(_dim_evidence(pool, old, new, sites) if removal else ())),
                           fix=_removal_fix(pool, old, new, sites) if removal else None),
                   missing=new_keys, unexpected=old_keys)


def _weight_norm_hint(pool: KeyPool, old: str, new: str, sites: list[tuple[str, str]]) -> str:
    name = sites[0][1]
    text = (f"weight_norm layout differs: {pool.name} {old} "
            f"({WN_KEYS[old].format(n=name)}) in {len(sites)} modules, "
            f"{pool.current_name} {new} "
            f"({WN_KEYS[new].format(n=name)}); ")
    if (old, new) == (LEGACY, PARAMETRIZED) and not pool.facts.from_model:
        return text + ("torch converts legacy -> parametrized only inside "
                       "Module.load_state_dict, through the compat hook that "
                       "parametrizations.weight_norm registers")
    if (old, new) == (LEGACY, PARAMETRIZED):
        hooked = sum(site[0] in pool.facts.weight_norm_compat for site in sites)
        return text + (f"torch's compat hook converts it inside Module.load_state_dict for "
                       f"{hooked} of {len(sites)} modules (legacy -> parametrized only; "
                       "torch.distributed.checkpoint and assign-free copies bypass it)")
    dim = _dim_text(_norm_dims(pool, old, new, sites))
    g, v = _g_v_names(new if old == REMOVED else old, name)
    if old == REMOVED:
        return text + (f"the {pool.name} is an export made after remove_weight_norm(): each "
                       f"plain {name} is weight_norm's computed g * v / ||v||; re-wrapping it "
                       f"sets {v} (v) = {name} and {g} (g) = the norm of {name} over every "
                       f"dim except {dim}")
    if new == REMOVED:
        return text + (f"the {pool.current_name} has a plain {name} (built without "
                       f"weight_norm, or remove_weight_norm() was called before the load); "
                       f"the plain {name} is torch._weight_norm({v}, {g}, {dim}): load into "
                       "the model built with weight_norm first, then remove it")
    return text + ("torch converts legacy -> parametrized only, never back: map "
                   f"parametrizations.{name}.original0/1 to {name}_g/{name}_v in the load path"
                   )


def _g_v_names(layout: str, name: str) -> tuple[str, str]:
    g, v = weight_norm_keys("", name, layout)
    return g, v


def _norm_dims(pool: KeyPool, old: str, new: str,
               sites: list[tuple[str, str]]) -> dict[str, int]:
    """Module -> the dim its weight_norm normalizes over, read from the normed side's shapes."""
    manifest, layout = (pool.current, new) if old == REMOVED else (pool.reference, old)
    rows = manifest.row_map()
    dims = {}
    for site in sites:
        g, v = weight_norm_keys(*site, layout)
        dims[site[0]] = norm_dim(rows[g].shape, rows[v].shape)
    return dims


def _dim_text(dims: dict[str, int]) -> str:
    values = set(dims.values())
    return str(values.pop()) if len(values) == 1 else "dim"


def _dim_evidence(pool: KeyPool, old: str, new: str,
                  sites: list[tuple[str, str]]) -> tuple[str, ...]:
    manifest, layout = (pool.current, new) if old == REMOVED else (pool.reference, old)
    dims = _norm_dims(pool, old, new, sites)
    rows = manifest.row_map()
    lines = []
    for dim in sorted(set(dims.values())):
        modules = [site for site in sites if dims[site[0]] == dim]
        pairs = [weight_norm_keys(module, name, layout) for module, name in modules]
        g, v = max(pairs, key=lambda keys: _numel(rows[keys[0]].shape))
        said = "dim=None: one norm of the whole tensor" if dim == -1 else (
            f"dim={dim}" + (" (torch's default)" if dim == 0 else ""))
        lines.append(f"norm {said} in {', '.join(fold_keys(s[0] or '<root>' for s in modules))}"
                     f" ({_side(pool, old, layout)}: e.g. {g} "
                     f"{list(rows[g].shape)} for {v} {list(rows[v].shape)})")
    transposed = [site[0] for site in sites if site[0] in pool.facts.conv_transposes]
    if transposed:
        axis = _dim_text({name: dims[name] for name in transposed})
        lines.append(f"ConvTranspose {', '.join(fold_keys(transposed))}: the weight is [in, "
                     f"out/groups, *kernel], so dim {axis}"
                     + (" (torch's default) is the input-channel axis" if axis == "0" else "")
                     + f"; the mapping uses the dim the {_side(pool, old, layout)}'s "
                       "weight_norm has")
    return tuple(lines)


def _side(pool: KeyPool, old: str, layout: str) -> str:
    return pool.name if layout == old else pool.current_name


def _numel(shape: tuple[int, ...]) -> int:
    count = 1
    for size in shape:
        count *= size
    return count


def _removal_fix(pool: KeyPool, old: str, new: str, sites: list[tuple[str, str]]) -> str:
    """Plain torch first (the order of calls that works), then the key mapping."""
    name = sites[0][1]
    dims = _norm_dims(pool, old, new, sites)
    dim = _dim_text(dims)
    call_dim = "None" if dim == "-1" else dim
    per_module = "" if dim != "dim" else (" with dim as each module's weight_norm has it ("
                                          + "; ".join(f"{m or '<root>'}: {d}"
                                                      for m, d in sorted(dims.items())) + ")")
    if old == REMOVED:
        g, v = _g_v_names(new, name)
        remove, apply = _CALLS[new]
        return (f"fix: build the model with weight_norm, call {_call(remove, name)} on these "
                f"modules (a plain {name}), load the export, then "
                f"{_call(apply, name, call_dim)} again if training continues; or map the "
                f"keys in the load path: {v} = {name}; "
                f"{g} = torch.norm_except_dim({name}, 2, {dim}){per_module}")
    g, v = _g_v_names(old, name)
    remove, apply = _CALLS[old]
    return (f"fix: build the model with {_call(apply, name, call_dim)} on these modules, "
            f"load the checkpoint, then call {_call(remove, name)} (load first, then remove); "
            f"or map the keys in the load path: {name} = torch._weight_norm({v}, {g}, {dim})"
            f"{per_module}")


_CALLS = {LEGACY: ("torch.nn.utils.remove_weight_norm(module{n})",
                   "torch.nn.utils.weight_norm(module{n}, dim={dim})"),
          PARAMETRIZED: ("torch.nn.utils.parametrize.remove_parametrizations(module, '{name}')",
                         "torch.nn.utils.parametrizations.weight_norm(module{n}, dim={dim})")}


def _call(template: str, name: str, dim: str = "0") -> str:
    return template.format(n="" if name == "weight" else f", '{name}'", name=name, dim=dim)


_SPECTRAL = {LEGACY: ("{n}_orig", "{n}_u", "{n}_v"),
             PARAMETRIZED: ("parametrizations.{n}.original", "parametrizations.{n}.0._u",
                            "parametrizations.{n}.0._v")}


def parametrization_rule(pool: KeyPool) -> None:
    """spectral_norm (legacy vs parametrized) and generic parametrizations vs plain tensors."""
    unexplained = pool.missing | pool.unexpected
    sites = {_split_parametrized(key) for key in unexplained if key.endswith(_PARAMETRIZED_ENDS)}
    sites |= {_split_legacy_spectral(key) for key in unexplained if key.endswith(_LEGACY_ENDS)}
    for site in sorted(s for s in sites if s is not None):
        old = _spectral_layout(pool.reference, site)
        new = _spectral_layout(pool.current, site)
        if old is None or new is None or old[0] == new[0]:
            continue
        if all(k in pool.unexpected for k in old[1]) and all(k in pool.missing for k in new[1]):
            pool.claim(Finding(
                "parametrization", old[1],
                f"`{module_key(*site)}` is {old[0]} in the {pool.name} and {new[0]} in the "
                f"{pool.current_name}: torch does not convert between these layouts; map the "
                "keys in the "
                "load path (or build the model the way the checkpoint was saved)",
                (f"{', '.join(old[1])} -> {', '.join(new[1])}",)),
                missing=new[1], unexpected=old[1])


_PARAMETRIZED_KEY = re.compile(r"^(?:(.*)\.)?parametrizations\.([^.]+)\.(original|0\._u|0\._v)$")
_PARAMETRIZED_ENDS = (".original", ".0._u", ".0._v")  # what the pattern needs, tested first
_LEGACY_SPECTRAL_KEY = re.compile(r"^(?:(.*)\.)?([^.]+)_(orig|u)$")
_LEGACY_ENDS = ("_orig", "_u")


def _split_parametrized(key: str) -> tuple[str, str] | None:
    match = _PARAMETRIZED_KEY.match(key)
    return (match.group(1) or "", match.group(2)) if match else None


def _split_legacy_spectral(key: str) -> tuple[str, str] | None:
    match = _LEGACY_SPECTRAL_KEY.match(key)
    return (match.group(1) or "", match.group(2)) if match else None


def _spectral_layout(manifest: Manifest,
                     site: tuple[str, str]) -> tuple[str, tuple[str, ...]] | None:
    module, name = site
    for layout, label in ((LEGACY, "legacy spectral_norm"),
                          (PARAMETRIZED, "parametrized spectral_norm")):
        keys = tuple(module_key(module, k.format(n=name)) for k in _SPECTRAL[layout])
        if all(key in manifest for key in keys):
            return label, keys
    generic = module_key(module, f"parametrizations.{name}.original")
    if generic in manifest:
        return "parametrized (parametrize.register_parametrization)", (generic,)
    plain = module_key(module, name)
    return ("a plain tensor", (plain,)) if plain in manifest else None


_NORM_NAME = re.compile(r"(norm|^ln|_ln|ln_|^bn|_bn)", re.IGNORECASE)


def norm_names_rule(pool: KeyPool) -> None:
    """Legacy ``gamma``/``beta`` names of norm layers, scoped to norm layers only."""
    for old, new in (((".gamma", ".beta"), (".weight", ".bias")),
                     ((".weight", ".bias"), (".gamma", ".beta"))):
        for key in sorted(k for k in pool.unexpected if k.endswith(old[0])):
            module = key[: -len(old[0])]
            old_keys = [module + old[0], module + old[1]]
            new_keys = [module + new[0], module + new[1]]
            if not (all(k in pool.unexpected for k in old_keys)
                    and all(k in pool.missing for k in new_keys) and _is_norm(pool, module)):
                continue
            pool.claim(Finding(
                "rename", tuple(old_keys),
                f"norm layer `{module}` uses the legacy names gamma/beta on one side and "
                "weight/bias on the other: map them in the load path (norm layers only)",
                (f"{', '.join(old_keys)} -> {', '.join(new_keys)}",)),
                missing=new_keys, unexpected=old_keys)


def _is_norm(pool: KeyPool, module: str) -> bool:
    if module in pool.facts.norm_modules:
        return True
    return not pool.facts.norm_modules and bool(_NORM_NAME.search(module.rpartition(".")[2]))
