"""What a checkpoint is: its manifest (keys, dtypes, shapes, ties), container layout, schema,
tensor values and poisons, weight_norm key layouts, and the facts of a live model.

The bottom part: it uses only the standard library, torch and ``pytest_ckpt.errors``.
"""
