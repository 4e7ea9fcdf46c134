"""Quality metrics of a fit, with LSST jointcal's metric names.

Astrometric RMS (mas): fitted position of each kept measurement against its reference
star at the visit epoch (``astrometry_rms_ref``) and against its fitted star
(``astrometry_rms_internal``). Photometric repeatability (mmag): RMS of -2.5 log10 of
each calibrated flux over its star's fitted flux. Totals, per visit and per CCD.
"""
from __future__ import annotations

import numpy as np

MMAG = 2.5 / np.log(10) * 1000.0


def _rms_by(key, values, mask):
    out = {}
    for k in np.unique(key[mask]):
        s = mask & (key == k)
        out[int(k)] = round(float(np.sqrt(np.mean(values[s] ** 2))), 3)
    return out


def compute_metrics(res) -> dict:
    """The metrics dictionary of a :class:`~.solver.JointcalResult`."""
    m = res.meas
    out = dict(res.counts)
    visit = np.array([res.images[g].visit for g in range(len(res.images))])[m.img]
    ccd = np.array([res.images[g].ccd for g in range(len(res.images))])[m.img]
    if res.astro_fit is not None:
        out["astrometry_final_chi2"] = float(res.astro_fit.chi2)
        out["astrometry_final_ndof"] = int(res.astro_fit.ndof)
        xi, eta = res.astro_model.evaluate(res.astro_theta, m.img, m.u, m.v)
        n = len(res.stars_xy) // 2
        k = m.star
        act = res.astro_active
        ri = res.ref_index[k]
        has = act & (ri >= 0)
        pmx = res.refcat.pm_ra / 1000.0
        pmy = res.refcat.pm_dec / 1000.0
        rj = np.maximum(ri, 0)
        d_ref = np.hypot(xi - res.ref_xi[rj] - pmx[rj] * m.dt,
                         eta - res.ref_eta[rj] - pmy[rj] * m.dt) * 1000.0
        # internal: against the fitted star moved by its proper motion (fitted, or the
        # catalog's, or none)
        spx, spy = res.stars_pm[:n][k], res.stars_pm[n:][k]
        d_int = np.hypot(xi - res.stars_xy[k] - spx * m.dt,
                         eta - res.stars_xy[n + k] - spy * m.dt) * 1000.0
        out["astrometry_rms_ref_mas"] = round(float(np.sqrt(np.mean(d_ref[has] ** 2))), 3)
        out["astrometry_rms_internal_mas"] = round(float(np.sqrt(np.mean(d_int[act] ** 2))),
                                                   3)
        out["astrometry_rms_ref_mas_per_visit"] = _rms_by(visit, d_ref, has)
        out["astrometry_rms_ref_mas_per_ccd"] = _rms_by(ccd, d_ref, has)
        out["astrometry_rms_internal_mas_per_visit"] = _rms_by(visit, d_int, act)
        out["astrometry_rms_internal_mas_per_ccd"] = _rms_by(ccd, d_int, act)
        out["astrometry_outliers"] = int((~act).sum())
    if res.photo_fit is not None:
        out["photometry_final_chi2"] = float(res.photo_fit.chi2)
        out["photometry_final_ndof"] = int(res.photo_fit.ndof)
        calib, _, _ = res.photo_model.derivatives(res.photo_theta, m.img, m.u, m.v)
        act = res.photo_active & (res.stars_flux[m.star] > 0)
        dm = np.zeros(len(m.img))
        dm[act] = MMAG * np.log(m.flux[act] * calib[act] / res.stars_flux[m.star][act])
        out["photometry_repeatability_mmag"] = round(float(np.sqrt(np.mean(dm[act] ** 2))),
                                                     3)
        out["photometry_repeatability_mmag_per_visit"] = _rms_by(visit, dm, act)
        out["photometry_repeatability_mmag_per_ccd"] = _rms_by(ccd, dm, act)
        out["photometry_outliers"] = int((~res.photo_active).sum())
    # LSST's names: the final chi2/ndof of the last fit made (photometry if done)
    last = res.photo_fit or res.astro_fit
    if last is not None:
        out["final_chi2"] = float(last.chi2)
        out["final_ndof"] = int(last.ndof)
    out["dropped_ccdImages"] = {f"{v}-{c}": r for (v, c), r in sorted(res.dropped.items())}
    return out
