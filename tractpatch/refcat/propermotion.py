"""Proper-motion propagation of reference-star positions on the sphere.

A star moves along the great circle through its position in the direction of its proper
motion (mu_alpha* = dRA/dt cos(dec), mu_delta) by the angle |mu| * dt. This is what LSST's
``ReferenceObjectLoader.applyProperMotions`` does (an offset along the bearing), and it is
exact for uniform motion on the sky: no tangent-plane approximation, valid at the poles.
Radial velocity and parallax (perspective acceleration) are neglected: below 0.1 mas over
decades except for the nearest stars.
"""
from __future__ import annotations

import numpy as np

MAS_TO_RAD = np.pi / 180.0 / 3600.0e3
DAYS_PER_YEAR = 365.25  # Julian year, as the catalogs' epochs


def propagate(ra_deg, dec_deg, pm_ra, pm_dec, dt_years):
    """Positions after ``dt_years`` of proper motion.

    Parameters
    ----------
    ra_deg, dec_deg : array_like
        Positions at the catalog epoch (deg).
    pm_ra, pm_dec : array_like
        Proper motion in RA*cos(dec) and Dec (mas/yr).
    dt_years : float or array_like
        Target epoch minus catalog epoch (Julian years).

    Returns
    -------
    ra, dec : ndarray
        Positions at the target epoch (deg, RA in [0, 360)).
    """
    ra = np.radians(np.asarray(ra_deg, dtype=float))
    dec = np.radians(np.asarray(dec_deg, dtype=float))
    mu_a = np.asarray(pm_ra, dtype=float) * MAS_TO_RAD
    mu_d = np.asarray(pm_dec, dtype=float) * MAS_TO_RAD
    dt = np.asarray(dt_years, dtype=float)
    sa, ca, sd, cd = np.sin(ra), np.cos(ra), np.sin(dec), np.cos(dec)
    p = np.stack([cd * ca, cd * sa, sd])
    e_a = np.stack([-sa, ca, np.zeros_like(ra)])  # unit vector towards +RA
    e_d = np.stack([-sd * ca, -sd * sa, cd])  # unit vector towards +Dec
    mu = np.hypot(mu_a, mu_d)
    theta = mu * dt
    with np.errstate(invalid="ignore", divide="ignore"):
        ua = np.where(mu > 0, mu_a / mu, 0.0)
        ud = np.where(mu > 0, mu_d / mu, 0.0)
    direction = ua * e_a + ud * e_d
    q = p * np.cos(theta) + direction * np.sin(theta)
    ra_new = np.degrees(np.arctan2(q[1], q[0])) % 360.0
    dec_new = np.degrees(np.arcsin(np.clip(q[2], -1.0, 1.0)))
    return ra_new, dec_new


def propagate_errors(err_mas, pm_err, dt_years):
    """Position error at the target epoch: sqrt(err^2 + (pm_err*dt)^2), in mas.

    Unknown proper-motion errors (NaN) leave the position error unchanged.
    """
    err = np.asarray(err_mas, dtype=float)
    grow = np.asarray(pm_err, dtype=float) * np.asarray(dt_years, dtype=float)
    return np.where(np.isfinite(grow), np.hypot(err, grow), err)
