"""The three weight_norm layouts of a parameter, and exact conversions between them: the
documented import path of :mod:`pytest_ckpt.checkpoint.weight_norm` (``detect``,
``convert``, ``map_state_dict``, ``WeightNormSite``, ``LAYOUTS``)."""

from __future__ import annotations

from pytest_ckpt.checkpoint.weight_norm import (
    LAYOUTS,
    WeightNormSite,
    convert,
    detect,
    map_state_dict,
)

__all__ = ["LAYOUTS", "WeightNormSite", "convert", "detect", "map_state_dict"]
