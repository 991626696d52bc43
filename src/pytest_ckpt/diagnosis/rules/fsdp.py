"""FSDP checkpoints that are not model state_dicts: local flat-parameter shards
(``..._fsdp_wrapped_module._flat_param``) and keys still carrying wrapper segments.

A diagnosis rule (pure): such keys are reported as what they are, and the model keys they
stand for are not repeated as generic missing keys.
"""

from __future__ import annotations

import re

from pytest_ckpt.diagnosis.findings import Finding
from pytest_ckpt.diagnosis.pool import KeyPool

FLAT_PARAM = "_flat_param"
WRAPPERS = ("_fsdp_wrapped_module", "_checkpoint_wrapped_module", "_fpw_module")
_WRAPPED = re.compile("|".join(WRAPPERS))  # a cheap test before splitting a key
FIX = ("save with FSDP's FULL_STATE_DICT or SHARDED_STATE_DICT (or "
       "torch.distributed.checkpoint.state_dict.get_model_state_dict) to get the model's keys")


def unwrapped(key: str) -> str:
    """The key without FSDP / activation-checkpoint wrapper segments."""
    return ".".join(part for part in key.split(".") if part not in WRAPPERS)


def fsdp_rule(pool: KeyPool) -> None:
    flat = sorted(key for key in pool.unexpected
                  if key.endswith(FLAT_PARAM) and key.rpartition(".")[2] == FLAT_PARAM)
    if flat:
        owners = {unwrapped(key).removesuffix(FLAT_PARAM).rstrip(".") for key in flat}
        covered = sorted(key for key in pool.missing
                         if any(not owner or key.startswith(owner + ".") for owner in owners))
        pool.claim(Finding(
            "fsdp_local_shards", tuple(flat),
            f"FSDP local state: flattened parameter shards of {len(owners)} wrapped "
            f"module(s), one slice per rank, not the model's keys ({len(covered)} model keys "
            f"are inside them); {FIX}"), missing=covered, unexpected=flat)
    wrapped = sorted(key for key in pool.unexpected if _WRAPPED.search(key))
    pairs = [(key, new) for key in wrapped
             if (new := unwrapped(key)) != key and new in pool.missing]
    if pairs:
        pool.claim(Finding(
            "prefix", tuple(old for old, _ in pairs),
            "keys carry FSDP / activation-checkpoint wrapper segments (_fsdp_wrapped_module, "
            f"_checkpoint_wrapped_module): {FIX}, or drop those segments in the load path"),
            missing=[new for _, new in pairs], unexpected=[old for old, _ in pairs],
            pairs=pairs)
