"""What the project's own key remap left behind, read from what it handed to
``load_state_dict``: a wrapper prefix it stripped only in part (``module.`` of a
``module._orig_mod.`` checkpoint), and keys it renamed that the model has under the
checkpoint's own names (a blanket ``gamma`` -> ``weight`` that also hits a layer scale)."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import replace

from pytest_ckpt.diagnosis.findings import Finding

_ORIGINS = {"module._orig_mod.": "DistributedDataParallel around torch.compile",
            "_orig_mod.module.": "torch.compile around DistributedDataParallel"}


def partly_stripped(findings: list[Finding], checkpoint_keys: Collection[str]) -> list[Finding]:
    """A prefix finding on the keys the load path handed on, when the checkpoint's own keys
    carry a longer prefix that ends with it: the remap stripped only its first part."""
    keys = set(checkpoint_keys)
    return [_partly_stripped(finding, keys) or finding if finding.kind == "prefix"
            else finding for finding in findings]


def _partly_stripped(finding: Finding, checkpoint_keys: set[str]) -> Finding | None:
    if not finding.keys or not finding.related:
        return None
    handed, model = finding.keys[0], finding.related[0]
    if not handed.endswith(model) or handed == model or handed in checkpoint_keys:
        return None
    left = handed[: len(handed) - len(model)]  # the prefix still on the handed keys
    stripped = next((key[: len(key) - len(handed)] for key in checkpoint_keys
                     if key.endswith(handed) and key != handed), None)
    if not stripped or not all(stripped + key in checkpoint_keys for key in finding.keys):
        return None
    whole = stripped + left
    origin = f" ({_ORIGINS[whole]})" if whole in _ORIGINS else ""
    return replace(
        finding,
        hint=(f"the load path's remap left '{left}' on every key: the checkpoint's keys start "
              f"with '{whole}'{origin} and the remap strips only '{stripped}'"),
        fix=("fix: strip the whole prefix in the load path: torch.nn.modules.utils."
             f"consume_prefix_in_state_dict_if_present(state_dict, '{whole}')"))


def overmatched(renamed: Mapping[str, str], not_loaded: Collection[str],
                model_keys: Collection[str]) -> Finding | None:
    """Checkpoint keys the model has under their own name that the load path renamed to a
    name the model lacks: a rename rule that matches more keys than it is for."""
    hit = sorted(key for key in not_loaded if key in renamed and renamed[key] not in model_keys)
    if not hit:
        return None
    example = hit[0].rpartition(".")[2]
    return Finding(
        "not_loaded", tuple(hit),
        "the load path renamed these keys although the model has them under the checkpoint's "
        f"own names (a remap that matches more than it is for, such as a blanket '{example}' "
        "rename that also hits a parameter of that name): they stay at their initial value",
        tuple(f"{key}: handed to load_state_dict as {renamed[key]}" for key in hit),
        tuple(renamed[key] for key in hit),
        fix=("fix: limit the remap to the keys it is for (e.g. only norm layers' names), or "
             "leave keys alone that the model already has (if key in model.state_dict())"))
