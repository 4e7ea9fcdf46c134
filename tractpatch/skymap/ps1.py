"""The Pan-STARRS1 RINGS.V3 tessellation as a skymap: projection cells are tracts,
their 10 x 10 skycells are patches (``skycell.PPPP.SSS``).

Facts used (STScI documentation of the PS1 image services): 31 declination zones of
4 deg (zones 15..45, table in ``data/ps1grid_v3.csv``, copied from the STScI
``ps1grid.fits``); a projection cell is a TAN projection at 0.25"/pixel, East left,
centred at RA = index * 360 / NBAND, Dec = zone centre; its skycells have XCELL x YCELL
pixels on a pitch of (XCELL - 480, YCELL - 480), so neighbours overlap by 480 pixels;
skycell (k, j) has CRPIX = (CRPIX1 + (5 - k) * pitch_x, CRPIX2 + (5 - j) * pitch_y)
(FITS, 1-based) and SSS = 10 j + k.

In tract pixels (0-based) skycell (k, j)'s image is exactly the patch's outer box:
``[k px, k px + XCELL) x [j py, j py + YCELL)``; inner boxes are the pitch-sized middle
parts (origin at the 240-pixel half overlap).
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
from pydantic import Field

from ..cli.config import TaskConfig
from ..errors import UserError
from .base import BaseSkyMap
from .box import Box
from .tract import TractGeometry, TractInfo, make_wcs, sky_to_pixel

PIXEL_SCALE = 0.25  # arcsec
OVERLAP = 480  # pixels shared by neighbouring skycells
CELLS = 10  # skycells per projection cell along each axis


@dataclass(frozen=True)
class Zone:
    """One row of the RINGS.V3 table."""

    zone: int
    projcell: int
    nband: int
    dec: float
    dec_min: float
    dec_max: float
    xcell: int
    ycell: int
    crpix1: float
    crpix2: float


def read_grid(path=None) -> list[Zone]:
    """The zone table (default: the copy shipped with tractpatch)."""
    if path is None:
        text = resources.files("tractpatch.skymap").joinpath(
            "data/ps1grid_v3.csv").read_text()
    else:
        p = Path(path)
        if not p.exists():
            raise UserError(f"{path}: no such PS1 grid table; leave ps1 'grid' empty to "
                            "use the table shipped with tractpatch")
        text = p.read_text()
    rows = list(csv.DictReader(text.splitlines()))
    return [Zone(int(r["ZONE"]), int(r["PROJCELL"]), int(r["NBAND"]), float(r["DEC"]),
                 float(r["DEC_MIN"]), float(r["DEC_MAX"]), int(r["XCELL"]),
                 int(r["YCELL"]), float(r["CRPIX1"]), float(r["CRPIX2"])) for r in rows]


class PS1RingsSkyMapConfig(TaskConfig):
    """The PS1 RINGS.V3 skymap (its geometry is fixed by the tessellation)."""

    grid: str = Field("", description="CSV zone table (ZONE, PROJCELL, NBAND, DEC, "
                      "DEC_MIN, DEC_MAX, XCELL, YCELL, CRPIX1, CRPIX2); empty: the "
                      "RINGS.V3 table shipped with tractpatch")


def ps1_rings_v3() -> PS1RingsSkyMapConfig:
    """The PS1 3pi RINGS.V3 preset."""
    return PS1RingsSkyMapConfig()


class PS1RingsSkyMap(BaseSkyMap):
    """Projection cells as tracts (IDs = projection-cell numbers), skycells as
    patches."""

    kind = "ps1"

    def __init__(self, config: PS1RingsSkyMapConfig):
        self.config = config
        self._cache = {}
        self.zones = read_grid(config.grid or None)
        self._first = np.array([z.projcell for z in self.zones])
        self._nband = np.array([z.nband for z in self.zones])
        self._dec_max = np.array([z.dec_max for z in self.zones])
        self.dec_limit = min(z.dec_min for z in self.zones)
        self.geometry = self.zone_geometry(self.zones[0])

    @staticmethod
    def zone_geometry(z: Zone) -> TractGeometry:
        """Tract geometry of a zone: pitch-sized inner boxes, 240-pixel borders."""
        return TractGeometry(PIXEL_SCALE, "TAN", 0.0,
                             (z.xcell - OVERLAP, z.ycell - OVERLAP), OVERLAP // 2)

    def tract_ids(self) -> list[int]:
        return [z.projcell + i for z in self.zones for i in range(z.nband)]

    def __contains__(self, tract_id) -> bool:
        return self._zone_index(int(tract_id)) is not None

    def _zone_index(self, projcell: int) -> int | None:
        i = int(np.searchsorted(self._first, projcell, side="right")) - 1
        if i < 0 or projcell >= self._first[i] + self._nband[i]:
            return None
        return i

    def __getitem__(self, tract_id: int) -> TractInfo:
        tract_id = int(tract_id)
        t = self._cache.get(tract_id)
        if t is None:
            if self._zone_index(tract_id) is None:
                last = self._first[-1] + self._nband[-1] - 1
                raise KeyError(f"projection cell {tract_id} is not in RINGS.V3 "
                               f"({self._first[0]}..{last})")
            t = self._cache[tract_id] = self._make_tract(tract_id)
        return t

    def _make_tract(self, projcell: int) -> TractInfo:
        z = self.zones[self._zone_index(projcell)]
        idx = projcell - z.projcell
        ra = idx * 360.0 / z.nband
        px, py = z.xcell - OVERLAP, z.ycell - OVERLAP
        # tract pixel 0 is pixel 1 (FITS) of skycell k = 0, whose CRPIX is CRPIX1 + 5 px
        crpix0 = (z.crpix1 + 5 * px - 1.0, z.crpix2 + 5 * py - 1.0)
        wcs = make_wcs(ra, z.dec, crpix0, PIXEL_SCALE, "TAN", 0.0)
        bbox = Box(0, 0, CELLS * px + OVERLAP, CELLS * py + OVERLAP)
        return TractInfo(projcell, (ra, z.dec), wcs, bbox, (CELLS, CELLS),
                         self.zone_geometry(z), inner_origin=(OVERLAP // 2, OVERLAP // 2))

    # --- the PS1 lookup rules ---------------------------------------------------------
    def _cell_in_zone(self, zi: np.ndarray, ra: np.ndarray):
        nband = self._nband[zi]
        ira = np.rint((ra % 360.0) * nband / 360.0).astype(np.int64) % nband
        return self._first[zi] + ira

    def find_skycells(self, ra, dec) -> tuple[np.ndarray, np.ndarray]:
        """(projection cell, skycell number 0..99) by the PS1 image-service rule: the
        zone holding the Dec (near the north pole, of zones 44 and 45 the one where the
        point is farther from the image edge), the nearest cell centre in RA, then
        ``k = clip(rint(4.5 + x / pitch_x), 0, 9)`` and likewise ``j``. Points south of
        the survey get projection cell 0."""
        ra = np.atleast_1d(np.asarray(ra, dtype=float))
        dec = np.atleast_1d(np.asarray(dec, dtype=float))
        nz = len(self.zones)
        zi = np.minimum(np.searchsorted(self._dec_max, dec), nz - 1)
        near_pole = zi >= nz - 2
        zi = np.where(near_pole, nz - 2, zi)
        cell = self._cell_in_zone(zi, ra)
        cell2 = np.full_like(cell, self.zones[-1].projcell)
        x, y = self._offsets(cell, ra, dec)
        if near_pole.any():
            x2, y2 = self._offsets(cell2, ra, dec)
            d1 = self._edge_distance(nz - 2, x, y)
            d2 = self._edge_distance(nz - 1, x2, y2)
            use2 = near_pole & (d1 < d2)
            cell = np.where(use2, cell2, cell)
            zi = np.where(use2, nz - 1, zi)
            x, y = np.where(use2, x2, x), np.where(use2, y2, y)
        pxs = np.array([self.zones[i].xcell - OVERLAP for i in zi])
        pys = np.array([self.zones[i].ycell - OVERLAP for i in zi])
        k = np.clip(np.rint(4.5 + x / pxs), 0, CELLS - 1).astype(np.int64)
        j = np.clip(np.rint(4.5 + y / pys), 0, CELLS - 1).astype(np.int64)
        sub = 10 * j + k
        outside = dec < self.dec_limit
        return np.where(outside, 0, cell), np.where(outside, 0, sub)

    def _offsets(self, cells: np.ndarray, ra, dec):
        """Pixel offsets from each projection-cell centre (TAN, 0.25"/pix)."""
        x = np.empty(len(ra))
        y = np.empty(len(ra))
        for c in np.unique(cells):
            sel = cells == c
            t = self[int(c)]
            tx, ty = sky_to_pixel(t.wcs, ra[sel], dec[sel])
            x[sel] = tx - (t.wcs.wcs.crpix[0] - 1.0)
            y[sel] = ty - (t.wcs.wcs.crpix[1] - 1.0)
        return x, y

    def _edge_distance(self, zi: int, x, y):
        z = self.zones[zi]
        nx = CELLS * (z.xcell - OVERLAP) + OVERLAP
        ny = CELLS * (z.ycell - OVERLAP) + OVERLAP
        return np.minimum(np.minimum(x + nx // 2, nx // 2 - 1 - x),
                          np.minimum(y + ny // 2, ny // 2 - 1 - y))

    def skycell_names(self, ra, dec) -> list[str]:
        """``skycell.PPPP.SSS`` for each sky point (``""`` outside the survey)."""
        cells, subs = self.find_skycells(ra, dec)
        return [f"skycell.{c:04d}.{s:03d}" if c else "" for c, s in zip(cells, subs)]

    def find_tract(self, ra: float, dec: float) -> TractInfo:
        cells, _ = self.find_skycells(ra, dec)
        if cells[0] == 0:
            raise LookupError(f"({ra}, {dec}) is south of the PS1 3pi survey "
                              f"(Dec < {self.dec_limit:.4f})")
        return self[int(cells[0])]

    def skycell_center(self, projcell: int, subcell: int) -> tuple[float, float]:
        """(RA, Dec) deg of the centre pixel ((N - 1) / 2, 0-based) of a skycell."""
        t = self[projcell]
        p = t.patch(subcell % 10, subcell // 10)
        b = p.outer_bbox
        ra, dec = t.pixel_to_sky([(b.x0 + b.x1 - 1) / 2.0], [(b.y0 + b.y1 - 1) / 2.0])
        return float(ra[0]), float(dec[0])

    def candidate_tracts(self, ra, dec) -> list[TractInfo]:
        """Projection cells of the points' zones and the neighbouring zones, nearest in
        RA and their two neighbours."""
        ra = np.atleast_1d(np.asarray(ra, dtype=float))
        dec = np.atleast_1d(np.asarray(dec, dtype=float))
        nz = len(self.zones)
        ids = set()
        for a, d in zip(ra, dec):
            z0 = int(min(np.searchsorted(self._dec_max, d), nz - 1))
            for zi in (z0 - 1, z0, z0 + 1):
                if 0 <= zi < nz:
                    c = int(self._cell_in_zone(np.array([zi]), np.array([a]))[0])
                    first, n = int(self._first[zi]), int(self._nband[zi])
                    for dc in (-1, 0, 1):
                        ids.add(first + (c - first + dc) % n)
        return [self[i] for i in sorted(ids)]
