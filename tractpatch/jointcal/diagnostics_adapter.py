"""A fitted :class:`~.solver.JointcalResult` as the diagnostics writer's FitDiagnostics.

jointcal.py and mosaic.py both call :func:`fit_diagnostics` after their fit (with
``--diagnostics``); the writer (:mod:`tractpatch.diagnostics.writer`) knows no model.

What is taken from the final state of the fit:

- per measurement: its CCD pixel, the focal-plane position (the astrometric model's
  CCD → focal-plane map, arcsec → deg), the astrometric residual measured − model (the
  measurement through the fitted mapping minus its fitted star, proper motion
  included), turned from tangent-plane axes into focal-plane axes by the local
  Jacobian of the visit's mapping (mas), reference-match and rejection flags, the
  calibrated magnitude (fitted nJy/count × counts, AB) and its residual (against the
  reference magnitude where the star has one, else against the star's mean);
- per CCD: centre, rotation and size from the CCD → focal-plane map at the CCD's centre
  and edges, the per-CCD constant of the photometric model;
- per visit: the constant of the flux model at the focal-plane centre (relative to the
  median visit), the flux correction over the focal plane relative to that constant, and
  the relative pixel area: the Jacobian determinant of the visit's focal plane → sky map
  over its value at the focal-plane centre (CCD → focal plane is rigid or affine per
  CCD, so this is the pixel-area pattern of the distortion).

jointcal's ``simple`` models have no focal plane shared by visits: the focal plane is
then each visit's tangent plane about its centre, and the flux correction and pixel
area are flat (1).
"""
from __future__ import annotations

import numpy as np

from ..diagnostics.fitdata import FitDiagnostics, build_fit_diagnostics, star_means
from ..image.photocalib import AB_FLUX_NJY
from .metrics import MMAG
from .photometry_models import chebyshev_basis
from .solver import JointcalResult
from .tangent import deproject

AB_MAG_1NJY = 2.5 * np.log10(AB_FLUX_NJY)
_H = 1e-4  # finite-difference step in normalised CCD coordinates (0.05 pix on 1k pixels)


def _visit_ids(res: JointcalResult):
    visits = sorted({im.visit for im in res.images})
    return visits, {v: k for k, v in enumerate(visits)}


def _to_focal_axes(res, img, u, v, dxi, deta):
    """Tangent-plane displacements (any unit) expressed along the focal-plane axes."""
    def both(du, dv):
        x, e = res.astro_model.evaluate(res.astro_theta, img, u + du, v + dv)
        fx, fy = res.focal(img, u + du, v + dv)
        return np.array([x, e]), np.array([fx, fy])

    (s_pu, f_pu), (s_mu, f_mu) = both(_H, 0.0), both(-_H, 0.0)
    (s_pv, f_pv), (s_mv, f_mv) = both(0.0, _H), both(0.0, -_H)
    # columns d/du, d/dv of the sky (S) and focal-plane (F) maps, per measurement
    S = np.stack([s_pu - s_mu, s_pv - s_mv], axis=-1).transpose(1, 0, 2)  # (n, 2, 2)
    F = np.stack([f_pu - f_mu, f_pv - f_mv], axis=-1).transpose(1, 0, 2)
    d = np.stack([dxi, deta], axis=-1)[..., None]
    out = F @ np.linalg.solve(S, d)  # df = F S^-1 dxi
    return out[:, 0, 0], out[:, 1, 0]


def _calibration(res, img, u, v):
    if res.photo_model is None:
        return np.ones(len(img))
    c, _, _ = res.photo_model.derivatives(res.photo_theta, img, u, v)
    return c


