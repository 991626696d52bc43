"""How drift is explained: the engine turns two manifests into findings (the vocabulary and
their rendering live in ``findings``), one rule per cause in ``rules/``, listed in order by
the engine alone.

It uses only ``pytest_ckpt.checkpoint`` (and ``pytest_ckpt.errors``) below it; it is pure.
"""
