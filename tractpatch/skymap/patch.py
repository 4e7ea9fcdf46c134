"""A patch: one rectangle of a tract's pixel grid (inner box tiles, outer box overlaps)."""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

from astropy.wcs import WCS

from .box import Box


@dataclass(frozen=True)
class PatchInfo:
    """A patch of a tract.

    Attributes
    ----------
    index : tuple of int
        ``(x, y)`` patch index; (0, 0) is at the tract's minimum pixel corner.
    inner_bbox : Box
        The patch's share of the tract (inner boxes tile the tract exactly), in tract
        pixels, end-exclusive.
    outer_bbox : Box
        The inner box grown by the patch border and clipped to the tract: what a coadd
        of the patch covers.
    tract_wcs : astropy.wcs.WCS
        WCS of the tract pixel grid (0-based pixels).
    """

    index: tuple[int, int]
    inner_bbox: Box
    outer_bbox: Box
    tract_wcs: WCS = field(repr=False, compare=False)

    @property
    def name(self) -> str:
        """``"x,y"``, the patch data-ID value and file name."""
        return f"{self.index[0]},{self.index[1]}"

    @property
    def outer_shape(self) -> tuple[int, int]:
        """``(ny, nx)`` of the outer box (the shape of the coadd image)."""
        return self.outer_bbox.shape

    @property
    def outer_wcs(self) -> WCS:
        """WCS of an image covering the outer box: pixel (0, 0) is the box origin."""
        return shifted_wcs(self.tract_wcs, self.outer_bbox.x0, self.outer_bbox.y0)

    @property
    def inner_wcs(self) -> WCS:
        """WCS of an image covering the inner box: pixel (0, 0) is the box origin."""
        return shifted_wcs(self.tract_wcs, self.inner_bbox.x0, self.inner_bbox.y0)

    def sky_polygon(self, outer: bool = False) -> list[tuple[float, float]]:
        """(RA, Dec) deg of the pixel-edge corners of the inner (or outer) box."""
        box = self.outer_bbox if outer else self.inner_bbox
        xy = box.float_corners()
        ra, dec = self.tract_wcs.wcs_pix2world([p[0] for p in xy], [p[1] for p in xy], 0)
        return [(float(r) % 360.0, float(d)) for r, d in zip(ra, dec)]


def shifted_wcs(wcs: WCS, x0: float, y0: float) -> WCS:
    """A copy of ``wcs`` whose pixel (0, 0) is pixel ``(x0, y0)`` of the original."""
    out = copy.deepcopy(wcs)
    out.wcs.crpix = [wcs.wcs.crpix[0] - x0, wcs.wcs.crpix[1] - y0]
    out.wcs.set()
    return out
