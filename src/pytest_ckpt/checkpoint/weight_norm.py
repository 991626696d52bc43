"""The three weight_norm layouts of a parameter, and exact conversions between them.

* ``legacy``: ``torch.nn.utils.weight_norm`` (a forward pre-hook; keys ``{name}_g``, ``{name}_v``)
* ``parametrized``: ``torch.nn.utils.parametrizations.weight_norm`` (keys
  ``parametrizations.{name}.original0`` / ``original1``)
* ``removed``: a plain ``{name}`` (an export after ``remove_weight_norm()``)

``g`` and ``v`` are the same tensors in the legacy and parametrized layouts, so mapping between
them is a rename; both compute ``torch._weight_norm(v, g, dim)``, so converting a model keeps
its outputs bit for bit.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pytest_ckpt.checkpoint.layouts import (
    LEGACY,
    PARAMETRIZED,
    REMOVED,
    module_key,
    weight_norm_keys,
)
from pytest_ckpt.checkpoint.layouts import weight_norm_layouts as key_layouts

if TYPE_CHECKING:
    import torch

LAYOUTS = (LEGACY, PARAMETRIZED, REMOVED)


@dataclass(frozen=True)
class WeightNormSite:
    """One weight-normed parameter of a model: module name, parameter name, layout, dim."""

    module: str
    name: str
    layout: str
    dim: int

    @property
    def path(self) -> str:
        return f"{self.module}.{self.name}" if self.module else self.name


def detect(model: torch.nn.Module) -> list[WeightNormSite]:
    """Every weight-normed parameter of ``model``, in either implementation."""
    from torch.nn.utils import parametrize
    from torch.nn.utils.weight_norm import WeightNorm

    sites = []
    for module_name, module in model.named_modules():
        for hook in module._forward_pre_hooks.values():
            if isinstance(hook, WeightNorm):
                sites.append(WeightNormSite(module_name, hook.name, LEGACY, hook.dim))
        if parametrize.is_parametrized(module):
            parametrized: Any = getattr(module, "parametrizations")  # noqa: B009
            for name, parametrizations in parametrized.items():
                sites += [WeightNormSite(module_name, name, PARAMETRIZED, int(p.dim))
                          for p in parametrizations if type(p).__name__ == "_WeightNorm"]
    return sites


def convert(model: torch.nn.Module, to: str, *,
            modules: Iterable[str] = (), dim: int = 0) -> list[WeightNormSite]:
    """Switch every weight-normed parameter of ``model`` to layout ``to``, in place.

    ``g`` and ``v`` keep their exact values, so outputs do not change. Plain modules listed in
    ``modules`` get weight_norm applied (layout ``to``, ``dim``), as a model saved before
    ``remove_weight_norm()`` had. Returns the sites converted. Parameters are replaced, so an
    optimizer built before the conversion must be rebuilt.
    """
    _check_layout(to)
    converted = []
    for site in detect(model):
        if site.layout != to:
            _convert_site(model.get_submodule(site.module), site, to)
            converted.append(site)
    for name in modules:
        module = model.get_submodule(name)
        _apply(module, "weight", to, dim)
        converted.append(WeightNormSite(name, "weight", REMOVED, dim))
    return converted


def _convert_site(module: torch.nn.Module, site: WeightNormSite, to: str) -> None:
    import torch

    g, v = (tensor.detach().clone() for tensor in _g_v(module, site))
    _remove(module, site)
    if to == REMOVED:
        return
    _apply(module, site.name, to, site.dim)
    with torch.no_grad():
        for target, value in zip(_g_v(module, WeightNormSite(site.module, site.name, to,
                                                             site.dim)), (g, v), strict=True):
            target.copy_(value)


def _g_v(module: torch.nn.Module, site: WeightNormSite) -> tuple[torch.Tensor, torch.Tensor]:
    if site.layout == LEGACY:
        return getattr(module, f"{site.name}_g"), getattr(module, f"{site.name}_v")
    originals: Any = getattr(module, "parametrizations")[site.name]  # noqa: B009
    return originals.original0, originals.original1


def _remove(module: torch.nn.Module, site: WeightNormSite) -> None:
    from torch.nn.utils import parametrize

    if site.layout == LEGACY:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.nn.utils.remove_weight_norm is deprecated
            import torch

            torch.nn.utils.remove_weight_norm(module, site.name)
    else:
        parametrize.remove_parametrizations(module, site.name, leave_parametrized=True)


def _apply(module: torch.nn.Module, name: str, layout: str, dim: int) -> None:
    import torch

    if layout == LEGACY:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.nn.utils.weight_norm is deprecated
            torch.nn.utils.weight_norm(module, name, dim=dim)
    elif layout == PARAMETRIZED:
        torch.nn.utils.parametrizations.weight_norm(module, name, dim=dim)


def map_state_dict(state: Mapping[str, Any], to: str | None = None, *,
                   model: torch.nn.Module | None = None, dim: int = 0) -> dict[str, Any]:
    """A copy of ``state`` with weight_norm keys in layout ``to`` (or, given ``model``, in the
    layout each of the model's modules has). Legacy <-> parametrized is a rename (same
    tensors); to ``removed`` computes ``weight = torch._weight_norm(v, g, dim)``; from a plain
    ``weight`` (given ``model``) computes ``g`` and ``v`` as torch's weight_norm does."""
    if to is not None:
        _check_layout(to)
    if to is None and model is None:
        raise ValueError("map_state_dict needs a target layout (to=...) or a model")
    wanted = {(s.module, s.name): (s.layout, s.dim) for s in detect(model)} if model else {}
    mapped = dict(state)
    found = key_layouts(set(_tensors(state)))
    for site, layout in found.items():
        target = _target_layout(site, to, wanted, model)
        if target is not None and target != layout:
            _move(mapped, site, layout, target)
    for site, (layout, site_dim) in wanted.items():
        if site not in found and module_key(*site) in mapped:
            _move(mapped, site, REMOVED, layout, site_dim)
    return mapped