def fit_diagnostics(res: JointcalResult, solver: str, tract: int,
                    filter_name: str, grid_n: int = 41) -> FitDiagnostics:
    """The diagnostics of a finished fit (see the module docstring)."""
    m = res.meas
    n_stars = len(res.stars_xy) // 2
    visits, vindex = _visit_ids(res)
    im_visit = np.array([im.visit for im in res.images])
    im_ccd = np.array([im.ccd for im in res.images])
    nx = np.array([im.nx for im in res.images], float)
    ny = np.array([im.ny for im in res.images], float)
    img = m.img
    x = m.u * nx[img] / 2 + nx[img] / 2 - 0.5
    y = m.v * ny[img] / 2 + ny[img] / 2 - 0.5
    fx, fy = res.focal(img, m.u, m.v)
    # astrometric residuals: measured (through the fit) minus model (the fitted star)
    xi, eta = res.astro_model.evaluate(res.astro_theta, img, m.u, m.v)
    ri = res.ref_index[m.star]
    rj = np.maximum(ri, 0)
    pmx, pmy = res.stars_pm[:n_stars][m.star], res.stars_pm[n_stars:][m.star]
    dxi = xi - res.stars_xy[m.star] - pmx * m.dt
    deta = eta - res.stars_xy[n_stars + m.star] - pmy * m.dt
    dx, dy = _to_focal_axes(res, img, m.u, m.v, dxi * 1000.0, deta * 1000.0)
    rejected = ~res.astro_active.copy()
    if res.photo_active is not None:
        rejected |= ~res.photo_active
    # photometry
    calib = _calibration(res, img, m.u, m.v)
    with np.errstate(divide="ignore", invalid="ignore"):
        mag = -2.5 * np.log10(m.flux * calib) + AB_MAG_1NJY
        mag_err = MMAG / 1000.0 * m.flux_err / m.flux
        ref_flux = np.where(ri >= 0, res.refcat.flux[rj], np.nan)
        ref_mag = -2.5 * np.log10(ref_flux) + AB_MAG_1NJY
    star_mag, _, _ = star_means(m.star, mag, mag_err, rejected, n_stars)
    has_ref_mag = np.isfinite(ref_mag)
    dmag = np.where(has_ref_mag, mag - ref_mag, mag - star_mag[m.star])
    meas = dict(visit=im_visit[img], ccd=im_ccd[img], star=m.star, x=x, y=y,
                fx=fx / 3600.0, fy=fy / 3600.0, dx=dx, dy=dy, is_ref=ri >= 0,
                rejected=rejected, mag=mag, mag_err=mag_err, dmag=dmag)
    # per CCD, from the first image of each
    ccd_ids = sorted(set(im_ccd.tolist()))
    first = np.array([int(np.nonzero(im_ccd == c)[0][0]) for c in ccd_ids])
    one = np.ones(len(first))
    cx, cy = res.focal(first, 0 * one, 0 * one)
    pu = np.array(res.focal(first, one, 0 * one)) - np.array(res.focal(first, -one, 0 * one))
    pv = np.array(res.focal(first, 0 * one, one)) - np.array(res.focal(first, 0 * one, -one))
    angle = np.degrees(np.arctan2(pu[1], pu[0]))
    size = (np.hypot(*pu) / 3600.0, np.hypot(*pv) / 3600.0)
    ccd_scale = _ccd_scale(res, first)
    # per visit
    first_img = {v: int(np.nonzero(im_visit == v)[0][0]) for v in visits}
    vscale, fcorr = _flux_model(res, visits, first_img)
    parea = _pixel_area(res, vindex)
    coeffs = {v: _coefficients(res, vindex[v], im_visit == v) for v in visits}
    sra, sdec = deproject(res.stars_xy[:n_stars], res.stars_xy[n_stars:], *res.tangent)
    diag = build_fit_diagnostics(
        solver=solver, tract=tract, filter=filter_name, meas=meas, ccd_id=ccd_ids,
        ccd_fx=cx / 3600.0, ccd_fy=cy / 3600.0, ccd_angle=angle, ccd_size_deg=size,
        ccd_scale=ccd_scale, visit_id=visits, visit_scale=vscale, coeffs=coeffs,
        flux_corr=fcorr, pixel_area=parea, star_ra=sra, star_dec=sdec, grid_n=grid_n)
    for what, fit in (("astrometry", res.astro_fit), ("photometry", res.photo_fit)):
        if fit is not None:
            diag.extra[f"{what} chi2/ndof"] = round(fit.chi2 / max(fit.ndof, 1), 4)
            diag.extra[f"{what} iterations"] = int(fit.n_iter)
    diag.extra["astrometric model"] = f"{res.astro_model.name}, order " \
        f"{getattr(res.astro_model, 'order', '-')}"
    if res.photo_model is not None:
        diag.extra["photometric model"] = f"{res.photo_model.name}, order " \
            f"{getattr(res.photo_model, 'order', 0)}"
    diag.extra["dropped CCD images"] = len(res.dropped)
    return diag


