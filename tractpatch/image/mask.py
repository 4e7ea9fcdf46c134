"""Mask bit planes with LSST names, stored in FITS headers as ``MP_<NAME> = bit``."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: LSST mask-plane names and their default bits.
DEFAULT_MASK_PLANES: dict[str, int] = {
    "BAD": 0, "SAT": 1, "INTRP": 2, "CR": 3, "EDGE": 4, "DETECTED": 5,
    "DETECTED_NEGATIVE": 6, "SUSPECT": 7, "NO_DATA": 8, "CLIPPED": 9, "REJECTED": 10,
    "SENSOR_EDGE": 11, "INEXACT_PSF": 12,
}


@dataclass
class MaskPlanes:
    """Mapping of mask-plane name to bit number.

    Examples
    --------
    >>> mp = MaskPlanes()
    >>> mp.bitmask("BAD", "SAT")
    3
    """

    planes: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_MASK_PLANES))

    def bit(self, name: str) -> int:
        """Bit number of plane ``name``; a new plane gets the next free bit."""
        if name not in self.planes:
            used = set(self.planes.values())
            free = next(b for b in range(31) if b not in used)
            self.planes[name] = free
        return self.planes[name]

    def bitmask(self, *names: str) -> int:
        """OR of the bits of ``names`` (an int usable with ``mask & value``)."""
        value = 0
        for n in names:
            value |= 1 << self.bit(n)
        return value

    def to_header(self, header) -> None:
        """Write ``MP_<NAME> = bit`` cards into an astropy header."""
        for name, bit in sorted(self.planes.items(), key=lambda kv: kv[1]):
            key = f"MP_{name}"
            # Keys over 8 characters must be HIERARCH cards in FITS.
            header[key if len(key) <= 8 else f"HIERARCH {key}"] = bit

    @classmethod
    def from_header(cls, header) -> "MaskPlanes":
        """Read ``MP_*`` cards; an empty header gives the default planes."""
        planes = {}
        for key in header.keys():
            if key.startswith("MP_"):
                planes[key[3:]] = int(header[key])
        return cls(planes) if planes else cls()

    def describe(self, mask: np.ndarray) -> dict[str, int]:
        """Number of pixels with each plane set (for summaries and tests)."""
        return {n: int(np.count_nonzero(mask & (1 << b))) for n, b in self.planes.items()}
