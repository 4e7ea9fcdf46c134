"""Tract and patch geometry: discrete and rings skymaps, object-ID packing.

Public API (docs/interfaces.md, "Skymap"): :func:`load_skymap`, :class:`TractInfo`,
:class:`PatchInfo`, :class:`Box`; ``tractpatch.skymap.selection.exposures_in_tract``.
"""
from .box import Box
from .discrete import DiscreteSkyMap, DiscreteSkyMapConfig
from .idpacker import ObjectIdPacker
from .io import load_skymap, save_skymap
from .patch import PatchInfo
from .ps1 import PS1RingsSkyMap, ps1_rings_v3
from .rings import RingsSkyMap, RingsSkyMapConfig, hsc_rings_v1
from .tract import TractInfo

__all__ = ["Box", "TractInfo", "PatchInfo", "load_skymap", "save_skymap",
           "DiscreteSkyMap", "DiscreteSkyMapConfig", "RingsSkyMap", "RingsSkyMapConfig",
           "hsc_rings_v1", "PS1RingsSkyMap", "ps1_rings_v3", "ObjectIdPacker"]
