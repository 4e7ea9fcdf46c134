"""The all-sky rings skymap (LSST ``RingsSkyMap``) and the HSC-SSP preset.

The sphere is cut into ``numRings`` rings of declination plus two polar caps (which
together count as one more ring when sizing). Each ring holds ``int(2 pi cos(dec) /
ringSize) + 1`` tracts, with ``dec`` the ring edge nearest the equator so neighbours
overlap everywhere. Tract 0 is the south cap; tract 1 is the one at ``raStart`` in the
southernmost ring; numbering runs east around each ring, ring by ring northward, and
the north cap is last.

``version`` 0 keeps LSST's original numbering (before DM-14809): the first and last
tract indices of the first ring name the same tract, and the tract at ``raStart`` of
every later ring is numbered one ring late (so the last ring's tract at ``raStart`` has
no number). ``version`` 1 fixes it. The two agree everywhere except at ``raStart``.
"""
from __future__ import annotations

import math

import numpy as np
from pydantic import Field

from .base import BaseSkyMap, SkyMapConfig
from .tract import TractInfo, make_wcs


class RingsSkyMapConfig(SkyMapConfig):
    """An all-sky rings skymap."""

    numRings: int = Field(120, gt=0, description="number of declination rings")
    raStart: float = Field(0.0, ge=0.0, lt=360.0, description="RA of the first tract "
                           "centre of every ring (deg)")
    version: int = Field(1, ge=0, le=1, description="tract numbering: 0 keeps LSST's "
                         "original RA=raStart off-by-one (DM-14809), 1 fixes it")


def hsc_rings_v1(version: int = 1) -> RingsSkyMapConfig:
    """The HSC-SSP skymap: 120 rings, TAN, tractOverlap 1/60 deg, 0.168"/pix,
    4000x4000 patches with 100-pixel borders (18938 tracts of 9 x 9 patches)."""
    return RingsSkyMapConfig(numRings=120, projection="TAN", tractOverlap=1.0 / 60.0,
                             pixelScale=0.168, patchInnerDimensions=[4000, 4000],
                             patchBorder=100, rotation=0.0, raStart=0.0, version=version)


