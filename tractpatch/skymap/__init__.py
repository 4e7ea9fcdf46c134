"""Tract and patch geometry: discrete and rings skymaps, object-ID packing."""
