"""The two least-squares problems jointcal solves, as residual rows for :mod:`.fitter`.

Astrometry: for each kept measurement, model(x, y) - (star + pm * dt) in xi and eta,
divided by the measurement error; for each reference-matched star, star - reference.
Photometry: measured counts - star flux / calib(x, y) over the count error; star flux -
reference flux over its error.
Star parameters: astrometry ``[xi_0..xi_K-1, eta_0..eta_K-1]`` (arcsec) at the reference
epoch, with proper motions ``[.., mu_xi_0..mu_xi_K-1, mu_eta_0..mu_eta_K-1]`` (arcsec/yr)
appended when they are fitted; photometry ``F_0..F_K-1`` (nJy).

Proper motions (as LSST jointcal's FittedStar and SCAMP's proper-motion solution): only
the stars in ``pm_fit`` get motion parameters (the caller picks stars seen at enough
epochs over a long enough time, so each star's 4 x 4 block stays well conditioned); a
reference-matched one is tied to its catalog motion by a prior of ``pm_sigma``. The
others keep the catalog motion (reference stars) or none: their motion entries are
constants that no row depends on, so the fitter leaves them unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .fitter import Rows


@dataclass
class Measurements:
    """Associated detections as arrays (one row per measurement)."""

    img: np.ndarray      # index into the kept images
    u: np.ndarray        # normalised CCD coordinates
    v: np.ndarray
    star: np.ndarray     # fitted-star index
    dt: np.ndarray       # years from the reference epoch
    sigma: np.ndarray    # astrometric error per coordinate (arcsec)
    flux: np.ndarray     # counts
    flux_err: np.ndarray


class AstrometryProblem:
    """Residual rows of the astrometric fit (see the module docstring)."""

    def __init__(self, model, meas: Measurements, n_stars: int, ref_index, ref_xi, ref_eta,
                 ref_sigma, pm_xi, pm_eta, pm_fit=None, pm_sigma: float = 1e-3):
        self.model, self.meas, self.n_stars = model, meas, n_stars
        self.active = np.ones(len(meas.img), bool)
        self.ref_star = np.nonzero(ref_index >= 0)[0]
        r = ref_index[self.ref_star]
        self.ref_xi, self.ref_eta, self.ref_sigma = ref_xi[r], ref_eta[r], ref_sigma[r]
        self.pm_xi = np.zeros(n_stars)
        self.pm_eta = np.zeros(n_stars)
        self.pm_xi[self.ref_star] = pm_xi[r]
        self.pm_eta[self.ref_star] = pm_eta[r]
        self.pm_fit = None
        if pm_fit is not None and np.any(pm_fit):
            self.pm_fit = np.asarray(pm_fit, bool)
        if self.pm_fit is None:
            self.n_star, self.n_blocks = 2 * n_stars, None
        else:
            # block k = (xi_k, eta_k, mu_xi_k, mu_eta_k): parameter p is in block p % K
            self.n_star, self.n_blocks = 4 * n_stars, n_stars
            self.pm_prior = self.ref_star[self.pm_fit[self.ref_star]]
            self.pm_sigma = float(pm_sigma)

    def initial_stars(self, star_xi, star_eta):
        """Star parameter vector from start positions (catalog or no motion)."""
        parts = [star_xi, star_eta]
        if self.pm_fit is not None:
            parts += [self.pm_xi, self.pm_eta]
        return np.concatenate(parts).astype(float)

    def star_motion(self, stars):
        """(mu_xi, mu_eta) of every star, arcsec/yr: fitted, from the catalog, or 0."""
        if self.pm_fit is None:
            return self.pm_xi, self.pm_eta
        K = self.n_stars
        return stars[2 * K:3 * K], stars[3 * K:]

    def residuals(self, theta, stars, active_only=True):
        """Per-measurement (xi, eta) model minus star, arcsec, and the model derivatives."""
        m = self.meas
        sel = np.nonzero(self.active)[0] if active_only else np.arange(len(m.img))
        xi, eta, ix, dx, ie, de = self.model.derivatives(theta, m.img[sel], m.u[sel],
                                                         m.v[sel])
        k = m.star[sel]
        pmx, pmy = self.star_motion(stars)
        rx = xi - stars[k] - pmx[k] * m.dt[sel]
        ry = eta - stars[self.n_stars + k] - pmy[k] * m.dt[sel]
        return sel, rx, ry, (ix, dx, ie, de)

    def rows(self, theta, stars) -> Rows:
        return self._rows(theta, stars, *self.residuals(theta, stars))

    def star_rows(self, theta, stars) -> Rows:
        """Rows without model derivatives, for a fit of the stars alone (the model's
        derivatives are most of the cost of :meth:`rows`)."""
        m = self.meas
        sel = np.nonzero(self.active)[0]
        xi, eta = self.model.evaluate(theta, m.img[sel], m.u[sel], m.v[sel])
        k = m.star[sel]
        pmx, pmy = self.star_motion(stars)
        rx = xi - stars[k] - pmx[k] * m.dt[sel]
        ry = eta - stars[self.n_stars + k] - pmy[k] * m.dt[sel]
        none = np.full((len(sel), 1), -1)
        zero = np.zeros((len(sel), 1))
        return self._rows(theta, stars, sel, rx, ry, (none, zero, none, zero))

    def _rows(self, theta, stars, sel, rx, ry, derivs) -> Rows:
        ix, dx, ie, de = derivs
        w = 1.0 / self.meas.sigma[sel]
        k = self.meas.star[sel]
        K = self.n_stars
        if self.pm_fit is None:
            meas_x = Rows(ix, dx * w[:, None], k, -w, rx * w)
            meas_y = Rows(ie, de * w[:, None], K + k, -w, ry * w)
        else:
            # each coordinate row depends on the star's position and its motion along
            # that axis (only where the motion is a parameter of that star)
            fit = self.pm_fit[k]
            sval = np.column_stack([-w, np.where(fit, -w * self.meas.dt[sel], 0.0)])
            meas_x = Rows(ix, dx * w[:, None],
                          np.column_stack([k, np.where(fit, 2 * K + k, -1)]), sval, rx * w)
            col_y = np.column_stack([K + k, np.where(fit, 3 * K + k, -1)])
            meas_y = Rows(ie, de * w[:, None], col_y, sval, ry * w)
        s = self.ref_star
        wr = 1.0 / self.ref_sigma
        none = np.full((len(s), 1), -1)
        zero = np.zeros((len(s), 1))
        ref_x = Rows(none, zero, s, wr, (stars[s] - self.ref_xi) * wr)
        ref_y = Rows(none, zero, K + s, wr, (stars[K + s] - self.ref_eta) * wr)
        parts = [meas_x, meas_y, ref_x, ref_y]
        if self.pm_fit is not None and len(self.pm_prior):
            p = self.pm_prior
            wp = np.full(len(p), 1.0 / self.pm_sigma)
            none = np.full((len(p), 1), -1)
            zero = np.zeros((len(p), 1))
            parts += [
                Rows(none, zero, 2 * K + p, wp, (stars[2 * K + p] - self.pm_xi[p]) * wp),
                Rows(none, zero, 3 * K + p, wp, (stars[3 * K + p] - self.pm_eta[p]) * wp)]
        return Rows.concatenate(parts)

    def measurement_chi2(self, theta, stars):
        """chi^2 (2 dof) of every measurement, rejected ones included."""
        m = self.meas
        xi, eta = self.model.evaluate(theta, m.img, m.u, m.v)
        k = m.star
        pmx, pmy = self.star_motion(stars)
        rx = xi - stars[k] - pmx[k] * m.dt
        ry = eta - stars[self.n_stars + k] - pmy[k] * m.dt
        return (rx ** 2 + ry ** 2) / m.sigma ** 2

    def chi2(self, theta, stars) -> float:
        """Total chi^2 of the active measurements, the reference positions and, for
        fitted motions of reference stars, the catalog motions."""
        c = self.measurement_chi2(theta, stars)[self.active].sum()
        s = self.ref_star
        c += (((stars[s] - self.ref_xi) / self.ref_sigma) ** 2).sum()
        c += (((stars[self.n_stars + s] - self.ref_eta) / self.ref_sigma) ** 2).sum()
        if self.pm_fit is not None and len(self.pm_prior):
            p, K = self.pm_prior, self.n_stars
            c += (((stars[2 * K + p] - self.pm_xi[p]) / self.pm_sigma) ** 2).sum()
            c += (((stars[3 * K + p] - self.pm_eta[p]) / self.pm_sigma) ** 2).sum()
        return float(c)


class PhotometryProblem:
    """Residual rows of the photometric fit (see the module docstring)."""

    def __init__(self, model, meas: Measurements, n_stars: int, ref_index, ref_flux,
                 ref_flux_err, pedestal: float, usable=None):
        self.model, self.meas, self.n_star = model, meas, n_stars
        self.active = np.ones(len(meas.img), bool)
        ok = ref_index >= 0
        ok[ok] &= np.isfinite(ref_flux[ref_index[ok]]) & (ref_flux_err[ref_index[ok]] > 0)
        if usable is not None:
            ok &= usable
        self.ref_star = np.nonzero(ok)[0]
        self.ref_flux = ref_flux[ref_index[self.ref_star]]
        self.ref_err = ref_flux_err[ref_index[self.ref_star]]
        self.pedestal = pedestal
        self.sigma = None

    def set_sigma(self, theta):
        """Measurement errors in counts (fixed during one Gauss-Newton fit)."""
        m = self.meas
        self.sigma = np.hypot(m.flux_err, self.pedestal * m.flux)

    def rows(self, theta, stars) -> Rows:
        # Residuals in counts, measured minus predicted F / calib: invariant under the
        # scale degeneracy (calib, F) -> (a calib, a F). Residuals in nJy with errors
        # fixed in nJy would reward shrinking both, biasing the absolute calibration by
        # ~1e-4 * chi2 / (number of reference stars), i.e. by mmag with many visits.
        m = self.meas
        sel = np.nonzero(self.active)[0]
        calib, idx, val = self.model.derivatives(theta, m.img[sel], m.u[sel], m.v[sel])
        w = 1.0 / self.sigma[sel]
        k = m.star[sel]
        pred = stars[k] / calib
        meas = Rows(idx, val * (pred / calib * w)[:, None], k, -w / calib,
                    (m.flux[sel] - pred) * w)
        s = self.ref_star
        wr = 1.0 / self.ref_err
        ref = Rows(np.full((len(s), 1), -1), np.zeros((len(s), 1)), s, wr,
                   (stars[s] - self.ref_flux) * wr)
        return Rows.concatenate([meas, ref])

    def measurement_chi2(self, theta, stars):
        m = self.meas
        calib, _, _ = self.model.derivatives(theta, m.img, m.u, m.v)
        return ((m.flux - stars[m.star] / calib) / self.sigma) ** 2

    def chi2(self, theta, stars) -> float:
        """Total chi^2 of the active measurements and the reference terms."""
        c = self.measurement_chi2(theta, stars)[self.active].sum()
        c += (((stars[self.ref_star] - self.ref_flux) / self.ref_err) ** 2).sum()
        return float(c)
