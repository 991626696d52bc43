"""What a test asks for: the ``ckpt`` fixture object (``fixture``) and one module per check it
delegates to (round-trip, manifest, partial loads, goldens, schema, resume, weight_norm
layouts, the strict-load guard), all sharing one ``CheckContext``.

It uses everything below it (``record``, ``formats``, ``diagnosis``, ``checkpoint``) and is
used only by the faces (``plugin``, ``cli``).
"""