class RingsSkyMap(BaseSkyMap):
    """All-sky rings of tracts (see the module docstring)."""

    kind = "rings"

    def __init__(self, config: RingsSkyMapConfig):
        super().__init__(config)
        n = config.numRings
        self.ring_size = math.pi / (n + 1)  # radians; the caps share one ring's size
        nums = []
        for i in range(n):
            start = self.ring_size * (i + 0.5) - 0.5 * math.pi
            stop = start + self.ring_size
            dec = min(abs(start), abs(stop))  # the edge nearest the equator
            nums.append(int(2 * math.pi * math.cos(dec) / self.ring_size) + 1)
        self.ring_nums = np.array(nums, dtype=np.int64)
        self._first_index = np.concatenate([[1], 1 + np.cumsum(self.ring_nums)])
        self.num_tracts = int(self.ring_nums.sum()) + 2
        self._ra_start = math.radians(config.raStart)
        self._template: TractInfo | None = None

    def tract_ids(self) -> list[int]:
        return list(range(self.num_tracts))

    def __len__(self) -> int:
        return self.num_tracts

    def __contains__(self, tract_id) -> bool:
        return 0 <= int(tract_id) < self.num_tracts

    def __getitem__(self, tract_id: int) -> TractInfo:
        tract_id = int(tract_id)
        t = self._cache.get(tract_id)
        if t is None:
            if not 0 <= tract_id < self.num_tracts:
                raise KeyError(f"tract {tract_id} is not in this rings skymap (tracts "
                               f"0..{self.num_tracts - 1})")
            t = self._cache[tract_id] = self._make_tract(tract_id)
        return t

    # --- numbering --------------------------------------------------------------------
    def ring_indices(self, index: int) -> tuple[int, int]:
        """(ring, tract number in the ring) of a tract index; ring -1 is the south
        cap and ``numRings`` the north cap (tract number 0)."""
        n = self.config.numRings
        if index == 0:
            return -1, 0
        if index == self.num_tracts - 1:
            return n, 0
        if not 0 < index < self.num_tracts:
            raise KeyError(f"tract {index} is out of range 0..{self.num_tracts - 1}")
        ring, num = 0, index - 1
        if self.config.version == 0:
            while ring < n and num > self.ring_nums[ring]:  # the original off-by-one
                num -= int(self.ring_nums[ring])
                ring += 1
        else:
            while ring < n and num >= self.ring_nums[ring]:
                num -= int(self.ring_nums[ring])
                ring += 1
        return ring, num

    def tract_center(self, index: int) -> tuple[float, float]:
        """(RA, Dec) deg of a tract centre."""
        ring, num = self.ring_indices(index)
        if ring == -1:
            return 0.0, -90.0
        if ring == self.config.numRings:
            return 0.0, 90.0
        dec = self.ring_size * (ring + 1) - 0.5 * math.pi
        ra = (2 * math.pi * num / self.ring_nums[ring] + self._ra_start) % (2 * math.pi)
        return math.degrees(ra), math.degrees(dec)

    def explicit_tract(self, tract_id: int) -> TractInfo:
        """The tract built step by step (LSST ``ExplicitTractInfo``)."""
        ra, dec = self.tract_center(tract_id)
        return TractInfo.explicit(tract_id, ra, dec, math.degrees(0.5 * self.ring_size),
                                  self.config.tractOverlap, self.geometry)

    def _make_tract(self, tract_id: int) -> TractInfo:
        # Every tract has the same radius, and a TAN/STG/... grid centred on the tract
        # is symmetric under rotation of the sphere, so all tracts share one pixel box
        # and reference pixel: build one explicitly, reuse it (18938 tracts in ~1 s).
        if self._template is None:
            self._template = self.explicit_tract(1)
        t = self._template
        ra, dec = self.tract_center(tract_id)
        crpix0 = (t.wcs.wcs.crpix[0] - 1.0, t.wcs.wcs.crpix[1] - 1.0)
        wcs = make_wcs(ra, dec, crpix0, self.geometry.pixel_scale,
                       self.geometry.projection, self.geometry.rotation)
        return TractInfo(tract_id, (ra, dec), wcs, t.bbox, t.num_patches, self.geometry)

    def _ring_of(self, dec_rad: np.ndarray) -> np.ndarray:
        first = self.ring_size * 0.5 - 0.5 * math.pi
        ring = np.floor((dec_rad - first) / self.ring_size).astype(np.int64)
        ring = np.where(dec_rad < first, -1, ring)
        return np.where(dec_rad > -first, self.config.numRings, ring)

    def _index(self, ring: np.ndarray, num: np.ndarray) -> np.ndarray:
        """Tract index of (ring, number) pairs inside the rings (caps excluded)."""
        if self.config.version == 0:
            ring = np.where((num == 0) & (ring != 0), ring + 1, ring)
        return self._first_index[ring] + num

    def find_tract_ids(self, ra, dec) -> np.ndarray:
        """Tract index of each sky point (vectorised ``findTract``): the tract whose
        ring holds the Dec and whose centre is nearest in RA."""
        ra_r = np.radians(np.atleast_1d(np.asarray(ra, dtype=float)))
        dec_r = np.radians(np.atleast_1d(np.asarray(dec, dtype=float)))
        n = self.config.numRings
        ring = self._ring_of(dec_r)
        out = np.where(ring < 0, 0, self.num_tracts - 1).astype(np.int64)
        mid = (ring >= 0) & (ring < n)
        if mid.any():
            r = ring[mid]
            nums = self.ring_nums[r]
            dra = (ra_r[mid] - self._ra_start) % (2 * math.pi)
            num = (dra / (2 * math.pi / nums) + 0.5).astype(np.int64)
            num = np.where(num == nums, 0, num)  # wrap past the last tract
            out[mid] = self._index(r, num)
        return out

    def find_tract(self, ra: float, dec: float) -> TractInfo:
        return self[int(self.find_tract_ids(ra, dec)[0])]

    def candidate_tracts(self, ra, dec) -> list[TractInfo]:
        """Tracts next to each point: its ring and the neighbouring rings, the nearest
        tract in RA and its two neighbours, and both caps (LSST ``findAllTracts``)."""
        ra_r = np.radians(np.atleast_1d(np.asarray(ra, dtype=float)))
        dec_r = np.radians(np.atleast_1d(np.asarray(dec, dtype=float)))
        n = self.config.numRings
        ids = {0, self.num_tracts - 1}
        for ring0, a in zip(self._ring_of(dec_r), ra_r):
            for r in (ring0 - 1, ring0, ring0 + 1):
                if not 0 <= r < n:
                    continue
                nums = int(self.ring_nums[r])
                dra = (a - self._ra_start) % (2 * math.pi)
                num = int(dra / (2 * math.pi / nums) + 0.5) % nums
                for t in (num - 1, num, num + 1):
                    idx = int(self._index(np.array([r]), np.array([t % nums]))[0])
                    if 0 <= idx < self.num_tracts:
                        ids.add(idx)
        return [self[i] for i in sorted(ids)]
