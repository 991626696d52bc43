"""Diagnosis rule for the layout of an attention module's q/k/v projections:
nn.MultiheadAttention's packed ``in_proj_weight``, its separate ``q_proj_weight``/... (kdim or
vdim set) and one Linear per projection (``q_proj.weight``, HF/fairseq style). The remedy is
given as the key mapping that works for the shapes at hand, or says that none does."""

from __future__ import annotations

from dataclasses import dataclass

from pytest_ckpt.checkpoint.keys import fold_keys
from pytest_ckpt.checkpoint.manifest import Manifest
from pytest_ckpt.diagnosis.findings import Finding
from pytest_ckpt.diagnosis.pool import KeyPool

# How an attention module's q/k/v projections appear as keys: nn.MultiheadAttention packs
# them (kdim == vdim == embed_dim) or keeps the weights apart (kdim or vdim differs; the bias
# stays packed); HF/fairseq-style attention has one Linear per projection.
PACKED, SEPARATE, LINEAR = "packed", "separate", "linear"
_QKV = {PACKED: (("in_proj_weight",), ("in_proj_bias",)),
        SEPARATE: (("q_proj_weight", "k_proj_weight", "v_proj_weight"), ("in_proj_bias",)),
        LINEAR: (("q_proj.weight", "k_proj.weight", "v_proj.weight"),
                 ("q_proj.bias", "k_proj.bias", "v_proj.bias"))}
_QKV_SAID = {PACKED: "packs q, k, v into one in_proj_weight (nn.MultiheadAttention)",
             SEPARATE: "keeps q_proj_weight, k_proj_weight, v_proj_weight apart "
                       "(nn.MultiheadAttention with kdim/vdim != embed_dim; the bias stays "
                       "packed in in_proj_bias)",
             LINEAR: "has separate q_proj, k_proj, v_proj Linear layers"}


@dataclass(frozen=True)
class _Projections:
    """One side's q/k/v keys of one attention module (names relative to the module)."""

    layout: str
    weights: tuple[str, ...]
    biases: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]  # weights', then biases'

    def sizes(self) -> tuple[int, int, int]:
        """(embed_dim, kdim, vdim) read from the weights' shapes."""
        if self.layout == PACKED:
            rows, columns = self.shapes[0][:2]
            return rows // 3, columns, columns
        q, k, v = self.shapes[:3]
        return q[0], k[-1], v[-1]


def mha_packing_rule(pool: KeyPool) -> None:
    """q/k/v projections packed (``in_proj_weight``), kept apart by nn.MultiheadAttention
    (``q_proj_weight``, kdim/vdim set) or as Linear layers (``q_proj.weight``), differing
    between the two sides: one finding per group of modules with the same layouts and sizes."""
    groups: dict[tuple[_Projections, _Projections], list[str]] = {}
    suffixes = [weights[0] for weights, _ in _QKV.values()]
    for key in sorted(pool.missing | pool.unexpected):
        module = next((key[: -len(s)] for s in suffixes if key.endswith(s)), None)
        if module is None or (module and not module.endswith(".")):
            continue
        old = _projections(pool.reference, pool.unexpected, module)
        new = _projections(pool.current, pool.missing, module)
        if old is not None and new is not None and old.layout != new.layout:
            modules = groups.setdefault((old, new), [])
            if module not in modules:
                modules.append(module)
    for (old, new), modules in groups.items():
        _claim_packing(pool, old, new, modules)


def _projections(manifest: Manifest, unclaimed: set[str], module: str) -> _Projections | None:
    rows = manifest.row_map()
    for layout, (weights, biases) in _QKV.items():
        if all(module + name in unclaimed for name in weights):
            present = tuple(name for name in biases if module + name in rows)
            return _Projections(layout, weights, present, tuple(
                rows[module + name].shape for name in (*weights, *present)))
    return None


