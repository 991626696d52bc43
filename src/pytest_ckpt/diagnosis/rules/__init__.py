"""The diagnosis rules: each claims the keys one cause explains from a
:class:`~pytest_ckpt.diagnosis.pool.KeyPool`. They import the pool, never the engine.
"""
