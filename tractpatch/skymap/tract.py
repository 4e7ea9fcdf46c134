"""A tract: one tangent-plane pixel grid on the sky, cut into patches.

The construction follows LSST's skymap (``TractInfo``/``ExplicitTractInfo``): a WCS
centred on the tract centre, the minimal pixel box that holds the tract's radius plus
overlap, grown symmetrically to a whole number of patches, then shifted so the tract's
minimum pixel is (0, 0). Patch (0, 0) is at that minimum corner; an outer box is the
inner box grown by the border and clipped to the tract.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from astropy.wcs import WCS

from .box import Box
from .patch import PatchInfo, shifted_wcs
from .sphere import clip_polygon_to_box, offset, polygon_area, separation


@dataclass(frozen=True)
class TractGeometry:
    """Pixel-grid parameters shared by all tracts of a skymap."""

    pixel_scale: float = 0.168  # arcsec per pixel
    projection: str = "TAN"
    rotation: float = 0.0  # deg: position angle of +y, east of north
    patch_inner_dimensions: tuple[int, int] = (4000, 4000)
    patch_border: int = 100


def make_wcs(ra: float, dec: float, crpix0: tuple[float, float], pixel_scale: float,
             projection: str = "TAN", rotation: float = 0.0) -> WCS:
    """A celestial WCS, East left, with sky (ra, dec) at 0-based pixel ``crpix0``.

    ``rotation`` (deg) turns the +y axis from north toward east.
    """
    w = WCS(naxis=2)
    w.wcs.ctype = [f"RA---{projection}", f"DEC--{projection}"]
    w.wcs.crval = [ra % 360.0, dec]
    w.wcs.crpix = [crpix0[0] + 1.0, crpix0[1] + 1.0]  # FITS pixels are 1-based
    s = pixel_scale / 3600.0
    c, sn = math.cos(math.radians(rotation)), math.sin(math.radians(rotation))
    w.wcs.cd = [[-s * c, s * sn], [s * sn, s * c]]
    w.wcs.radesys = "ICRS"
    w.wcs.equinox = 2000.0
    w.wcs.set()
    return w


def sky_to_pixel(wcs: WCS, ra, dec) -> tuple[np.ndarray, np.ndarray]:
    """0-based pixel positions of sky points; NaN where the projection has no answer
    (points 90 deg or more from a TAN tangent point)."""
    ra = np.atleast_1d(np.asarray(ra, dtype=float))
    dec = np.atleast_1d(np.asarray(dec, dtype=float))
    ok = np.isfinite(ra) & np.isfinite(dec)
    if wcs.wcs.ctype[0].endswith("TAN"):
        ok &= separation(ra, dec, wcs.wcs.crval[0], wcs.wcs.crval[1]) < 89.9
    x = np.full(ra.shape, np.nan)
    y = np.full(ra.shape, np.nan)
    if ok.any():
        px, py = wcs.wcs_world2pix(ra[ok], dec[ok], 0)
        x[ok], y[ok] = px, py
    return x, y


def pixel_to_sky(wcs: WCS, x, y) -> tuple[np.ndarray, np.ndarray]:
    """(RA in [0, 360), Dec) in degrees of 0-based pixel positions."""
    ra, dec = wcs.wcs_pix2world(np.atleast_1d(x), np.atleast_1d(y), 0)
    return np.mod(ra, 360.0), dec


class TractInfo:
    """A tract: ID, centre, WCS, pixel box and patch grid.

    Parameters
    ----------
    tract_id : int
    center : (float, float)
        (RA, Dec) deg of the tract centre (the WCS reference point).
    wcs : astropy.wcs.WCS
        The tract pixel grid, 0-based, minimum pixel (0, 0).
    bbox : Box
        The tract's pixels.
    num_patches : (int, int)
    geometry : TractGeometry
    inner_origin : (int, int)
        Tract pixel where patch (0, 0)'s inner box starts; (0, 0) for LSST-style
        skymaps, the half overlap for PS1 skycells (whose outer boxes reach the edge).
    """

    def __init__(self, tract_id: int, center, wcs: WCS, bbox: Box, num_patches,
                 geometry: TractGeometry, inner_origin=(0, 0)):
        self.tract_id = int(tract_id)
        self.center = (float(center[0]) % 360.0, float(center[1]))
        self.wcs = wcs
        self.bbox = bbox
        self.num_patches = (int(num_patches[0]), int(num_patches[1]))
        self.geometry = geometry
        self.patch_inner_dimensions = tuple(int(v) for v in geometry.patch_inner_dimensions)
        self.patch_border = int(geometry.patch_border)
        self.inner_origin = (int(inner_origin[0]), int(inner_origin[1]))

    # --- construction -----------------------------------------------------------------
    @classmethod
    def explicit(cls, tract_id: int, ra: float, dec: float, radius: float,
                 overlap: float, geometry: TractGeometry) -> "TractInfo":
        """A square tract holding a circle of ``radius + overlap`` deg (LSST's
        ``ExplicitTractInfo``): offsets at bearings 0, 90, 180, 270 deg fix the
        minimal box, which then grows symmetrically to whole patches."""
        wcs = make_wcs(ra, dec, (0.0, 0.0), geometry.pixel_scale, geometry.projection,
                       geometry.rotation)
        pts = [offset(ra, dec, 90.0 * i, radius + overlap) for i in range(4)]
        x, y = sky_to_pixel(wcs, [p[0] for p in pts], [p[1] for p in pts])
        if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
            raise ValueError(f"tract {tract_id}: radius {radius} deg is too large for "
                             f"the {geometry.projection} projection")
        box = Box.from_float(x.min(), y.min(), x.max(), y.max())
        nums = []
        x0y0 = [box.x0, box.y0]
        dims = [box.width, box.height]
        for i, inner in enumerate(geometry.patch_inner_dimensions):
            num = max((dims[i] + inner - 1) // inner, 1)
            delta = inner * num - dims[i]
            if delta > 0:
                x0y0[i] -= delta // 2
            dims[i] = inner * num
            nums.append(num)
        wcs = shifted_wcs(wcs, x0y0[0], x0y0[1])
        return cls(tract_id, (ra, dec), wcs, Box(0, 0, dims[0], dims[1]), nums, geometry)

    # --- the contract of docs/interfaces.md --------------------------------------------
    def corners(self) -> list[tuple[float, float]]:
        """(RA, Dec) deg of the tract's pixel-edge corners: min, (maxX, minY), max,
        (minX, maxY) — the order hscPipe logs."""
        xy = self.bbox.float_corners()
        ra, dec = pixel_to_sky(self.wcs, [p[0] for p in xy], [p[1] for p in xy])
        return [(float(r), float(d)) for r, d in zip(ra, dec)]

    def patch(self, x: int, y: int | None = None) -> PatchInfo:
        """The patch with index ``(x, y)`` (also accepts ``patch((x, y))`` or "x,y")."""
        if y is None:
            if isinstance(x, str):
                x, y = (int(v) for v in x.split(","))
            else:
                x, y = x
        nx, ny = self.num_patches
        if not (0 <= x < nx and 0 <= y < ny):
            raise IndexError(f"patch {x},{y} is not in tract {self.tract_id} "
                             f"(patches 0..{nx - 1}, 0..{ny - 1})")
        wx, wy = self.patch_inner_dimensions
        ox, oy = self.inner_origin
        inner = Box(ox + x * wx, oy + y * wy, ox + (x + 1) * wx, oy + (y + 1) * wy)
        outer = inner.grow(self.patch_border).clip(self.bbox)
        return PatchInfo((int(x), int(y)), inner, outer, self.wcs)

    def patches(self) -> list[PatchInfo]:
        """All patches, x fastest (LSST's iteration order)."""
        nx, ny = self.num_patches
        return [self.patch(x, y) for y in range(ny) for x in range(nx)]

    def __iter__(self):
        return iter(self.patches())

    def __len__(self) -> int:
        return self.num_patches[0] * self.num_patches[1]

    def sky_to_pixel(self, ra, dec):
        """0-based tract pixel positions (NaN off the projection)."""
        return sky_to_pixel(self.wcs, ra, dec)

    def pixel_to_sky(self, x, y):
        """(RA, Dec) deg of tract pixel positions."""
        return pixel_to_sky(self.wcs, x, y)

    def contains(self, ra, dec):
        """Whether sky points fall on the tract's pixels (bool or bool array)."""
        x, y = self.sky_to_pixel(ra, dec)
        ok = np.isfinite(x) & np.isfinite(y)
        ix = np.floor(np.where(ok, x, -1e9) + 0.5)
        iy = np.floor(np.where(ok, y, -1e9) + 0.5)
        inside = ok & self.bbox.contains(ix, iy)
        return bool(inside[0]) if np.ndim(ra) == 0 else inside

    def patch_indices(self, ra, dec) -> tuple[np.ndarray, np.ndarray]:
        """Patch index arrays (x, y) of the inner boxes holding sky points; -1 off the
        patch grid."""
        x, y = self.sky_to_pixel(ra, dec)
        ok = np.isfinite(x) & np.isfinite(y)
        ix = np.floor(np.where(ok, x, -1e9) + 0.5) - self.inner_origin[0]
        iy = np.floor(np.where(ok, y, -1e9) + 0.5) - self.inner_origin[1]
        px = np.floor_divide(ix, self.patch_inner_dimensions[0]).astype(int)
        py = np.floor_divide(iy, self.patch_inner_dimensions[1]).astype(int)
        good = ok & (px >= 0) & (px < self.num_patches[0]) & (py >= 0) & \
            (py < self.num_patches[1])
        return np.where(good, px, -1), np.where(good, py, -1)

    def find_patch(self, ra: float, dec: float) -> PatchInfo:
        """The patch whose inner box holds (ra, dec); LookupError off the tract."""
        px, py = self.patch_indices(ra, dec)
        if px[0] < 0:
            raise LookupError(f"({ra}, {dec}) is not in tract {self.tract_id}")
        return self.patch(int(px[0]), int(py[0]))

    def pixel_polygon(self, ra, dec) -> np.ndarray:
        """A sky polygon in tract pixels ``(n, 2)``; vertices off the projection are
        dropped."""
        x, y = self.sky_to_pixel(ra, dec)
        ok = np.isfinite(x) & np.isfinite(y)
        return np.column_stack([x[ok], y[ok]])

    def patches_overlapping(self, ra, dec, outer: bool = True) -> list[PatchInfo]:
        """Patches whose outer (or inner) box overlaps a sky polygon (vertex arrays in
        degrees, in order around the polygon, edges short enough to be straight in the
        tract's projection — true of CCDs and fields)."""
        xy = self.pixel_polygon(ra, dec)
        if len(xy) < 3:
            return []
        b = self.bbox
        clipped = clip_polygon_to_box(xy, b.x0 - 0.5, b.y0 - 0.5, b.x1 - 0.5, b.y1 - 0.5)
        if polygon_area(clipped) <= 0:
            return []
        grow = self.patch_border if outer else 0
        wx, wy = self.patch_inner_dimensions
        ox, oy = self.inner_origin
        lo = np.floor((clipped.min(axis=0) - [ox - grow, oy - grow]) / [wx, wy] - 1)
        hi = np.ceil((clipped.max(axis=0) - [ox + grow, oy + grow]) / [wx, wy] + 1)
        out = []
        for py in range(max(int(lo[1]), 0), min(int(hi[1]), self.num_patches[1] - 1) + 1):
            for px in range(max(int(lo[0]), 0),
                            min(int(hi[0]), self.num_patches[0] - 1) + 1):
                p = self.patch(px, py)
                box = p.outer_bbox if outer else p.inner_bbox
                c = clip_polygon_to_box(clipped, box.x0 - 0.5, box.y0 - 0.5,
                                        box.x1 - 0.5, box.y1 - 0.5)
                if polygon_area(c) > 0:
                    out.append(p)
        return out

    def overlaps(self, ra, dec) -> bool:
        """Whether a sky polygon overlaps the tract's pixels."""
        xy = self.pixel_polygon(ra, dec)
        if len(xy) < 3:
            return False
        b = self.bbox
        return polygon_area(clip_polygon_to_box(xy, b.x0 - 0.5, b.y0 - 0.5, b.x1 - 0.5,
                                                b.y1 - 0.5)) > 0

    def __repr__(self) -> str:
        return (f"TractInfo(tract_id={self.tract_id}, center=({self.center[0]:.6f}, "
                f"{self.center[1]:.6f}), num_patches={self.num_patches})")

    def describe(self) -> str:
        """hscPipe's log line: ``tract N has corners (..) (RA, Dec deg) and NX x NY
        patches``."""
        corners = ", ".join(f"({r:0.3f}, {d:0.3f})" for r, d in self.corners())
        return (f"tract {self.tract_id} has corners {corners} (RA, Dec deg) and "
                f"{self.num_patches[0]} x {self.num_patches[1]} patches")
