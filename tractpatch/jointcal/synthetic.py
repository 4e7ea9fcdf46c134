"""Synthetic mosaic-camera catalogs with known truth, for tests and benchmarks.

True mapping: CCD pixels -> focal plane (per-CCD affine: position and a small rotation)
-> radial distortion ``f (1 + k |f|^2)`` -> tangent plane of the visit's true pointing ->
sky. Header WCSs are linear TAN fits of the truth at each CCD centre, then spoiled by a
per-visit pointing error and rotation. True calibration: per-CCD constant × per-visit
quadratic over the focal plane (nJy/count). Stars have proper motions; a fraction is
missing from the reference catalog.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from astropy.wcs import WCS

from .inputs import CcdImage, Detections, RefCatalog
from .tangent import deproject, project


@dataclass
class SyntheticTruth:
    """True mappings of a synthetic data set."""

    pointing: dict
    ccd_layout: dict   # ccd -> (x0, y0, rot) focal-plane arcsec / rad
    nx: int
    ny: int
    pixel_scale: float
    k: float
    zp: dict           # visit -> (c0, cu, cvv)
    gain: dict         # ccd -> factor
    fp_scale: float
    rotator: dict      # visit -> camera rotation on the sky (rad)
    #: true stars: (ra, dec) deg at the reference epoch, proper motions mas/yr (pm_ra
    #: includes cos dec), all of them, in or out of the reference catalog
    star_ra: np.ndarray | None = None
    star_dec: np.ndarray | None = None
    star_pmra: np.ndarray | None = None
    star_pmdec: np.ndarray | None = None

    def focal(self, ccd, x, y):
        x0, y0, rot = self.ccd_layout[ccd]
        dx = (np.asarray(x, float) - self.nx / 2) * self.pixel_scale
        dy = (np.asarray(y, float) - self.ny / 2) * self.pixel_scale
        c, s = np.cos(rot), np.sin(rot)
        return x0 + c * dx - s * dy, y0 + s * dx + c * dy

    def pixel_to_sky(self, visit, ccd, x, y):
        """True (ra, dec) deg of 0-based pixels."""
        fx, fy = self.focal(ccd, x, y)
        r2 = fx ** 2 + fy ** 2
        dx, dy = fx * (1 + self.k * r2), fy * (1 + self.k * r2)
        c, s = np.cos(self.rotator[visit]), np.sin(self.rotator[visit])
        return deproject(c * dx - s * dy, s * dx + c * dy, *self.pointing[visit])

    def sky_to_focal(self, visit, ra, dec):
        """Undistorted focal-plane coordinates (arcsec) of sky positions in a visit."""
        px, py = project(ra, dec, *self.pointing[visit])
        c, s = np.cos(self.rotator[visit]), np.sin(self.rotator[visit])
        dx, dy = c * px + s * py, -s * px + c * py
        fx, fy = dx.copy(), dy.copy()
        for _ in range(8):  # fixed-point inversion of the radial distortion
            r2 = fx ** 2 + fy ** 2
            fx, fy = dx / (1 + self.k * r2), dy / (1 + self.k * r2)
        return fx, fy

    def focal_to_pixel(self, ccd, fx, fy):
        """0-based pixels of focal-plane coordinates on CCD ``ccd``."""
        x0, y0, rot = self.ccd_layout[ccd]
        c, s = np.cos(rot), np.sin(rot)
        ax, ay = fx - x0, fy - y0
        return ((c * ax + s * ay) / self.pixel_scale + self.nx / 2,
                (-s * ax + c * ay) / self.pixel_scale + self.ny / 2)

    def sky_to_pixel(self, visit, ccd, ra, dec):
        """Inverse of :meth:`pixel_to_sky`."""
        return self.focal_to_pixel(ccd, *self.sky_to_focal(visit, ra, dec))

    def calibration(self, visit, ccd, x, y):
        """True nJy per count at 0-based pixels."""
        fx, fy = self.focal(ccd, x, y)
        c0, cu, cvv = self.zp[visit]
        U, V = fx / self.fp_scale, fy / self.fp_scale
        return c0 * self.gain[ccd] * (1 + cu * U + cvv * (2 * V ** 2 - 1))

    def score(self, res, images=None, n: int = 10, photometry: bool = True):
        """RMS of a fit's errors against this truth on an ``n`` × ``n`` pixel grid per CCD.

        Parameters
        ----------
        res : JointcalResult
            A jointcal or mosaic fit (``pixel_to_sky``, ``calibration`` per image).
        images : sequence of int, optional
            Indices into ``res.images`` to score (default: all).
        photometry : bool
            Also score the calibration (False for astrometry-only fits).

        Returns
        -------
        mas, mmag, offset : ndarray
            Per scored image: astrometric RMS (mas), calibration RMS and mean
            (mmag; NaN without photometry).
        """
        images = range(len(res.images)) if images is None else images
        mas, mmag, offset = [], [], []
        for g in images:
            im = res.images[g]
            x, y = np.meshgrid(np.linspace(0, im.nx - 1, n), np.linspace(0, im.ny - 1, n))
            x, y = x.ravel(), y.ravel()
            ra, dec = res.pixel_to_sky(g, x, y)
            tra, tdec = self.pixel_to_sky(im.visit, im.ccd, x, y)
            d = np.hypot((ra - tra) * np.cos(np.radians(dec)), dec - tdec) * 3.6e6
            mas.append(np.sqrt(np.mean(d ** 2)))
            dm = (2.5e3 * np.log10(res.calibration(g, x, y) /
                                   self.calibration(im.visit, im.ccd, x, y))
                  if photometry else np.full(1, np.nan))
            mmag.append(np.sqrt(np.mean(dm ** 2)))
            offset.append(np.mean(dm))
        return np.array(mas), np.array(mmag), np.array(offset)


def make_synthetic(n_visits=6, ccd_grid=(4, 2), nx=1024, ny=1024, pixel_scale=0.2,
                   stars_per_ccd=200, dither=60.0, pointing_error=8.0,
                   rotation_error=0.08, ref_fraction=0.7, k=2e-9, seed=1,
                   ra0=150.0, dec0=2.0, mjd0=57000.0, ref_epoch=57000.0, pm_sigma=10.0,
                   centroid_floor=0.01, rotator_range=3.0,
                   header_distortion=True, visit_spacing_days=30.0):
    """Detections, header-WCS CCD images, a reference catalog and the truth.

    Returns
    -------
    det : Detections
    images : list of CcdImage
    refcat : RefCatalog
    truth : SyntheticTruth
    """
    rng = np.random.default_rng(seed)
    gx, gy = ccd_grid
    w, h = nx * pixel_scale, ny * pixel_scale
    gap = 20.0
    layout = {}
    for j in range(gy):
        for i in range(gx):
            c = j * gx + i
            layout[c] = ((i - (gx - 1) / 2) * (w + gap), (j - (gy - 1) / 2) * (h + gap),
                         rng.normal(0, 2e-4))
    fp_scale = max(gx * (w + gap), gy * (h + gap)) / 2
    pointing = {}
    zp = {}
    rotator = {v: np.radians(rng.uniform(-rotator_range, rotator_range))
               for v in range(n_visits)}
    for v in range(n_visits):
        off = rng.uniform(-dither, dither, 2)
        pointing[v] = tuple(deproject(off[0], off[1], ra0, dec0))
        pointing[v] = (float(pointing[v][0]), float(pointing[v][1]))
        zp[v] = (rng.uniform(0.8, 1.2), rng.normal(0, 0.01), rng.normal(0, 0.01))
    gain = {c: rng.uniform(0.9, 1.1) for c in layout}
    truth = SyntheticTruth(pointing, layout, nx, ny, pixel_scale, k, zp, gain, fp_scale, rotator)
    # stars over the dithered field
    half = np.array([gx * (w + gap) / 2 + dither + 30, gy * (h + gap) / 2 + dither + 30])
    area_ccd = w * h
    n_stars = int(stars_per_ccd * (4 * half[0] * half[1]) / area_ccd)
    sx = rng.uniform(-half[0], half[0], n_stars)
    sy = rng.uniform(-half[1], half[1], n_stars)
    sra, sdec = deproject(sx, sy, ra0, dec0)
    mag = 17 + 6 * rng.power(2.5, n_stars)  # more faint than bright stars
    flux_njy = 3631e9 * 10 ** (-0.4 * mag)
    pmra = rng.normal(0, pm_sigma, n_stars)
    pmdec = rng.normal(0, pm_sigma, n_stars)
    truth.star_ra, truth.star_dec, truth.star_pmra, truth.star_pmdec = sra, sdec, pmra, pmdec
    parts, images = [], []
    for v in range(n_visits):
        mjd = mjd0 + visit_spacing_days * v
        dt = (mjd - ref_epoch) / 365.25
        ra_v = sra + pmra * dt / 3.6e6 / np.cos(np.radians(sdec))
        dec_v = sdec + pmdec * dt / 3.6e6
        eps = rng.uniform(-rotation_error, rotation_error)
        perr = rng.uniform(-pointing_error, pointing_error, 2)
        fx_all, fy_all = truth.sky_to_focal(v, ra_v, dec_v)
        for c in layout:
            # cheap box cut in the focal plane before the exact pixel transform
            near = np.nonzero((np.abs(fx_all - layout[c][0]) < 0.6 * max(w, h)) &
                              (np.abs(fy_all - layout[c][1]) < 0.6 * max(w, h)))[0]
            x, y = truth.focal_to_pixel(c, fx_all[near], fy_all[near])
            on = (x > 5) & (x < nx - 6) & (y > 5) & (y < ny - 6)
            x, y, f = x[on], y[on], flux_njy[near[on]]
            counts = f / truth.calibration(v, c, x, y)
            ferr = np.sqrt(counts + 2000.0)
            snr = counts / ferr
            sig = np.hypot(1.5 / snr, centroid_floor)
            n = len(x)
            parts.append(Detections(np.full(n, v), np.full(n, c),
                                    x + rng.normal(0, 1, n) * sig,
                                    y + rng.normal(0, 1, n) * sig, sig, sig,
                                    counts + rng.normal(0, 1, n) * ferr, ferr))
            images.append(CcdImage(v, c, _header_wcs(truth, v, c, perr, eps,
                                                    header_distortion), nx, ny, mjd,
                                   "r"))
    det = Detections.concatenate(parts)
    inref = rng.random(n_stars) < ref_fraction
    ref_sig = 2.0  # mas
    rra = sra[inref] + rng.normal(0, ref_sig, inref.sum()) / 3.6e6 / np.cos(
        np.radians(sdec[inref]))
    rdec = sdec[inref] + rng.normal(0, ref_sig, inref.sum()) / 3.6e6
    rflux = flux_njy[inref] * (1 + rng.normal(0, 0.01, inref.sum()))
    m = inref.sum()
    refcat = RefCatalog(rra, rdec, np.full(m, ref_sig), np.full(m, ref_sig), pmra[inref],
                        pmdec[inref], rflux, 0.01 * rflux, ref_epoch)
    return det, images, refcat, truth


def _header_wcs(truth, visit, ccd, pointing_error, rotation_deg, distortion=True):
    """Linear TAN WCS of the truth at the CCD centre, spoiled per visit; without
    ``distortion`` the header ignores the optical distortion (raw telescope headers)."""
    if not distortion:
        import dataclasses

        truth = dataclasses.replace(truth, k=0.0)
    cx, cy = truth.nx / 2, truth.ny / 2
    ra0, dec0 = truth.pixel_to_sky(visit, ccd, np.array([cx]), np.array([cy]))
    d = 1.0
    pts = truth.pixel_to_sky(visit, ccd, np.array([cx + d, cx, cx]),
                             np.array([cy, cy + d, cy]))
    xi, eta = project(pts[0], pts[1], float(ra0[0]), float(dec0[0]))
    cd = np.array([[xi[0] - xi[2], xi[1] - xi[2]], [eta[0] - eta[2], eta[1] - eta[2]]])
    cd /= 3600.0 * d
    # spoil: rotate about the visit pointing and shift
    th = np.radians(rotation_deg)
    R = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
    px, py = project(ra0, dec0, *truth.pointing[visit])
    q = R @ np.array([px[0], py[0]]) + pointing_error
    ra1, dec1 = deproject(q[0], q[1], *truth.pointing[visit])
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [float(ra1), float(dec1)]
    w.wcs.crpix = [cx + 1, cy + 1]
    w.wcs.cd = R @ cd
    return w