def _ccd_scale(res, first):
    pm = res.photo_model
    if pm is None or not hasattr(pm, "ccd_base"):
        return np.ones(len(first))
    return res.photo_theta[pm.ccd_base + pm.image_ccd[first]]


def _flux_model(res, visits, first_img):
    """Per-visit scale (relative to the median visit) and the flux-correction callable."""
    pm = res.photo_model
    if pm is None or not hasattr(pm, "ccd_base"):
        if pm is None:
            scale = np.ones(len(visits))
        else:  # simple: the median calibration of each visit's CCD images
            iv = np.array([im.visit for im in res.images])
            scale = np.array([np.median(res.photo_theta[iv == v]) for v in visits])
            scale = scale / np.median(scale)
        return scale, lambda visit, fx, fy: np.ones(np.shape(fx))

    def series(k, fx_arcsec, fy_arcsec):
        fx_arcsec, fy_arcsec = np.asarray(fx_arcsec, float), np.asarray(fy_arcsec, float)
        B = chebyshev_basis(fx_arcsec.ravel() / pm.scale, fy_arcsec.ravel() / pm.scale,
                            pm.order)
        c = res.photo_theta[k * pm.nt:(k + 1) * pm.nt]
        return (B @ c).reshape(fx_arcsec.shape)

    centre = np.array([float(series(k, 0.0, 0.0)) for k in range(len(visits))])
    index = {v: k for k, v in enumerate(visits)}

    def flux_corr(visit, fx, fy):
        k = index[visit]
        return series(k, np.asarray(fx) * 3600.0, np.asarray(fy) * 3600.0) / centre[k]

    return centre / np.median(centre), flux_corr


def _pixel_area(res, vindex):
    am = res.astro_model
    if not hasattr(am, "sky_from_focal"):
        return lambda visit, fx, fy: np.ones(np.shape(fx))
    h = 1.0  # arcsec: the series vary on the scale of the focal plane (~1e3 arcsec)

    def det(k, fx, fy):
        ax, ay = am.sky_from_focal(res.astro_theta, k, fx + h, fy)
        bx, by = am.sky_from_focal(res.astro_theta, k, fx - h, fy)
        cx, cy = am.sky_from_focal(res.astro_theta, k, fx, fy + h)
        dx, dy = am.sky_from_focal(res.astro_theta, k, fx, fy - h)
        return ((ax - bx) * (cy - dy) - (ay - by) * (cx - dx)) / (4 * h * h)

    def pixel_area(visit, fx, fy):
        k = vindex[visit]
        fx, fy = np.asarray(fx, float) * 3600.0, np.asarray(fy, float) * 3600.0
        return det(k, fx, fy) / det(k, np.zeros(1), np.zeros(1))[0]

    return pixel_area


def _coefficients(res, k, visit_images):
    out = {}
    am = res.astro_model
    if hasattr(am, "visit_coefficients"):
        out.update({f"astrometry_{n}": c for n, c in
                    am.visit_coefficients(res.astro_theta, k).items()})
    else:  # simple: every CCD image of the visit, in image order
        nt2 = 2 * am.nt
        out["astrometry"] = np.concatenate([res.astro_theta[g * nt2:(g + 1) * nt2]
                                            for g in np.nonzero(visit_images)[0]])
    pm = res.photo_model
    if pm is not None:
        if hasattr(pm, "ccd_base"):
            out["photometry"] = res.photo_theta[k * pm.nt:(k + 1) * pm.nt].copy()
        else:
            out["photometry"] = res.photo_theta[np.nonzero(visit_images)[0]].copy()
    return out
