"""weight_norm layouts: detection, in-place conversion with identical outputs, state_dict
mapping both ways, and the compat helper."""

from __future__ import annotations

import itertools
import warnings

import pytest
import torch
from torch import nn

from pytest_ckpt import weight_norm as wn
from pytest_ckpt.compat import accept_any_weight_norm

LAYERS = {
    "conv1d": (lambda: nn.Conv1d(4, 6, 3), lambda: torch.randn(2, 4, 9)),
    "convtranspose1d": (lambda: nn.ConvTranspose1d(4, 6, 3), lambda: torch.randn(2, 4, 9)),
    "linear": (lambda: nn.Linear(4, 6), lambda: torch.randn(2, 4)),
}
NORMED = ("legacy", "parametrized")
ALL = ("legacy", "parametrized", "removed")


def normed(layer: nn.Module, layout: str, dim: int | None) -> nn.Module:
    if layout == "legacy":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return nn.utils.weight_norm(layer, dim=dim)
    if layout == "parametrized":
        return nn.utils.parametrizations.weight_norm(layer, dim=dim)
    return layer


def model(layer: str, layout: str, dim: int | None, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(normed(LAYERS[layer][0](), layout, dim)).eval()


@pytest.mark.parametrize("dim", [0, None])
@pytest.mark.parametrize("layer", sorted(LAYERS))
@pytest.mark.parametrize(("start", "to"), [("legacy", "parametrized"), ("parametrized", "legacy"),
                                           ("legacy", "removed"), ("parametrized", "removed")])
def test_convert_switches_layout_in_place_with_identical_outputs(layer, dim, start, to):
    net = model(layer, start, dim)
    x = LAYERS[layer][1]()
    before = net(x)
    (site,) = wn.detect(net)
    assert (site.module, site.name, site.layout, site.dim) == ("0", "weight", start,
                                                               -1 if dim is None else dim)
    wn.convert(net, to)
    assert [s.layout for s in wn.detect(net)] == ([] if to == "removed" else [to])
    assert torch.equal(net(x), before)


@pytest.mark.parametrize("dim", [0, None])
@pytest.mark.parametrize("layer", sorted(LAYERS))
@pytest.mark.parametrize(("start", "to"), list(itertools.permutations(NORMED, 2)))
def test_mapped_state_dict_loads_strictly_with_the_same_tensors(layer, dim, start, to):
    source, target = model(layer, start, dim), model(layer, to, dim, seed=1)
    state = source.state_dict()
    mapped = wn.map_state_dict(state, to)
    # a rename: the very same tensors (storage), only the keys change
    assert sorted(t.data_ptr() for t in mapped.values()) == sorted(
        t.data_ptr() for t in state.values())
    target.load_state_dict(mapped, strict=True)
    x = LAYERS[layer][1]()
    assert torch.equal(target(x), source(x))


@pytest.mark.parametrize("to", NORMED)
def test_convert_reapplies_weight_norm_to_an_export_made_after_removal(to):
    net = model("linear", "removed", None)
    x = LAYERS["linear"][1]()
    before = net(x)
    wn.convert(net, to, modules=["0"], dim=0)
    assert [(s.module, s.layout, s.dim) for s in wn.detect(net)] == [("0", to, 0)]
    torch.testing.assert_close(net(x), before, rtol=1e-6, atol=1e-6)  # g, v recomputed


@pytest.mark.parametrize("dim", [0, None, 1])
def test_mapping_to_removed_computes_the_exported_weight(dim):
    layer = normed(nn.Conv1d(4, 6, 3), "parametrized", dim)
    mapped = wn.map_state_dict(layer.state_dict(), "removed")
    assert sorted(mapped) == ["bias", "weight"]
    assert torch.equal(mapped["weight"], layer.weight)


def test_a_model_mixing_layouts_maps_per_module():
    source = nn.Sequential(normed(nn.Linear(3, 3), "legacy", 0),
                           normed(nn.Linear(3, 3), "parametrized", 0), nn.Linear(3, 3))
    target = nn.Sequential(normed(nn.Linear(3, 3), "parametrized", 0),
                           normed(nn.Linear(3, 3), "legacy", 0), nn.Linear(3, 3))
    mapped = wn.map_state_dict(source.state_dict(), model=target)
    assert sorted(mapped) == sorted(target.state_dict())
    target.load_state_dict(mapped, strict=True)
    x = torch.randn(2, 3)
    assert torch.equal(target(x), source(x))


def test_unknown_layout_is_rejected():
    with pytest.raises(ValueError, match="unknown weight_norm layout 'fancy'"):
        wn.convert(nn.Linear(2, 2), "fancy")


@pytest.mark.parametrize(("saved", "loading"), list(itertools.product(ALL, ALL)))
def test_accept_any_weight_norm_loads_every_layout_into_every_layout(saved, loading):
    source = model("conv1d", saved, 0)
    target = accept_any_weight_norm(model("conv1d", loading, 0, 1))
    target.load_state_dict(source.state_dict(), strict=True)
    x = LAYERS["conv1d"][1]()
    if "removed" in (saved, loading) and saved != loading:
        torch.testing.assert_close(target(x), source(x), rtol=1e-5, atol=1e-6)
    else:
        assert torch.equal(target(x), source(x))


def test_without_the_helper_torch_converts_legacy_to_parametrized_only():
    legacy, parametrized = model("linear", "legacy", 0), model("linear", "parametrized", 0, 1)
    parametrized.load_state_dict(legacy.state_dict())  # torch's own compat hook
    with pytest.raises(RuntimeError, match="Unexpected key"):
        model("linear", "legacy", 0).load_state_dict(parametrized.state_dict())


@pytest.mark.parametrize(("saved", "loading"), [("legacy", "parametrized"),
                                                ("parametrized", "legacy")])
def test_accept_any_weight_norm_maps_spectral_norm_both_ways(saved, loading):
    def disc(kind: str) -> nn.Module:
        layer = nn.Linear(4, 4)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            wrapped = (nn.utils.spectral_norm(layer) if kind == "legacy"
                       else nn.utils.parametrizations.spectral_norm(layer))
        return nn.ModuleDict({"d": wrapped}).eval()

    source, target = disc(saved), accept_any_weight_norm(disc(loading))
    target.load_state_dict(source.state_dict(), strict=True)
    x = torch.randn(2, 4)
    assert torch.equal(target["d"](x), source["d"](x))
