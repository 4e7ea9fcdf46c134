"""The simulated camera's geometry: CCD layout, pixel ↔ focal plane ↔ sky.

The true mapping of pixel ``(x, y)`` (0-based) of CCD ``c`` in visit ``v`` to the sky
(docs/simulator.md states the same formula)::

    d     = (x - (nx-1)/2,  y - (ny-1)/2)
    (fx, fy) = (fx0_c, fy0_c) + R(theta_c) d                focal plane, pixels
    (u, v)   = s (fx, fy),  s = pixel_scale / 3600          field angle, deg
    (u', v') = (u, v) (1 + k1 r^2),  r^2 = u^2 + v^2         radial distortion
    (p, q)   = R(phi_v) (u', v')                             rotator angle
    (xi, eta) = (-p, q)                                      east, north (deg)
    (ra, dec) = gnomonic deprojection of (xi, eta) about (ra_v, dec_v)

with ``R(a) = [[cos a, -sin a], [sin a, cos a]]``. The header WCS is the same chain
without distortion, with erroneous ``ra_v, dec_v, phi_v, fx0_c, fy0_c, theta_c``: a pure
TAN WCS.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from astropy.wcs import WCS

#: Full-size HSC CCD (pixels) used for the 104-CCD layout of catalog-only mode.
HSC_NX, HSC_NY = 2048, 4176


def rot(a):
    """Rotation matrix R(a) (a in radians)."""
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s], [s, c]])


def layout_centres(n_ccds: int, nx: int, ny: int, gap_x: int, gap_y: int) -> np.ndarray:
    """Focal-plane centres (pixels) of the ``n_ccds`` CCDs nearest the optical axis.

    CCDs sit on a grid of columns and rows (HSC's long axis along y); they are ranked
    by the focal-plane radius of their farthest corner (ties by position), so 104 CCDs
    fill a disk as HSC's do.
    """
    px, py = nx + gap_x, ny + gap_y
    ncol = 2 * int(np.ceil(np.sqrt(n_ccds) * 1.5)) + 2
    nrow = 2 * int(np.ceil(np.sqrt(n_ccds) * 1.5 * px / py)) + 2
    ix = np.arange(ncol) - (ncol - 1) / 2
    iy = np.arange(nrow) - (nrow - 1) / 2
    cx, cy = np.meshgrid(ix * px, iy * py)
    cx, cy = cx.ravel(), cy.ravel()
    far = np.hypot(np.abs(cx) + nx / 2, np.abs(cy) + ny / 2)
    order = np.lexsort((cx, -cy, np.round(far, 3)))[:n_ccds]
    # number CCDs row by row (top to bottom, left to right), as a camera map reads
    sel = order[np.lexsort((cx[order], -cy[order]))]
    return np.column_stack([cx[sel], cy[sel]])


@dataclass
class Camera:
    """CCD layout and optics shared by all visits (true values and header errors).

    Arrays are indexed like ``ccd`` (ids 0..n-1).
    """

    ccd: np.ndarray
    nx: int
    ny: int
    fx0: np.ndarray          # true focal-plane centre (pixels)
    fy0: np.ndarray
    theta: np.ndarray        # true rotation (rad)
    qe: np.ndarray           # per-CCD calibration factor Q_c
    hdr_dfx: np.ndarray      # header placement errors (pixels, rad)
    hdr_dfy: np.ndarray
    hdr_dtheta: np.ndarray
    pixel_scale: float       # arcsec / pixel
    k1: float                # distortion (deg^-2)
    fp_radius: float         # focal-plane radius (pixels): the farthest CCD corner
    bad_columns: list = None  # per CCD: list of [x, y_start, kind] (kind hot|dead)

    def index(self, ccd: int) -> int:
        """Array index of CCD id ``ccd``."""
        i = np.flatnonzero(self.ccd == int(ccd))
        if i.size == 0:
            raise KeyError(f"ccd {ccd} is not simulated (ccds {self.ccd.min()}.."
                           f"{self.ccd.max()})")
        return int(i[0])

    def ccdname(self, ccd: int) -> str:
        """A name like HSC's (``1_<ccd>``)."""
        return f"1_{int(ccd):02d}"

    # --- pixel <-> focal plane ------------------------------------------------------
    def to_focal(self, ccd, x, y, header=False):
        """Focal-plane pixels ``(fx, fy)`` of CCD pixels (true, or the header's model)."""
        i = self.index(ccd)
        th = self.theta[i] + (self.hdr_dtheta[i] if header else 0.0)
        f0x = self.fx0[i] + (self.hdr_dfx[i] if header else 0.0)
        f0y = self.fy0[i] + (self.hdr_dfy[i] if header else 0.0)
        dx = np.asarray(x, float) - (self.nx - 1) / 2
        dy = np.asarray(y, float) - (self.ny - 1) / 2
        c, s = np.cos(th), np.sin(th)
        return f0x + c * dx - s * dy, f0y + s * dx + c * dy

    def from_focal(self, ccd, fx, fy):
        """CCD pixels of focal-plane pixels (true model)."""
        i = self.index(ccd)
        c, s = np.cos(self.theta[i]), np.sin(self.theta[i])
        ex = np.asarray(fx, float) - self.fx0[i]
        ey = np.asarray(fy, float) - self.fy0[i]
        return (c * ex + s * ey + (self.nx - 1) / 2, -s * ex + c * ey + (self.ny - 1) / 2)


# --- distortion and projection -------------------------------------------------------
def distort(u, v, k1):
    """Apply the radial distortion to field angles (deg)."""
    f = 1.0 + k1 * (u * u + v * v)
    return u * f, v * f


def undistort(up, vp, k1):
    """Invert :func:`distort` (Newton iterations on the radius)."""
    up, vp = np.asarray(up, float), np.asarray(vp, float)
    rp = np.hypot(up, vp)
    r = rp.copy()
    for _ in range(8):
        g = r + k1 * r ** 3 - rp
        r = r - g / (1.0 + 3.0 * k1 * r * r)
    with np.errstate(invalid="ignore", divide="ignore"):
        scale = np.where(rp > 0, r / np.where(rp > 0, rp, 1.0), 1.0)
    return up * scale, vp * scale


def tangent_to_sky(xi, eta, ra0, dec0):
    """Gnomonic deprojection: standard coordinates (deg, xi east) → RA, Dec (deg)."""
    xi, eta = np.radians(xi), np.radians(eta)
    a0, d0 = np.radians(ra0), np.radians(dec0)
    den = np.cos(d0) - eta * np.sin(d0)
    ra = a0 + np.arctan2(xi, den)
    dec = np.arctan2(np.sin(d0) + eta * np.cos(d0), np.hypot(xi, den))
    return np.mod(np.degrees(ra), 360.0), np.degrees(dec)


def sky_to_tangent(ra, dec, ra0, dec0):
    """Gnomonic projection: RA, Dec (deg) → standard coordinates (deg, xi east)."""
    a, d = np.radians(ra), np.radians(dec)
    a0, d0 = np.radians(ra0), np.radians(dec0)
    cosc = np.sin(d0) * np.sin(d) + np.cos(d0) * np.cos(d) * np.cos(a - a0)
    xi = np.cos(d) * np.sin(a - a0) / cosc
    eta = (np.cos(d0) * np.sin(d) - np.sin(d0) * np.cos(d) * np.cos(a - a0)) / cosc
    return np.degrees(xi), np.degrees(eta)


def focal_to_sky(fx, fy, pixel_scale, k1, phi_deg, ra0, dec0):
    """Focal-plane pixels → RA, Dec through distortion, rotator angle and projection."""
    s = pixel_scale / 3600.0
    up, vp = distort(np.asarray(fx, float) * s, np.asarray(fy, float) * s, k1)
    c, sn = np.cos(np.radians(phi_deg)), np.sin(np.radians(phi_deg))
    p, q = c * up - sn * vp, sn * up + c * vp
    return tangent_to_sky(-p, q, ra0, dec0)


def sky_to_focal(ra, dec, pixel_scale, k1, phi_deg, ra0, dec0):
    """Inverse of :func:`focal_to_sky`."""
    xi, eta = sky_to_tangent(ra, dec, ra0, dec0)
    p, q = -xi, eta
    c, sn = np.cos(np.radians(phi_deg)), np.sin(np.radians(phi_deg))
    up, vp = c * p + sn * q, -sn * p + c * q
    u, v = undistort(up, vp, k1)
    s = pixel_scale / 3600.0
    return u / s, v / s


def tan_wcs(camera: Camera, ccd: int, ra0: float, dec0: float, phi_deg: float) -> WCS:
    """The header TAN WCS of one CCD: the true chain without distortion, using the
    header's CCD placement and the given (erroneous) pointing and rotator angle."""
    i = camera.index(ccd)
    th = camera.theta[i] + camera.hdr_dtheta[i]
    f0 = np.array([camera.fx0[i] + camera.hdr_dfx[i], camera.fy0[i] + camera.hdr_dfy[i]])
    s = camera.pixel_scale / 3600.0
    flip = np.diag([-1.0, 1.0])
    cd = s * flip @ rot(np.radians(phi_deg) + th)
    centre = np.array([(camera.nx - 1) / 2, (camera.ny - 1) / 2])
    crpix0 = centre - rot(-th) @ f0
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [float(np.mod(ra0, 360.0)), float(dec0)]
    w.wcs.crpix = crpix0 + 1.0
    w.wcs.cd = cd
    w.wcs.radesys = "ICRS"
    w.wcs.equinox = 2000.0
    w.pixel_shape = (camera.nx, camera.ny)
    return w


def draw_bad_columns(n, nx, ny, fraction, rng) -> list:
    """Per CCD, 1–2 bad columns on a ``fraction`` of the CCDs: ``[x, y_start, kind]``
    (from ``y_start`` to the top; ``hot`` adds 3000 ADU, ``dead`` keeps 20 %)."""
    out = []
    for _ in range(n):
        cols = []
        if rng.uniform() < fraction:
            for _ in range(int(rng.integers(1, 3))):
                start = 0 if rng.uniform() < 0.5 else int(rng.integers(0, ny // 2))
                cols.append([int(rng.integers(5, nx - 5)), start,
                             "hot" if rng.uniform() < 0.5 else "dead"])
        out.append(cols)
    return out


def make_camera(n_ccds, nx, ny, gap_x, gap_y, pixel_scale, rotation_rms_deg, qe_scatter,
                placement_error_px, distortion_arcsec, distortion_radius_deg,
                rng: np.random.Generator, bad_column_fraction: float = 0.0) -> Camera:
    """Draw a camera: layout, small true CCD rotations, QE factors and header errors."""
    centres = layout_centres(n_ccds, nx, ny, gap_x, gap_y)
    n = len(centres)
    theta = np.radians(rng.normal(0.0, rotation_rms_deg, n)) if rotation_rms_deg else \
        np.zeros(n)
    qe = 1.0 + rng.normal(0.0, qe_scatter, n)
    e = placement_error_px
    dfx, dfy = rng.uniform(-e, e, n), rng.uniform(-e, e, n)
    # a CCD rotation error moves its far end by about the placement error
    dth = rng.uniform(-e, e, n) / (0.5 * max(nx, ny))
    far = np.hypot(np.abs(centres[:, 0]) + nx / 2, np.abs(centres[:, 1]) + ny / 2).max()
    k1 = (distortion_arcsec / 3600.0) / distortion_radius_deg ** 3
    return Camera(ccd=np.arange(n), nx=int(nx), ny=int(ny), fx0=centres[:, 0].copy(),
                  fy0=centres[:, 1].copy(), theta=theta, qe=qe, hdr_dfx=dfx, hdr_dfy=dfy,
                  hdr_dtheta=dth, pixel_scale=float(pixel_scale), k1=float(k1),
                  fp_radius=float(far),
                  bad_columns=draw_bad_columns(n, nx, ny, bad_column_fraction, rng))
