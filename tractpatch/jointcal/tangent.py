"""Gnomonic (tangent-plane) projection about a fixed point, in arcseconds.

The fit works in one tangent plane per tract: fitted star positions, the per-visit
focal-plane polynomials and the residuals are all expressed as standard coordinates
(xi, eta) in arcsec about the tangent point, where sky distances are Euclidean to
better than 1e-4 relative over a few degrees.
"""
from __future__ import annotations

import numpy as np

ARCSEC = 3600.0


def project(ra, dec, ra0: float, dec0: float):
    """Standard coordinates (xi, eta) in arcsec of (ra, dec) deg about (ra0, dec0) deg."""
    a, d = np.radians(ra), np.radians(dec)
    a0, d0 = np.radians(ra0), np.radians(dec0)
    cosc = np.sin(d0) * np.sin(d) + np.cos(d0) * np.cos(d) * np.cos(a - a0)
    xi = np.cos(d) * np.sin(a - a0) / cosc
    eta = (np.cos(d0) * np.sin(d) - np.sin(d0) * np.cos(d) * np.cos(a - a0)) / cosc
    return np.degrees(xi) * ARCSEC, np.degrees(eta) * ARCSEC


def deproject(xi, eta, ra0: float, dec0: float):
    """Inverse of :func:`project`: (ra, dec) in deg of standard coordinates in arcsec."""
    x = np.radians(np.asarray(xi, float) / ARCSEC)
    y = np.radians(np.asarray(eta, float) / ARCSEC)
    a0, d0 = np.radians(ra0), np.radians(dec0)
    rho = np.hypot(x, y)
    c = np.arctan(rho)
    with np.errstate(invalid="ignore", divide="ignore"):
        dec = np.arcsin(np.cos(c) * np.sin(d0)
                        + np.where(rho > 0, y * np.sin(c) * np.cos(d0) / rho, 0.0))
    ra = a0 + np.arctan2(x * np.sin(c),
                         rho * np.cos(d0) * np.cos(c) - y * np.sin(d0) * np.sin(c))
    return np.mod(np.degrees(ra), 360.0), np.degrees(dec)


def mean_direction(ra, dec):
    """Mean (ra, dec) in deg of a set of directions (unit-vector average)."""
    a, d = np.radians(ra), np.radians(dec)
    v = np.array([np.cos(d) * np.cos(a), np.cos(d) * np.sin(a), np.sin(d)]).sum(axis=1)
    v /= np.linalg.norm(v)
    return float(np.mod(np.degrees(np.arctan2(v[1], v[0])), 360.0)), \
        float(np.degrees(np.arcsin(v[2])))
