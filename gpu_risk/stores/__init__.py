"""The Zarr stores, one module per kind over one module of atomic day groups.

``days``: day groups written atomically (complete flag, seal, one-writer lock), the
encodings every store shares; ``book``, ``positions``, ``market``, ``results``: each store's
writers and readers. The codecs (exact integer ticks, margin-mode flag codes) are encode and
decode pairs in :mod:`gpu_risk.coding`. :mod:`gpu_risk.store` gathers the public functions in
one namespace.
"""
