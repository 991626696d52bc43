"""BatchNorm's ``num_batches_tracked`` absent from a checkpoint: when torch fills it and when
it matters.

``_NormBase._load_from_state_dict`` fills an absent ``num_batches_tracked`` when the
state_dict's ``_metadata`` records the module at version 1 or not at all (a checkpoint from
before the buffer existed, a state_dict rebuilt as a plain dict, every safetensors file): a
strict load passes and the model keeps its own count (older torch, 2.1 among them, writes 0).
A version-2 entry
(saved by a torch that writes the buffer) is not filled: a strict load raises, so the key was
dropped after saving. The filled count matters only with ``momentum=None``, where the running
statistics are a cumulative average over ``num_batches_tracked`` batches. A load path that
copies tensors by hand never calls ``load_state_dict``, so torch's fill does not run at all.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from pytest_ckpt.diagnosis.findings import Finding

if TYPE_CHECKING:
    import torch

COUNT = "num_batches_tracked"


def batchnorm_gaps(model: torch.nn.Module, gaps: Iterable[str], state: Mapping[str, Any] | None,
                   *, called_load_state_dict: bool) -> tuple[set[str], list[Finding]]:
    """Of the model keys a load left unwritten (``gaps``), the BatchNorm counts that torch's
    own fill accounts for and that do not matter (tolerated), and a finding for each other
    case. Only keys the checkpoint lacks are considered."""
    from torch.nn.modules.batchnorm import _NormBase

    modules = dict(model.named_modules())
    versions = _saved_versions(state)
    tolerated: set[str] = set()
    raising: list[str] = []
    cumulative: list[str] = []
    by_hand: list[str] = []
    for key in sorted(gaps):
        name, _, leaf = key.rpartition(".")
        module = modules.get(name)
        if leaf != COUNT or not isinstance(module, _NormBase) or (state is not None
                                                                  and key in state):
            continue
        entry = None if versions is None else versions.get(name)
        version = entry.get("version") if isinstance(entry, Mapping) else None
        if isinstance(version, int) and version >= 2:
            raising.append(key)
        elif module.momentum is None:
            (cumulative if called_load_state_dict else by_hand).append(key)
        else:
            tolerated.add(key)
    findings = []
    if raising:
        findings.append(Finding(
            "buffer_persistence", tuple(raising),
            f"BatchNorm's {COUNT} is absent although the checkpoint's _metadata records these "
            "modules at BatchNorm version 2 (saved by a torch that writes it): torch fills it "
            "only for version 1 or no _metadata, so a strict load_state_dict raises 'Missing "
            "key(s) in state_dict'; the key was dropped after saving (a filter or remap)",
            fix=(f"fix: keep {COUNT} when filtering or remapping the state_dict (or put it "
                 f"back: state_dict[{raising[0]!r}] = torch.tensor(0))")))
    if cumulative or by_hand:
        how = ("the load path copies tensors by hand (it never calls load_state_dict), so "
               "torch's fill for old BatchNorm checkpoints does not run and the model keeps its "
               "own count" if by_hand else
               "the checkpoint predates it (_metadata version 1 or none): torch fills it "
               "with the model's own count (older torch: 0) and a strict load passes")
        findings.append(Finding(
            "buffer_persistence", tuple(cumulative + by_hand),
            f"BatchNorm's {COUNT} is absent from the checkpoint and matters here: with "
            "momentum=None the running statistics are a cumulative average over "
            f"{COUNT} batches; {how}. Training on from this checkpoint restarts the average (the "
            "next batch outweighs every batch the statistics were computed on)",
            fix=(f"fix: save {COUNT} with the checkpoint, or set it after loading to the number "
                 "of batches the statistics were computed on (model.get_submodule("
                 f"{(cumulative + by_hand)[0].rpartition('.')[0]!r}).{COUNT}.fill_(n)), or "
                 "build the BatchNorm with a fixed momentum")))
    return tolerated, findings


def _saved_versions(state: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    """The state_dict's ``_metadata`` (module name -> ``{'version': n}``), if it has one."""
    metadata = getattr(state, "_metadata", None)
    return metadata if isinstance(metadata, Mapping) else None