def _target_layout(site: tuple[str, str], to: str | None,
                   wanted: dict[tuple[str, str], tuple[str, int]],
                   model: torch.nn.Module | None) -> str | None:
    if model is None:
        return to
    if site in wanted:
        return wanted[site][0]
    return REMOVED if _is_plain(model, site) else None


def _is_plain(model: torch.nn.Module, site: tuple[str, str]) -> bool:
    try:
        module = model.get_submodule(site[0])
    except AttributeError:
        return False
    return site[1] in dict(module.named_parameters(recurse=False))


def _tensors(state: Mapping[str, Any]) -> dict[str, Any]:
    import torch

    return {key: value for key, value in state.items() if isinstance(value, torch.Tensor)}


def _move(state: dict[str, Any], site: tuple[str, str], layout: str, to: str,
          dim: int | None = None) -> None:
    import torch

    old_keys = weight_norm_keys(*site, layout)
    values = [state.pop(key) for key in old_keys]
    if layout == REMOVED:
        weight = values[0]
        dim = 0 if dim is None else dim
        values = [torch.norm_except_dim(weight, 2, dim), weight]
    if to == REMOVED:
        g, v = values
        values = [torch._weight_norm(v, g, _dim_of(g, v))]
    state.update(zip(weight_norm_keys(*site, to), values, strict=True))


def norms_of_loaded(tensors: Mapping[str, torch.Tensor],
                    loaded: Callable[[torch.Tensor], bool]) -> set[str]:
    """The ``g`` keys of ``tensors`` that weight_norm computed from a ``v`` for which
    ``loaded(v)``: a plain weight (an export made after remove_weight_norm()) loaded and
    re-wrapped sets ``v = weight`` and ``g = norm_except_dim(weight, 2, dim)``, so ``g`` holds
    no checkpoint tensor, yet nothing is missing."""
    import torch

    derived = set()
    for site, layout in key_layouts(set(tensors)).items():
        g_key, v_key = weight_norm_keys(*site, layout)
        g, v = tensors[g_key], tensors[v_key]
        if not (loaded(v) and g.is_floating_point()):
            continue
        norm = torch.norm_except_dim(v.detach(), 2, _dim_of(g, v))
        if norm.shape == g.shape and bool(torch.allclose(norm, g.detach(), rtol=1e-6,
                                                         atol=0.0)):
            derived.add(g_key)
    return derived


def _dim_of(g: torch.Tensor, v: torch.Tensor) -> int:
    return norm_dim(tuple(g.shape), tuple(v.shape))


def norm_dim(g_shape: tuple[int, ...], v_shape: tuple[int, ...]) -> int:
    """The ``dim`` a ``g`` of this shape was computed over (``-1`` for ``dim=None``). Pure."""
    if not g_shape:
        return -1
    for axis, (g_size, v_size) in enumerate(zip(g_shape, v_shape, strict=False)):
        if g_size == v_size and all(size == 1 for i, size in enumerate(g_shape) if i != axis):
            return axis
    return 0


def _check_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"unknown weight_norm layout {layout!r}; expected one of {LAYOUTS}")
