"""The output-pixel → input-pixel transform, exact on a coarse grid, bilinear between.

As LSST's ``interpLength`` and SWarp's projection approximation: the exact
pixel→sky→pixel transform (with SIP/TPV distortion, via astropy) is evaluated only at the
nodes of a grid every ``step`` output pixels; the warping loop interpolates between them.
The interpolation error is measured at the cell centres (where bilinear interpolation of
a smooth map is worst) and the grid is refined until it is below ``max_error`` pixels.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from astropy.wcs import WCS


@dataclass
class CoarseTransform:
    """Input-pixel positions on a coarse grid of an output region.

    Attributes
    ----------
    x0, y0 : int
        Output pixel of the region origin (grid node (0, 0)).
    ny, nx : int
        Region shape.
    step : int
        Node spacing (output pixels).
    gx, gy : ndarray
        Input pixel x, y at the nodes ``(y0 + j*step, x0 + i*step)``.
    gj : ndarray
        Pixel-area ratio |det d(in)/d(out)| at the nodes (input pixels per output pixel).
    max_error : float
        Largest measured interpolation error (input pixels) at the cell centres.
    """

    x0: int
    y0: int
    ny: int
    nx: int
    step: int
    gx: np.ndarray
    gy: np.ndarray
    gj: np.ndarray
    max_error: float

    def interpolate(self, x, y):
        """Interpolated input position at output pixels ``x, y`` (as the warper does)."""
        u = (np.asarray(x, float) - self.x0) / self.step
        v = (np.asarray(y, float) - self.y0) / self.step
        ci = np.clip(np.floor(u).astype(int), 0, self.gx.shape[1] - 2)
        cj = np.clip(np.floor(v).astype(int), 0, self.gx.shape[0] - 2)
        fx, fy = u - ci, v - cj

        def bil(g):
            return ((1 - fy) * ((1 - fx) * g[cj, ci] + fx * g[cj, ci + 1])
                    + fy * ((1 - fx) * g[cj + 1, ci] + fx * g[cj + 1, ci + 1]))

        return bil(self.gx), bil(self.gy)


def exact_transform(out_wcs: WCS, in_wcs: WCS, x, y):
    """Exact input pixel position of output pixels ``x, y`` (0-based) via the sky."""
    ra, dec = out_wcs.pixel_to_world_values(np.asarray(x, float), np.asarray(y, float))
    return in_wcs.world_to_pixel_values(ra, dec)


def _area_ratio(out_wcs, in_wcs, x, y, h=0.5):
    """|det| of the Jacobian d(input)/d(output) by central differences."""
    xs = np.concatenate([x + h, x - h, x, x])
    ys = np.concatenate([y, y, y + h, y - h])
    ix, iy = exact_transform(out_wcs, in_wcs, xs, ys)
    n = x.size
    dxdx = (ix[:n] - ix[n:2 * n]) / (2 * h)
    dydx = (iy[:n] - iy[n:2 * n]) / (2 * h)
    dxdy = (ix[2 * n:3 * n] - ix[3 * n:]) / (2 * h)
    dydy = (iy[2 * n:3 * n] - iy[3 * n:]) / (2 * h)
    return np.abs(dxdx * dydy - dxdy * dydx)


def coarse_transform(out_wcs: WCS, in_wcs: WCS, x0: int, y0: int, ny: int, nx: int,
                     step: int = 32, max_error: float = 0.01) -> CoarseTransform:
    """Build the coarse-grid transform of an output region, refining it if needed.

    Parameters
    ----------
    out_wcs, in_wcs : astropy.wcs.WCS
        Output (patch) and input (CCD) WCS, 0-based pixels.
    x0, y0, ny, nx : int
        Output region: pixels ``[y0, y0+ny) × [x0, x0+nx)``.
    step : int
        Initial node spacing (LSST ``interpLength``).
    max_error : float
        Bound on the interpolation error in input pixels; the spacing is halved until
        the error measured at every cell centre is below it (down to exact, step 1).

    Returns
    -------
    CoarseTransform
    """
    step = max(1, int(step))
    while True:
        ngx = (nx - 1) // step + 2
        ngy = (ny - 1) // step + 2
        jj, ii = np.mgrid[0:ngy, 0:ngx]
        nxs = (x0 + ii * step).astype(float).ravel()
        nys = (y0 + jj * step).astype(float).ravel()
        gx, gy = exact_transform(out_wcs, in_wcs, nxs, nys)
        gx = gx.reshape(ngy, ngx)
        gy = gy.reshape(ngy, ngx)
        if step == 1:
            err = 0.0
        else:
            # cell centres: where a bilinear interpolant of a smooth map errs most
            cy, cx = np.mgrid[0:ngy - 1, 0:ngx - 1]
            px = x0 + (cx + 0.5) * step
            py = y0 + (cy + 0.5) * step
            ex, ey = exact_transform(out_wcs, in_wcs, px.ravel(), py.ravel())
            ax = 0.25 * (gx[:-1, :-1] + gx[1:, :-1] + gx[:-1, 1:] + gx[1:, 1:]).ravel()
            ay = 0.25 * (gy[:-1, :-1] + gy[1:, :-1] + gy[:-1, 1:] + gy[1:, 1:]).ravel()
            err = float(np.max(np.hypot(ax - ex, ay - ey))) if ex.size else 0.0
        if err < max_error or step == 1:
            break
        step = max(1, step // 2)
    gj = _area_ratio(out_wcs, in_wcs, nxs, nys).reshape(ngy, ngx)
    return CoarseTransform(x0, y0, ny, nx, step, np.ascontiguousarray(gx),
                           np.ascontiguousarray(gy), np.ascontiguousarray(gj), err)


def footprint_bbox(in_wcs: WCS, in_shape, out_wcs: WCS, out_shape, margin: int = 3,
                   samples: int = 16):
    """Output-pixel box ``(x0, y0, x1, y1)`` (end-exclusive) covered by an input image.

    The input's border is sampled (``samples`` points per edge), mapped to the output
    frame, and the bounding box grown by ``margin`` pixels (the kernel half-width) and
    clipped to the output; None when the input does not overlap the output.
    """
    ny, nx = in_shape
    t = np.linspace(0, 1, samples)
    ex = np.concatenate([t * (nx - 1), np.full(samples, nx - 1.0), t * (nx - 1),
                         np.zeros(samples)])
    ey = np.concatenate([np.zeros(samples), t * (ny - 1), np.full(samples, ny - 1.0),
                         t * (ny - 1)])
    # pad by half a pixel outwards so the box covers the pixels' full extent
    ex = np.where(ex <= 0, -0.5, np.where(ex >= nx - 1, nx - 0.5, ex))
    ey = np.where(ey <= 0, -0.5, np.where(ey >= ny - 1, ny - 0.5, ey))
    ra, dec = in_wcs.pixel_to_world_values(ex, ey)
    ox, oy = out_wcs.world_to_pixel_values(ra, dec)
    if not (np.all(np.isfinite(ox)) and np.all(np.isfinite(oy))):
        return None
    ony, onx = out_shape
    x0 = max(0, int(np.floor(ox.min())) - margin)
    y0 = max(0, int(np.floor(oy.min())) - margin)
    x1 = min(onx, int(np.ceil(ox.max())) + margin + 1)
    y1 = min(ony, int(np.ceil(oy.max())) + margin + 1)
    if x1 <= x0 or y1 <= y0:
        return None
    return x0, y0, x1, y1
