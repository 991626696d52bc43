"""Diagnosis rules about how one module's parameters are laid out as keys: weight_norm and
spectral_norm (legacy hooks, parametrizations, removed), MultiheadAttention packing and legacy
norm names (``gamma``/``beta``)."""

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
        pool.claim(Finding("weight_norm_layout", tuple(sorted(old_keys)),
                           _weight_norm_hint(pool, old, new, sites),
                           (f"modules: {', '.join(fold_keys(s[0] or '<root>' for s in sites))}",)),
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
    if old == REMOVED:
        return text + ("the checkpoint is an export made after remove_weight_norm(): load it "
                       "into the model before applying weight_norm")
    if new == REMOVED:
        return text + "remove_weight_norm() on a model built with weight_norm, then load"
    return text + ("torch converts legacy -> parametrized only, never back: map "
                   f"parametrizations.{name}.original0/1 to {name}_g/{name}_v in the load path"
                   )


_SPECTRAL = {LEGACY: ("{n}_orig", "{n}_u", "{n}_v"),
             PARAMETRIZED: ("parametrizations.{n}.original", "parametrizations.{n}.0._u",
                            "parametrizations.{n}.0._v")}


def parametrization_rule(pool: KeyPool) -> None:
    """spectral_norm (legacy vs parametrized) and generic parametrizations vs plain tensors."""
    sites = {_split_parametrized(key) for key in pool.missing | pool.unexpected}
    sites |= {_split_legacy_spectral(key) for key in pool.missing | pool.unexpected}
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


def _split_parametrized(key: str) -> tuple[str, str] | None:
    match = re.match(r"^(?:(.*)\.)?parametrizations\.([^.]+)\.(original|0\._u|0\._v)$", key)
    return (match.group(1) or "", match.group(2)) if match else None


def _split_legacy_spectral(key: str) -> tuple[str, str] | None:
    match = re.match(r"^(?:(.*)\.)?([^.]+)_(orig|u)$", key)
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


def mha_packing_rule(pool: KeyPool) -> None:
    """``in_proj_weight`` (packed q/k/v) on one side, separate q/k/v projections on the other."""
    for packed_side, split_side in ((pool.unexpected, pool.missing),
                                    (pool.missing, pool.unexpected)):
        for key in sorted(k for k in packed_side if k.endswith("in_proj_weight")):
            module = key[: -len("in_proj_weight")]
            packed = [k for k in (key, f"{module}in_proj_bias") if k in packed_side]
            split = [f"{module}{p}{s}" for p in ("q_proj", "k_proj", "v_proj")
                     for s in (".weight", ".bias", "_weight")]
            split = [k for k in split if k in split_side]
            if len(split) < 3:
                continue
            reference_keys, model_keys = (
                (tuple(packed), tuple(split)) if packed_side is pool.unexpected
                else (tuple(split), tuple(packed)))
            pool.claim(Finding(
                "mha_packing", tuple(reference_keys),
                f"`{module.rstrip('.') or '<root>'}`: q/k/v projections are packed "
                f"(in_proj_weight) on one side and separate on the other; split with "
                "in_proj_weight.chunk(3) or concatenate q/k/v in the load path",
                (f"{pool.name}: {', '.join(reference_keys)}",
                 f"{pool.current_name}: {', '.join(model_keys)}")),
                missing=model_keys, unexpected=reference_keys)


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
