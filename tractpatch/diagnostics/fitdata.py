"""The plain data a joint calibration fit hands to the diagnostics writer.

Both solvers (jointcal.py and mosaic.py) fill one :class:`FitDiagnostics` per tract and
filter after their fit; :func:`tractpatch.diagnostics.writer.write_diagnostics` turns it into
the PNGs, .dat files, ``catalog.fits`` and ``index.html`` without any model code. The
focal-plane maps (flux correction, relative pixel area) arrive already sampled on a grid.

:func:`build_fit_diagnostics` builds the structure from simple arrays and callables (it
derives the CCD outlines, the per-star means, the internal magnitude residuals and samples
the maps), which is what a solver normally calls.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np

from ..errors import UserError

#: milliarcseconds per degree
MAS_PER_DEG = 3.6e6


@dataclass
class FitDiagnostics:
    """Everything the diagnostics writer draws, as numpy arrays.

    Coordinates. The *focal plane* is the visit's tangent plane about its pointing,
    de-rotated into the camera frame (the frame of the CCD layout, shared by all visits),
    in **degrees** on the sky (1 deg of focal plane is 1 deg of sky at the optical axis;
    use the mean pixel scale to go from millimetres). The astrometric residuals ``dx``,
    ``dy`` are the components along the same ``fx``, ``fy`` axes, in **milliarcseconds**,
    measured minus model.

    Attributes
    ----------
    solver : str
        ``"jointcal"`` or ``"mosaic"`` (appears in every title).
    tract : int
        Tract ID.
    filter : str
        Filter name of the fit.

    visit, ccd : ndarray of int64, shape (n,)
        Per measurement (one detection of a fitted star in one CCD of one visit): its
        visit and CCD IDs.
    star : ndarray of int64, shape (n,)
        Index of the measured star into the per-star arrays (``0 <= star < n_stars``).
    x, y : ndarray of float64, shape (n,)
        0-based CCD pixel position (pix).
    fx, fy : ndarray of float64, shape (n,)
        Focal-plane position (deg), see above.
    dx, dy : ndarray of float64, shape (n,)
        Astrometric residual along the focal-plane axes (mas), measured minus model.
    is_ref : ndarray of bool, shape (n,)
        True when the star is matched to the reference catalog.
    rejected : ndarray of bool, shape (n,)
        True when the fit rejected the measurement as an outlier (drawn in no residual
        plot and left out of the statistics, but written to dmag.dat/dpos.dat).
    mag : ndarray of float64, shape (n,)
        Calibrated magnitude of the measurement (AB mag).
    dmag : ndarray of float64, shape (n,)
        Magnitude residual (mag): measured calibrated magnitude minus the reference
        magnitude for reference-matched stars, minus the star's mean over its (not rejected)
        measurements otherwise.
    mag_err : ndarray of float64, shape (n,)
        Magnitude error of the measurement (mag).

    ccd_id : ndarray of int64, shape (n_ccd,)
        Per CCD: its ID.
    ccd_fx, ccd_fy : ndarray of float64, shape (n_ccd,)
        CCD centre on the focal plane (deg).
    ccd_angle : ndarray of float64, shape (n_ccd,)
        Rotation of the CCD's pixel x axis from the focal-plane fx axis, counter-clockwise
        (deg).
    ccd_corners : ndarray of float64, shape (n_ccd, 4, 2)
        Outline of each CCD, four (fx, fy) corners in order around the CCD (deg).
    ccd_scale : ndarray of float64, shape (n_ccd,)
        The per-CCD constant of the photometric model (dimensionless multiplier of the
        calibration; 1 = nominal).

    visit_id : ndarray of int64, shape (n_visit,)
        Per visit: its ID.
    visit_filter : list of str, length n_visit
        Filter of each visit.
    visit_scale : ndarray of float64, shape (n_visit,)
        Per-visit flux scale of the photometric model (dimensionless multiplier).
    grid_fx : ndarray of float64, shape (n_gx,)
        Focal-plane fx of the sampling grid columns (deg, increasing, regular).
    grid_fy : ndarray of float64, shape (n_gy,)
        Focal-plane fy of the sampling grid rows (deg, increasing, regular).
    flux_corr : ndarray of float64, shape (n_visit, n_gy, n_gx)
        The visit's fitted flux correction at each grid point: the dimensionless factor of
        the photometric model that varies over the focal plane, *without* the per-visit and
        per-CCD constants, as applied to counts measured on flat-fielded pixels (so it
        contains the pixel-area pattern of the distortion); NaN outside the camera.
    pixel_area : ndarray of float64, shape (n_visit, n_gy, n_gx)
        Relative pixel area of the visit's distortion model at each grid point: the
        Jacobian determinant of the pixel -> sky map divided by its value at the focal-plane
        centre (dimensionless); NaN outside the camera.
    coeffs : list of dict, length n_visit
        Per visit, the model coefficients by name (``name -> 1-d array``), e.g.
        ``{"astrometry": a, "photometry": c}``.

    star_ra, star_dec : ndarray of float64, shape (n_star,)
        Per fitted star: mean position (deg, ICRS).
    star_mag, star_mag_err : ndarray of float64, shape (n_star,)
        Mean calibrated magnitude and its error (AB mag).
    star_nobs : ndarray of int64, shape (n_star,)
        Number of (not rejected) measurements of the star.

    extra : dict, optional
        Scalar facts of the fit to show on the index page (``name -> number or str``, e.g.
        ``{"chi2/ndof": 1.03, "iterations": 7}``).
    """

    solver: str
    tract: int
    filter: str
    # per measurement
    visit: np.ndarray
    ccd: np.ndarray
    star: np.ndarray
    x: np.ndarray
    y: np.ndarray
    fx: np.ndarray
    fy: np.ndarray
    dx: np.ndarray
    dy: np.ndarray
    is_ref: np.ndarray
    rejected: np.ndarray
    mag: np.ndarray
    dmag: np.ndarray
    mag_err: np.ndarray
    # per CCD
    ccd_id: np.ndarray
    ccd_fx: np.ndarray
    ccd_fy: np.ndarray
    ccd_angle: np.ndarray
    ccd_corners: np.ndarray
    ccd_scale: np.ndarray
    # per visit
    visit_id: np.ndarray
    visit_filter: list
    visit_scale: np.ndarray
    grid_fx: np.ndarray
    grid_fy: np.ndarray
    flux_corr: np.ndarray
    pixel_area: np.ndarray
    coeffs: list
    # per star
    star_ra: np.ndarray
    star_dec: np.ndarray
    star_mag: np.ndarray
    star_mag_err: np.ndarray
    star_nobs: np.ndarray
    extra: dict = field(default_factory=dict)

    _INT_MEAS = ("visit", "ccd", "star")
    _FLOAT_MEAS = ("x", "y", "fx", "fy", "dx", "dy", "mag", "dmag", "mag_err")
    _BOOL_MEAS = ("is_ref", "rejected")

    def __post_init__(self):
        self._coerce()
        self.validate()

    @property
    def label(self) -> str:
        """``"<solver> tract <tract> filter <filter>"`` for titles."""
        return f"{self.solver} tract {self.tract} filter {self.filter}"

    @property
    def n_meas(self) -> int:
        return int(self.visit.size)

    def _coerce(self):
        for k in self._INT_MEAS + ("ccd_id", "visit_id", "star_nobs"):
            setattr(self, k, np.asarray(getattr(self, k)).astype(np.int64, copy=False))
        for k in self._FLOAT_MEAS + ("ccd_fx", "ccd_fy", "ccd_angle", "ccd_corners",
                                      "ccd_scale", "visit_scale", "grid_fx", "grid_fy",
                                      "flux_corr", "pixel_area", "star_ra", "star_dec",
                                      "star_mag", "star_mag_err"):
            setattr(self, k, np.asarray(getattr(self, k), dtype=np.float64))
        for k in self._BOOL_MEAS:
            setattr(self, k, np.asarray(getattr(self, k), dtype=bool))
        self.visit_filter = [str(f) for f in self.visit_filter]
        self.coeffs = [{str(n): np.atleast_1d(np.asarray(v, dtype=np.float64))
                        for n, v in dict(c).items()} for c in self.coeffs]

    def validate(self) -> None:
        """Check shapes and cross references; raise a one-line UserError naming the field."""
        where = f"diagnostics of {self.label}"
        n = self.visit.size
        for k in self._INT_MEAS + self._FLOAT_MEAS + self._BOOL_MEAS:
            if getattr(self, k).shape != (n,):
                raise UserError(f"{where}: per-measurement array {k!r} has shape "
                                f"{getattr(self, k).shape}, expected ({n},); give every "
                                "measurement array the same length")
        nc = self.ccd_id.size
        for k in ("ccd_fx", "ccd_fy", "ccd_angle", "ccd_scale"):
            if getattr(self, k).shape != (nc,):
                raise UserError(f"{where}: per-CCD array {k!r} must have shape ({nc},)")
        if self.ccd_corners.shape != (nc, 4, 2):
            raise UserError(f"{where}: ccd_corners must have shape ({nc}, 4, 2) (deg)")
        nv = self.visit_id.size
        grid = (nv, self.grid_fy.size, self.grid_fx.size)
        if self.visit_scale.shape != (nv,) or len(self.visit_filter) != nv \
                or len(self.coeffs) != nv:
            raise UserError(f"{where}: visit_scale, visit_filter and coeffs need one entry "
                            f"per visit ({nv})")
        for k in ("flux_corr", "pixel_area"):
            if getattr(self, k).shape != grid:
                raise UserError(f"{where}: {k} has shape {getattr(self, k).shape}, expected "
                                f"(n_visit, n_gy, n_gx) = {grid}")
        ns = self.star_ra.size
        for k in ("star_dec", "star_mag", "star_mag_err", "star_nobs"):
            if getattr(self, k).shape != (ns,):
                raise UserError(f"{where}: per-star array {k!r} must have shape ({ns},)")
        if n and (self.star.min() < 0 or self.star.max() >= ns):
            raise UserError(f"{where}: star indices must lie in 0..{ns - 1}")
        unknown = np.setdiff1d(self.ccd, self.ccd_id)
        if unknown.size:
            raise UserError(f"{where}: measurements on CCDs {unknown[:5].tolist()} that are "
                            "not in ccd_id; list every CCD of the fit")
        unknown = np.setdiff1d(self.visit, self.visit_id)
        if unknown.size:
            raise UserError(f"{where}: measurements in visits {unknown[:5].tolist()} that "
                            "are not in visit_id; list every visit of the fit")

    def ccd_index(self) -> np.ndarray:
        """Index into the per-CCD arrays of every measurement."""
        order = np.argsort(self.ccd_id)
        return order[np.searchsorted(self.ccd_id, self.ccd, sorter=order)]

    def visit_index(self) -> np.ndarray:
        """Index into the per-visit arrays of every measurement."""
        order = np.argsort(self.visit_id)
        return order[np.searchsorted(self.visit_id, self.visit, sorter=order)]


def ccd_outline(center_fx, center_fy, angle_deg, width_deg, height_deg) -> np.ndarray:
    """Corners (n, 4, 2) of rectangular CCDs on the focal plane (deg).

    Parameters
    ----------
    center_fx, center_fy : array_like
        CCD centres (deg).
    angle_deg : array_like
        Rotation of each CCD's x axis from fx, counter-clockwise (deg).
    width_deg, height_deg : array_like
        CCD extent along its own x and y axes (deg): ``nx * pixel_scale``.
    """
    cx, cy, a, w, h = np.broadcast_arrays(*(np.asarray(v, float) for v in
                                            (center_fx, center_fy, angle_deg, width_deg,
                                             height_deg)))
    u = np.array([-0.5, 0.5, 0.5, -0.5])[None, :] * w[:, None]
    v = np.array([-0.5, -0.5, 0.5, 0.5])[None, :] * h[:, None]
    c, s = np.cos(np.radians(a))[:, None], np.sin(np.radians(a))[:, None]
    return np.stack([cx[:, None] + c * u - s * v, cy[:, None] + s * u + c * v], axis=-1)


def star_means(star, mag, mag_err, rejected, n_star):
    """Inverse-variance mean magnitude, its error and the count of each star.

    Rejected measurements are left out. Stars without a measurement get NaN and 0.
    """
    ok = ~np.asarray(rejected, bool) & np.isfinite(mag) & (np.asarray(mag_err) > 0)
    w = np.where(ok, 1.0 / np.where(ok, mag_err, 1.0) ** 2, 0.0)
    sw = np.bincount(star, weights=w, minlength=n_star)
    swm = np.bincount(star, weights=w * np.where(ok, mag, 0.0), minlength=n_star)
    nobs = np.bincount(star, weights=ok.astype(float), minlength=n_star).astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(sw > 0, swm / sw, np.nan)
        err = np.where(sw > 0, 1.0 / np.sqrt(sw), np.nan)
    return mean, err, nobs


def build_fit_diagnostics(*, solver: str, tract: int, filter: str,
                          meas: Mapping[str, np.ndarray],
                          ccd_id, ccd_fx, ccd_fy, ccd_angle, ccd_size_deg, ccd_scale,
                          visit_id, visit_scale, coeffs: Mapping[int, Mapping],
                          flux_corr: Callable, pixel_area: Callable,
                          star_ra, star_dec, ref_mag=None, visit_filter=None,
                          grid_n: int = 41, grid_margin: float = 0.02) -> FitDiagnostics:
    """Build :class:`FitDiagnostics` from simple arrays and the fitted maps as callables.

    Parameters
    ----------
    solver, tract, filter : str, int, str
        Label of the fit.
    meas : mapping of str to ndarray
        Per-measurement arrays ``visit, ccd, star, x, y, fx, fy, dx, dy, is_ref, rejected,
        mag, mag_err`` (units as in :class:`FitDiagnostics`); ``dmag`` is optional and
        computed when absent (needs ``ref_mag``).
    ccd_id, ccd_fx, ccd_fy, ccd_angle : array_like
        Per-CCD ID, centre (deg) and rotation (deg, counter-clockwise).
    ccd_size_deg : (width, height) or arrays of them
        CCD extent along its x and y axes (deg) for the outlines.
    ccd_scale : array_like
        Per-CCD photometric constant.
    visit_id, visit_scale : array_like
        Per-visit ID and photometric scale.
    coeffs : mapping visit -> mapping name -> array
        Model coefficients of each visit.
    flux_corr, pixel_area : callable ``(visit, fx, fy) -> ndarray``
        The fitted flux correction and relative pixel area of a visit at focal-plane
        positions (deg); sampled on a ``grid_n`` x ``grid_n`` grid covering the CCD outlines
        (plus ``grid_margin`` of their extent) and set to NaN farther than one grid step
        outside every CCD.
    star_ra, star_dec : array_like
        Per-star mean position (deg); mean magnitudes are computed from the measurements.
    ref_mag : ndarray, optional
        Reference magnitude of each measurement's star (AB; NaN when not matched); used to
        compute ``dmag`` when ``meas`` has none.
    visit_filter : list of str, optional
        Filter of each visit (default ``filter`` for all).
    """
    m = {k: np.asarray(v) for k, v in meas.items()}
    missing = {"visit", "ccd", "star", "x", "y", "fx", "fy", "dx", "dy", "is_ref",
               "rejected", "mag", "mag_err"} - set(m)
    if missing:
        raise UserError(f"diagnostics of {solver} tract {tract}: measurement arrays "
                        f"{sorted(missing)} missing; give them in meas")
    ns = np.asarray(star_ra).size
    star_mag, star_err, nobs = star_means(m["star"].astype(np.int64), m["mag"].astype(float),
                                          m["mag_err"].astype(float), m["rejected"], ns)
    if "dmag" not in m:
        if ref_mag is None:
            raise UserError(f"diagnostics of {solver} tract {tract}: give meas['dmag'] or "
                            "ref_mag to compute the magnitude residuals")
        ref_mag = np.asarray(ref_mag, float)
        internal = m["mag"] - star_mag[m["star"].astype(np.int64)]
        m["dmag"] = np.where(m["is_ref"].astype(bool), m["mag"] - ref_mag, internal)
    w, h = (np.asarray(v, float) for v in ccd_size_deg)
    corners = ccd_outline(ccd_fx, ccd_fy, ccd_angle, w, h)
    gx, gy = focal_grid(corners, grid_n, grid_margin)
    GX, GY = np.meshgrid(gx, gy)
    # keep grid points within one grid step of a CCD, so the gaps between CCDs do not cut
    # holes into the contour plots; NaN only outside the camera
    step = max(gx[1] - gx[0], gy[1] - gy[0]) if grid_n > 1 else 0.0
    grown = ccd_outline(ccd_fx, ccd_fy, ccd_angle, w + 2 * step, h + 2 * step)
    inside = inside_ccds(GX.ravel(), GY.ravel(), grown).reshape(GX.shape)
    visit_id = np.asarray(visit_id, np.int64)
    fc = np.empty((visit_id.size,) + GX.shape)
    pa = np.empty_like(fc)
    for i, v in enumerate(visit_id):  # one vectorised evaluation per visit
        fc[i] = np.where(inside, np.asarray(flux_corr(int(v), GX, GY), float), np.nan)
        pa[i] = np.where(inside, np.asarray(pixel_area(int(v), GX, GY), float), np.nan)
    return FitDiagnostics(
        solver=solver, tract=tract, filter=filter,
        visit=m["visit"], ccd=m["ccd"], star=m["star"], x=m["x"], y=m["y"], fx=m["fx"],
        fy=m["fy"], dx=m["dx"], dy=m["dy"], is_ref=m["is_ref"], rejected=m["rejected"],
        mag=m["mag"], dmag=m["dmag"], mag_err=m["mag_err"],
        ccd_id=ccd_id, ccd_fx=ccd_fx, ccd_fy=ccd_fy, ccd_angle=ccd_angle,
        ccd_corners=corners, ccd_scale=ccd_scale,
        visit_id=visit_id, visit_filter=list(visit_filter or [filter] * visit_id.size),
        visit_scale=visit_scale, grid_fx=gx, grid_fy=gy, flux_corr=fc, pixel_area=pa,
        coeffs=[coeffs[int(v)] for v in visit_id],
        star_ra=star_ra, star_dec=star_dec, star_mag=star_mag, star_mag_err=star_err,
        star_nobs=nobs)


def focal_grid(corners: np.ndarray, n: int = 41, margin: float = 0.02):
    """Regular 1-d grids (fx, fy) in deg covering the CCD outlines plus a margin."""
    lo = corners.reshape(-1, 2).min(axis=0)
    hi = corners.reshape(-1, 2).max(axis=0)
    pad = margin * (hi - lo)
    return np.linspace(lo[0] - pad[0], hi[0] + pad[0], n), \
        np.linspace(lo[1] - pad[1], hi[1] + pad[1], n)


def inside_ccds(fx, fy, corners: np.ndarray) -> np.ndarray:
    """True where focal-plane points (deg) fall inside any CCD outline (convex quads)."""
    fx = np.asarray(fx, float)
    fy = np.asarray(fy, float)
    out = np.zeros(fx.shape, bool)
    for quad in corners:  # one vectorised test per CCD
        nxt = np.roll(quad, -1, axis=0)
        cross = ((nxt[:, 0] - quad[:, 0])[:, None] * (fy.ravel() - quad[:, 1][:, None])
                 - (nxt[:, 1] - quad[:, 1])[:, None] * (fx.ravel() - quad[:, 0][:, None]))
        ins = np.all(cross >= 0, axis=0) | np.all(cross <= 0, axis=0)
        out |= ins.reshape(fx.shape)
    return out
