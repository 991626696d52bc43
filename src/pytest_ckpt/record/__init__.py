"""What is kept: manifest and schema snapshots (through syrupy), golden checkpoints and their
sidecars, the ``--ckpt-report`` JSON and the matrix rendered from it; every write atomic.

It uses ``formats``, ``diagnosis`` and ``checkpoint`` below it, never ``checks``.
"""
