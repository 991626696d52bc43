"""Property tests: apply a known transformation to a random manifest; the engine names it."""

from __future__ import annotations

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from pytest_ckpt.checkpoint.manifest import PARAM, Manifest, ManifestRow
from pytest_ckpt.diagnosis.engine import diagnose

NAMES = ["encoder", "decoder", "attn", "mlp", "proj", "conv", "block"]
LEAVES = ["weight", "bias", "scale"]


@st.composite
def models(draw: st.DrawFn) -> Manifest:
    """A random model: components holding numbered layers holding tensors of random shapes."""
    rows = []
    for component in draw(st.lists(st.sampled_from(NAMES), min_size=2, max_size=4, unique=True)):
        for layer in range(draw(st.integers(1, 4))):
            for leaf in draw(st.lists(st.sampled_from(LEAVES), min_size=1, unique=True)):
                shape = tuple(draw(st.lists(st.integers(1, 64), min_size=1, max_size=3)))
                rows.append(ManifestRow(f"{component}.layers.{layer}.{leaf}", "float32", shape,
                                        PARAM))
    return Manifest(tuple(rows))


def kinds(reference: Manifest, current: Manifest) -> set[str]:
    return {finding.kind for finding in diagnose(reference, current)}


def rebuilt(model: Manifest, key_map: dict[str, str] | None = None,
            dtype: str | None = None) -> Manifest:
    return Manifest(tuple(ManifestRow((key_map or {}).get(row.key, row.key),
                                      dtype or row.dtype, row.shape, row.kind) for row in model))


@given(models())
def test_identical_models_have_no_findings(model):
    assert diagnose(model, rebuilt(model)) == []


@given(models(), st.sampled_from(["module.", "_orig_mod.", "module._orig_mod.", "net."]))
def test_a_prefix_added_to_every_key_is_named_prefix(model, prefix):
    checkpoint = rebuilt(model, {key: prefix + key for key in model.keys()})
    (finding,) = diagnose(checkpoint, model)
    assert finding.kind == "prefix"
    assert f"'{prefix}'" in finding.hint


@given(models(), st.data())
def test_a_renamed_component_is_named_rename(model, data):
    components = sorted({key.split(".")[0] for key in model.keys()})
    old = data.draw(st.sampled_from(components))
    new = old + "_v2"
    checkpoint = model
    current = rebuilt(model, {key: new + key[len(old):] for key in model.keys()
                              if key.split(".")[0] == old})
    assume(not _has_same_shaped_twin(model, old))
    findings = diagnose(checkpoint, current)
    assert [f.kind for f in findings] == ["rename"]
    assert findings[0].hint.startswith(f"{old}.* in the checkpoint is {new}.* in the model")


def _has_same_shaped_twin(model: Manifest, component: str) -> bool:
    def signature(name: str) -> list[tuple[str, tuple[int, ...]]]:
        return sorted((row.key[len(name):], row.shape) for row in model
                      if row.key.split(".")[0] == name)
    others = {key.split(".")[0] for key in model.keys()} - {component}
    return any(signature(other) == signature(component) for other in others)


@given(models(), st.data())
def test_a_dropped_component_is_named_missing_component(model, data):
    components = sorted({key.split(".")[0] for key in model.keys()})
    dropped = data.draw(st.sampled_from(components))
    members = [row for row in model if row.key.split(".")[0] == dropped]
    assume(len(members) >= 2)
    checkpoint = Manifest(tuple(row for row in model if row.key.split(".")[0] != dropped))
    (finding,) = diagnose(checkpoint, model)
    assert finding.kind == "missing_component"
    assert f"component `{dropped}` ({len(members)} tensors)" in finding.hint


@given(models())
def test_a_weight_norm_relayout_is_named_weight_norm_layout(model):
    legacy = Manifest(tuple(
        row for old in model for row in (
            ManifestRow(old.key + "_g", "float32", (old.shape[0],), PARAM),
            ManifestRow(old.key + "_v", "float32", old.shape, PARAM))))
    parametrized = Manifest(tuple(
        ManifestRow(_parametrized(old.key, index), "float32", shape, PARAM)
        for old in model for index, shape in ((0, (old.shape[0],)), (1, old.shape))))
    (finding,) = diagnose(legacy, parametrized)
    assert finding.kind == "weight_norm_layout"
    assert finding.hint.startswith("weight_norm layout differs: checkpoint legacy")


def _parametrized(key: str, index: int) -> str:
    module, _, name = key.rpartition(".")
    return f"{module}.parametrizations.{name}.original{index}"


@given(models(), st.sampled_from(["bfloat16", "float16", "float64"]))
def test_a_dtype_change_is_named_dtype(model, dtype):
    (finding,) = diagnose(model, rebuilt(model, dtype=dtype))
    assert finding.kind == "dtype"
    assert set(finding.keys) == set(model.keys())


@settings(max_examples=200)
@given(st.lists(st.text(), max_size=12, unique=True), st.lists(st.text(), max_size=12,
                                                                unique=True))
def test_the_engine_never_raises_on_arbitrary_keys(left, right):
    def manifest(keys: list[str]) -> Manifest:
        return Manifest(tuple(ManifestRow(key, "float32", (1,)) for key in keys))

    findings = diagnose(manifest(left), manifest(right))
    explained = {key for f in findings for key in (*f.keys, *f.related)}
    assert set(left) ^ set(right) <= explained