def _claim_packing(pool: KeyPool, old: _Projections, new: _Projections,
                   modules: list[str]) -> None:
    mapped_biases = bool(old.biases and new.biases and old.biases != new.biases)
    statements = [_statement(old.weights, new.weights)]
    if mapped_biases:
        statements.append(_statement(old.biases, new.biases))
    fits = _shapes_after(old, new, mapped_biases) == _target_shapes(new, mapped_biases)
    names = [name for name in (*old.weights, *(old.biases if mapped_biases else ()))]
    new_names = [name for name in (*new.weights, *(new.biases if mapped_biases else ()))]
    folded = ", ".join(fold_keys(m.rstrip(".") for m in modules))
    who = f"`{folded}`" if modules != [""] else "the root MultiheadAttention"
    prefix = "" if modules == [""] else f"{folded}."
    cause = (f"{who}: the {pool.name} {_QKV_SAID[old.layout]}, the {pool.current_name} "
             f"{_QKV_SAID[new.layout]}")
    if fits:
        hint = f"{cause}; {_remedy_words(old, new, mapped_biases)}"
        fix = (f"fix: map the keys of {who} in the load path: {'; '.join(statements)}")
    else:
        (e, k, v), (e2, k2, v2) = old.sizes(), new.sizes()
        hint = (f"{cause}; their sizes differ (embed_dim, kdim, vdim: {e}, {k}, {v} in the "
                f"{pool.name}, {e2}, {k2}, {v2} in the {pool.current_name}), so the "
                "projections cannot be mapped: the attention's configuration changed")
        fix = (f"fix: build {who} with the {pool.name}'s sizes (embed_dim={e}, kdim={k}, "
               f"vdim={v}; nn.MultiheadAttention packs q, k, v when kdim == vdim == "
               "embed_dim), or retrain its projections")
    pool.claim(Finding(
        "mha_packing", tuple(m + name for m in modules for name in names), hint,
        (f"{pool.name}: {_described(old, prefix)}",
         f"{pool.current_name}: {_described(new, prefix)}"), fix=fix),
        missing=[m + name for m in modules for name in new_names],
        unexpected=[m + name for m in modules for name in names])


def _statement(old: tuple[str, ...], new: tuple[str, ...]) -> str:
    if len(old) == len(new):
        return "; ".join(f"{target} = {source}" for source, target in zip(old, new, strict=True))
    if len(old) == 1:
        return f"{', '.join(new)} = {old[0]}.chunk(3)"
    return f"{new[0]} = torch.cat([{', '.join(old)}])"


def _remedy_words(old: _Projections, new: _Projections, mapped_biases: bool) -> str:
    weights, bias = old.weights[0], old.biases[0] if mapped_biases else ""
    if old.layout == PACKED:
        return (f"split {weights}.chunk(3)" + (f" and {bias}.chunk(3)" if bias else "")
                + " into q, k, v (in this order)")
    if new.layout == PACKED:
        return "concatenate q, k, v (in this order) with torch.cat into in_proj_weight"
    return ("rename the three weights" + (", and split in_proj_bias.chunk(3) into q, k, v"
                                          if bias and old.layout == SEPARATE else
                                          ", and concatenate the q, k, v biases into "
                                          "in_proj_bias" if bias else ""))


def _shapes_after(old: _Projections, new: _Projections,
                  mapped_biases: bool) -> list[tuple[int, ...]] | None:
    count = len(old.weights)
    weights = _moved(list(old.shapes[:count]), len(new.weights))
    if not mapped_biases or weights is None:
        return weights
    biases = _moved(list(old.shapes[count:]), len(new.biases))
    return None if biases is None else weights + biases


def _target_shapes(new: _Projections, mapped_biases: bool) -> list[tuple[int, ...]]:
    return list(new.shapes if mapped_biases else new.shapes[:len(new.weights)])


def _moved(shapes: list[tuple[int, ...]], count: int) -> list[tuple[int, ...]] | None:
    """The shapes a rename (same count), ``chunk(3)`` or ``torch.cat`` gives."""
    if len(shapes) == count:
        return shapes
    if len(shapes) == 1:
        rows, *rest = shapes[0]
        return [(rows // 3, *rest)] * 3 if rows % 3 == 0 else None
    if len({shape[1:] for shape in shapes}) != 1:
        return None
    return [(sum(shape[0] for shape in shapes), *shapes[0][1:])]


def _described(side: _Projections, prefix: str) -> str:
    e, k, v = side.sizes()
    shapes = dict(zip((*side.weights, *side.biases), side.shapes, strict=True))
    said = {"in_proj_weight": f"[3E, E], E={e}, rows q, k, v", "q_proj_weight": "[E, E]",
            "k_proj_weight": f"[E, kdim], kdim={k}", "v_proj_weight": f"[E, vdim], vdim={v}",
            "in_proj_bias": "[3E]: q, k, v"}
    return ", ".join(f"{prefix}{name} {list(shape)}"
                     + (f" ({said[name]})" if name in said else "")
                     for name, shape in shapes.items())
