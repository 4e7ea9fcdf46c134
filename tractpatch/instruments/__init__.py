"""Shipped instrument descriptions (YAML); see :mod:`tractpatch.repo.instrument`."""
