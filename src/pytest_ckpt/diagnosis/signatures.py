"""Keys on both sides whose shape or dtype differs, and what the difference means: a
vocabulary resize (an embedding table's rows, and the heads that follow it), a kernel size
(an architecture or config change no remap can load), a lossy cast and how much it loses.
Pure: the model's module types come in :class:`ModelFacts`."""

from __future__ import annotations

from pytest_ckpt.checkpoint.facts import ModelFacts
from pytest_ckpt.checkpoint.manifest import ManifestRow
from pytest_ckpt.diagnosis.findings import Finding

Pair = tuple[ManifestRow, ManifestRow]  # (reference row, current row)

# names of embedding tables in checkpoints read without a model (a file against a file)
_EMBEDDING_NAMES = ("embed", "wte", "word_embeddings", "shared", "tok_embeddings")


def shape_findings(pairs: list[Pair], facts: ModelFacts, reference_name: str,
                   current_name: str) -> list[Finding]:
    changed = [(old, new) for old, new in pairs if old.shape != new.shape]
    if not changed:
        return []
    findings = []
    vocabulary = _vocabulary_resize(changed, facts)
    if vocabulary:
        findings.append(_vocabulary_finding(vocabulary, reference_name, current_name))
    kernels = [(old, new) for old, new in changed if (old, new) not in vocabulary
               and _is_kernel_change(old, new, facts)]
    if kernels:
        findings.append(Finding(
            "shape", tuple(new.key for _, new in kernels),
            "the convolution kernel size differs: an architecture or config change "
            "(kernel_size), not a key layout; no remap can load these tensors",
            tuple(_detail(old, new, reference_name, current_name) for old, new in kernels),
            fix=(f"fix: build the model with the {reference_name}'s kernel sizes (its config), "
                 "or retrain these layers and publish a new checkpoint")))
    rest = [(old, new) for old, new in changed if (old, new) not in vocabulary
            and (old, new) not in kernels]
    if rest:
        findings.append(Finding(
            "shape", tuple(new.key for _, new in rest),
            "shape differs: load_state_dict raises 'size mismatch'",
            tuple(_detail(old, new, reference_name, current_name) for old, new in rest)))
    return findings


def _vocabulary_resize(changed: list[Pair], facts: ModelFacts) -> list[Pair]:
    """An embedding table whose row count differs (only dim 0), and every tensor that changes
    from the same row count to the same other one (the LM head, a logits bias)."""
    tables = [(old, new) for old, new in changed if _is_embedding(new.key, facts)
              and len(old.shape) == len(new.shape) == 2 and old.shape[1:] == new.shape[1:]]
    if not tables:
        return []
    rows = {(old.shape[0], new.shape[0]) for old, new in tables}
    return [(old, new) for old, new in changed if (old, new) in tables or (
        old.shape and new.shape and len(old.shape) == len(new.shape)
        and (old.shape[0], new.shape[0]) in rows and old.shape[1:] == new.shape[1:])]


def _is_embedding(key: str, facts: ModelFacts) -> bool:
    module, _, name = key.rpartition(".")
    if name != "weight":
        return False
    if facts.from_model:
        return module in facts.embeddings
    return any(part in module.rpartition(".")[2] for part in _EMBEDDING_NAMES)


def _vocabulary_finding(pairs: list[Pair], reference_name: str,
                        current_name: str) -> Finding:
    saved, built = pairs[0][0].shape[0], pairs[0][1].shape[0]
    more, side = (saved - built, reference_name) if saved > built else (built - saved,
                                                                          current_name)
    plural = "s" if more > 1 else ""
    return Finding(
        "shape", tuple(new.key for _, new in pairs),
        f"the vocabulary was resized: {saved} tokens in the {reference_name}, {built} in the "
        f"{current_name} (the {side} has {more} more token{plural}); load_state_dict raises "
        "'size mismatch' on the embedding table and every head that follows it",
        tuple(_detail(old, new, reference_name, current_name) for old, new in pairs),
        fix=(f"fix: resize the model to {saved} tokens before loading (transformers: "
             f"model.resize_token_embeddings({saved}); or build it with vocab_size={saved})"
             + (f", then resize to {built} after loading (the {more} new row{plural} start at "
                "their initial value)" if built > saved else "")))


def _is_kernel_change(old: ManifestRow, new: ManifestRow, facts: ModelFacts) -> bool:
    module, _, name = new.key.rpartition(".")
    convolution = module in facts.convolutions if facts.from_model else len(new.shape) >= 3
    return (convolution and name.startswith("weight") and len(old.shape) == len(new.shape) >= 3
            and old.shape[:2] == new.shape[:2] and old.shape[2:] != new.shape[2:])


def _detail(old: ManifestRow, new: ManifestRow, reference_name: str, current_name: str) -> str:
    return (f"{old.key}: {list(old.shape)} in the {reference_name}, {list(new.shape)} in the "
            f"{current_name}{changed_dims(old.shape, new.shape)}")


def changed_dims(old: tuple[int, ...], new: tuple[int, ...]) -> str:
    if len(old) != len(new):
        return f" (rank {len(old)} -> {len(new)})"
    dims = [f"dim {i}: {a} -> {b}" for i, (a, b) in enumerate(zip(old, new, strict=True))
            if a != b]
    return f" ({', '.join(dims)})"


# significand bits (with the implicit one) and largest finite value of each float dtype:
# what a cast keeps (IEEE 754; bfloat16 keeps float32's exponent)
FLOATS = {"float64": (53, 1.7976931348623157e308), "float32": (24, 3.4028234663852886e38),
          "bfloat16": (8, 3.3895313892515355e38), "float16": (11, 65504.0)}
_INTS = {"int64": 64, "int32": 32, "int16": 16, "int8": 8, "uint8": 8}


def cast_loss(saved: str, built: str) -> str | None:
    """What a cast from ``saved`` to ``built`` loses, from the dtypes alone; ``None`` when
    it loses nothing."""
    if saved in FLOATS and built in FLOATS:
        (bits, largest), (kept, limit) = FLOATS[saved], FLOATS[built]
        lost = []
        if kept < bits:
            lost.append(f"{kept} of {bits} significand bits kept, about "
                        f"{kept * 0.30103:.1f} significant digits")
        if limit < largest / 2:  # a narrower exponent range (bfloat16 keeps float32's)
            lost.append(f"values beyond ±{limit:g} become inf")
        return "lossy cast: " + ", ".join(lost) if lost else None
    if saved in _INTS and built in _INTS and _INTS[built] < _INTS[saved]:
        return f"lossy cast: values outside the {built} range wrap around"
    if saved in FLOATS and built in _INTS:
        return "lossy cast: fractions are truncated"
    return None


def dtype_findings(pairs: list[Pair], reference_name: str, current_name: str) -> list[Finding]:
    changed = [(old, new) for old, new in pairs if old.dtype != new.dtype]
    if not changed:
        return []
    details = []
    for old, new in changed:
        loss = cast_loss(old.dtype, new.dtype)
        details.append(f"{old.key}: {old.dtype} in the {reference_name}, {new.dtype} in the "
                       f"{current_name}" + (f" ({loss})" if loss else ""))
    return [Finding("dtype", tuple(new.key for _, new in changed),
                    f"dtype differs: load_state_dict casts to the {current_name}'s dtype without "
                    "a warning (an assign=True load keeps the checkpoint's instead)",
                    tuple(details))]
