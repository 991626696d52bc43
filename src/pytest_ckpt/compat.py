"""Helpers a library can call in its own model code to keep old checkpoints loading.

:func:`accept_any_weight_norm` makes ``model.load_state_dict`` accept every weight_norm layout
(legacy ``weight_g/weight_v``, parametrized ``parametrizations.weight.original0/1``, a plain
``weight`` exported after ``remove_weight_norm()``) and both spectral_norm layouts, whatever
layout the model itself uses. torch alone converts legacy -> parametrized weight_norm only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

_SPECTRAL_LEGACY = ("{n}_orig", "{n}_u", "{n}_v")
_SPECTRAL_PARAMETRIZED = ("parametrizations.{n}.original", "parametrizations.{n}.0._u",
                          "parametrizations.{n}.0._v")


def accept_any_weight_norm(model: torch.nn.Module) -> torch.nn.Module:
    """Register a load_state_dict pre-hook on ``model`` that rewrites weight_norm and
    spectral_norm keys of the incoming state_dict into the layout of ``model``'s modules.

    Works through ``Module.load_state_dict`` (and what calls it: safetensors ``load_model``,
    ``assign=True`` loads); ``torch.distributed.checkpoint`` loads bypass load hooks.
    Returns ``model``.
    """

    def hook(module: torch.nn.Module, state_dict: dict[str, Any], prefix: str,
             *args: Any) -> None:
        _rewrite(module, state_dict, prefix)

    register = getattr(model, "register_load_state_dict_pre_hook", None)
    if register is not None:  # public since torch 2.5; receives the module first
        register(hook)
    else:
        model._register_load_state_dict_pre_hook(hook, with_module=True)  # type: ignore[no-untyped-call]
    return model


def _rewrite(module: torch.nn.Module, state_dict: dict[str, Any], prefix: str) -> None:
    from pytest_ckpt.checkpoint.weight_norm import map_state_dict

    keys = [key for key in state_dict if key.startswith(prefix)]
    own = {key[len(prefix):]: state_dict[key] for key in keys}
    mapped = map_spectral_norm(map_state_dict(own, model=module), module)
    if mapped.keys() == own.keys():
        return
    for key in keys:
        del state_dict[key]
    state_dict.update((prefix + key, value) for key, value in mapped.items())


def map_spectral_norm(state: dict[str, Any], model: torch.nn.Module) -> dict[str, Any]:
    """Rename spectral_norm keys between the legacy and parametrized layouts to match
    ``model`` (the tensors are the same: ``weight_orig``/``original``, ``u``, ``v``)."""
    mapped = dict(state)
    for module_name, name, layout in _spectral_sites(model):
        ours, theirs = ((_SPECTRAL_LEGACY, _SPECTRAL_PARAMETRIZED) if layout == "legacy"
                        else (_SPECTRAL_PARAMETRIZED, _SPECTRAL_LEGACY))
        base = f"{module_name}." if module_name else ""
        source = [base + key.format(n=name) for key in theirs]
        if all(key in mapped for key in source):
            values = [mapped.pop(key) for key in source]
            mapped.update(zip((base + key.format(n=name) for key in ours), values, strict=True))
    return mapped


def _spectral_sites(model: torch.nn.Module) -> list[tuple[str, str, str]]:
    from torch.nn.utils import parametrize
    from torch.nn.utils.spectral_norm import SpectralNorm

    sites = []
    for module_name, module in model.named_modules():
        sites += [(module_name, hook.name, "legacy") for hook in module._forward_pre_hooks.values()
                  if isinstance(hook, SpectralNorm)]
        if parametrize.is_parametrized(module):
            parametrized: Any = getattr(module, "parametrizations")  # noqa: B009
            sites += [(module_name, name, "parametrized")
                      for name, chain in parametrized.items()
                      if any(type(p).__name__ == "_SpectralNorm" for p in chain)]
    return sites
