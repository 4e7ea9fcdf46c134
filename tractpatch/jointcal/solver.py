"""The joint fit on in-memory inputs: start, associate, fit astrometry and photometry.

``fit_jointcal(detections, images, refcat, config)`` is the whole algorithm without any
file I/O, so tests drive it with synthetic arrays and the task with SRC catalogs.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import scipy.special
from scipy.spatial import cKDTree

from ..errors import DataQualityError, UserError
from .association import associate, flux_consistent, flux_outliers, match_references
from .astrometry_models import ConstrainedAstrometryModel, SimpleAstrometryModel
from .fitter import FitResult, gauss_newton
from .initial import (VisitOffset, find_visit_offset, fit_visit_distortion,
                      header_positions, refine_image)
from .inputs import CcdImage, Detections, RefCatalog
from .photometry_models import ConstrainedPhotometryModel, SimplePhotometryModel
from .problems import AstrometryProblem, Measurements, PhotometryProblem
from .tangent import deproject, mean_direction, project

log = logging.getLogger("jointcal")
DAYS_PER_YEAR = 365.25
#: median of the chi-square distribution with 1 and 2 degrees of freedom
_CHI2_MEDIAN = {1: 0.454936423119572, 2: 2 * np.log(2.0)}


@dataclass
class JointcalResult:
    """Fitted models and everything the outputs and metrics need."""

    images: list[CcdImage]
    tangent: tuple[float, float]
    astro_model: object
    astro_theta: np.ndarray
    photo_model: object
    photo_theta: np.ndarray | None
    meas: Measurements
    stars_xy: np.ndarray
    stars_flux: np.ndarray | None
    astro_active: np.ndarray
    photo_active: np.ndarray | None
    ref_index: np.ndarray
    refcat: RefCatalog
    ref_xi: np.ndarray
    ref_eta: np.ndarray
    astro_fit: FitResult | None
    photo_fit: FitResult | None
    offsets: list[VisitOffset]
    counts: dict
    dropped: dict = field(default_factory=dict)
    focal: object = None  # (g, u, v) -> focal-plane (fx, fy) arcsec
    #: (2K,) proper motions of the fitted stars ``[mu_xi.., mu_eta..]`` (arcsec/yr,
    #: tangent plane): fitted where ``pm_fitted``, else the catalog's or 0
    stars_pm: np.ndarray | None = None
    pm_fitted: np.ndarray | None = None

    def image_index(self, visit: int, ccd: int) -> int:
        for g, im in enumerate(self.images):
            if im.visit == visit and im.ccd == ccd:
                return g
        raise KeyError((visit, ccd))

    def tangent_xy(self, g: int, x, y):
        """Fitted tangent-plane position (arcsec) of pixels of image ``g``."""
        im = self.images[g]
        u, v = normalized(x, y, im.nx, im.ny)
        return self.astro_model.evaluate(self.astro_theta, g, u, v)

    def pixel_to_sky(self, g: int, x, y):
        """Fitted (ra, dec) deg of pixels (0-based) of image ``g``."""
        xi, eta = self.tangent_xy(g, np.asarray(x, float), np.asarray(y, float))
        return deproject(xi, eta, *self.tangent)

    def calibration(self, g: int, x, y):
        """Fitted nJy per count at pixels of image ``g``."""
        im = self.images[g]
        x, y = np.broadcast_arrays(np.asarray(x, float), np.asarray(y, float))
        u, v = normalized(x.ravel(), y.ravel(), im.nx, im.ny)
        c, _, _ = self.photo_model.derivatives(self.photo_theta, np.full(u.size, g), u, v)
        return c.reshape(x.shape)


def normalized(x, y, nx, ny):
    """CCD pixels -> [-1, 1] coordinates over the CCD (pixel edges at +-1)."""
    return (np.asarray(x, float) + 0.5 - nx / 2) / (nx / 2), \
        (np.asarray(y, float) + 0.5 - ny / 2) / (ny / 2)


def _grid(nx, ny, n=8):
    gx, gy = np.meshgrid(np.linspace(-0.5, nx - 0.5, n), np.linspace(-0.5, ny - 0.5, n))
    return gx.ravel(), gy.ravel()


@dataclass
class PreparedFit:
    """Everything both solvers fit from: selected, associated, reference-matched
    measurements and the header-derived start (see :func:`prepare_fit`).

    ``grid`` holds header positions (offset-corrected, tangent plane, arcsec) on a pixel
    grid of every kept image: ``(image, u, v, xi, eta)`` arrays to initialise the models.
    """

    images: list[CcdImage]
    tangent: tuple[float, float]
    meas: Measurements
    n_stars: int
    star_count: np.ndarray
    star_xi: np.ndarray
    star_eta: np.ndarray
    ref_index: np.ndarray
    refcat: RefCatalog
    ref_xi: np.ndarray
    ref_eta: np.ndarray
    pm_xi: np.ndarray
    pm_eta: np.ndarray
    img_visit: np.ndarray
    img_ccd: np.ndarray
    visits: list
    ccds: list
    grid: tuple
    offsets: list[VisitOffset]
    counts: dict
    dropped: dict


def fit_jointcal(det: Detections, images: list[CcdImage], refcat: RefCatalog,
                 config) -> JointcalResult:
    """Jointly calibrate ``images`` from their ``det`` against ``refcat``.

    Raises
    ------
    UserError
        No reference stars, nothing left to fit.
    DataQualityError
        A singular or diverging fit.
    """
    prep = prepare_fit(det, images, refcat, config)
    gi, gu, gv, gxi, geta = prep.grid
    nv, nc = len(prep.visits), len(prep.ccds)
    if config.astrometryModel == "constrained":
        amodel = ConstrainedAstrometryModel(prep.img_visit, prep.img_ccd, nv, nc,
                                            config.astrometryVisitOrder)
        theta0 = amodel.initialize(gi, gu, gv, gxi, geta)
        ref_ccd = reference_ccd(theta0[amodel.ccd_base:].reshape(nc, 6), prep.img_ccd, nc)
        amodel = ConstrainedAstrometryModel(prep.img_visit, prep.img_ccd, nv, nc,
                                            config.astrometryVisitOrder, ref_ccd)
        theta = amodel.initialize(gi, gu, gv, gxi, geta)
    else:
        amodel = SimpleAstrometryModel(prep.img_visit, prep.img_ccd,
                                       config.astrometrySimpleOrder)
        theta = amodel.initialize(gi, gu, gv, gxi, geta)
        ref_ccd = 0

    def focal(g, uu, vv):
        return _focal(amodel, theta, g, uu, vv, gi, gu, gv, gxi, geta)

    pmodel = None
    if config.doPhotometry:
        if config.photometryModel == "constrained":
            pmodel = ConstrainedPhotometryModel(
                prep.img_visit, prep.img_ccd, nv, nc, focal, getattr(amodel, "scale", 1.0),
                config.photometryVisitOrder, ref_ccd)
            if not hasattr(amodel, "scale"):
                pmodel.scale = _fp_scale(gi, gxi, geta, prep.img_visit)
        else:
            pmodel = SimplePhotometryModel(len(prep.images))
    return fit_models(prep, amodel, theta, pmodel, config, focal)


def reference_ccd(affine, img_ccd, n_ccds: int) -> int:
    """The CCD seen in most visits, nearest the focal-plane centre (``affine``: per-CCD
    ``a0..a5`` of the focal-plane layout, arcsec)."""
    nvis_ccd = np.bincount(img_ccd, minlength=n_ccds)
    dist = np.hypot(affine[:, 0], affine[:, 3])
    return int(np.lexsort((dist, -nvis_ccd))[0])


def fit_models(prep: PreparedFit, amodel, theta, pmodel, config, focal,
               wrap_problem=None) -> JointcalResult:
    """Fit an astrometric model (start ``theta``, updated in place) and a photometric model
    (or None) to the prepared measurements, with outlier rejection; both solvers call it.

    ``focal(g, u, v)`` gives the focal-plane position (arcsec) of normalised CCD
    coordinates of image ``g`` under the final astrometric model (for diagnostics and
    the photometric model). ``wrap_problem`` (optional): called on each
    :class:`.problems.AstrometryProblem` / :class:`.problems.PhotometryProblem` just
    before its staged fit, it returns the object fitted instead -- one that delegates the
    problem's residuals and active set and brings its own assembly and solve through a
    ``gauss_newton`` method (see :func:`.fitter.gauss_newton`), as mosaic's per-image
    block assembly does (:func:`.mosaic_solver.block_problem`).
    """
    wrap = wrap_problem if wrap_problem is not None else (lambda problem: problem)
    meas, n_stars, ref_index, refcat = prep.meas, prep.n_stars, prep.ref_index, prep.refcat
    rsig = np.hypot(refcat.ra_err, refcat.dec_err) / np.sqrt(2) / 1000.0
    rsig = np.where(np.isfinite(rsig) & (rsig > 0), rsig, 0.01)
    pm_fit = proper_motion_stars(meas, n_stars, config.properMotionMinSpan,
                                 config.properMotionMinEpochs)
    aprob = AstrometryProblem(amodel, meas, n_stars, ref_index, prep.ref_xi, prep.ref_eta,
                              rsig, prep.pm_xi, prep.pm_eta, pm_fit,
                              config.properMotionRefError / 1000.0)
    if pm_fit.any():
        log.info("astrometry: fitting the proper motions of %d of %d stars (visits span "
                 "%.2f yr)", int(pm_fit.sum()), n_stars, np.ptp(meas.dt))
    m = ref_index >= 0
    sx, sy = prep.star_xi.copy(), prep.star_eta.copy()
    sx[m] = prep.ref_xi[ref_index[m]]
    sy[m] = prep.ref_eta[ref_index[m]]
    stars = aprob.initial_stars(sx, sy)
    afit = None
    if config.doAstrometry:
        afit = _staged_fit(wrap(aprob), theta, stars, amodel.fixed, config, "astrometry",
                           2)
    ptheta = fluxes = pfit = pactive = None
    if pmodel is not None:
        star_of, img = meas.star, meas.img
        cnt = prep.star_count
        rf = np.where(ref_index >= 0, refcat.flux[np.maximum(ref_index, 0)], np.nan)
        ratio = rf[star_of] / meas.flux
        ptheta = pmodel.initialize(img, ratio)
        # median S/N per star (sort by star, then take the middle measurement)
        snr = meas.flux / meas.flux_err
        o = np.lexsort((snr, star_of))
        first = np.searchsorted(star_of[o], np.arange(n_stars))
        med_snr = snr[o][first + (cnt - 1) // 2]
        pprob = PhotometryProblem(pmodel, meas, n_stars, ref_index, refcat.flux,
                                  refcat.flux_err, config.photometryErrorPedestal,
                                  med_snr >= config.photometryRefMinSnr)
        if len(pprob.ref_star) == 0:
            raise UserError("no fitted star has a reference flux in this filter; check "
                            "photometryRefCat and its colour terms for the filter")
        calib0, _, _ = pmodel.derivatives(ptheta, img, meas.u, meas.v)
        fluxes = np.bincount(star_of, meas.flux * calib0, n_stars) / cnt
        fluxes[pprob.ref_star] = pprob.ref_flux
        pprob.set_sigma(ptheta)
        pfit = _staged_fit(wrap(pprob), ptheta, fluxes, pmodel.fixed, config, "photometry",
                           1)
        pactive = pprob.active
    counts = dict(prep.counts, pm_fittedStars=int(pm_fit.sum()))
    return JointcalResult(prep.images, prep.tangent, amodel, theta, pmodel, ptheta, meas,
                          stars[:2 * n_stars], fluxes, aprob.active, pactive, ref_index,
                          refcat, prep.ref_xi, prep.ref_eta, afit, pfit, prep.offsets,
                          counts, prep.dropped, focal,
                          np.concatenate(aprob.star_motion(stars)), pm_fit)


def proper_motion_stars(meas: Measurements, n_stars: int, min_span: float,
                        min_epochs: int) -> np.ndarray:
    """Stars whose proper motions can be fitted: measured on ``min_epochs`` distinct
    nights spanning at least ``min_span`` years; none when all the visits span
    ``min_span`` or less.

    Parameters
    ----------
    meas : Measurements
        ``star`` and ``dt`` (years from the reference epoch) of every measurement.

    Returns
    -------
    ndarray of bool, (n_stars,)
    """
    out = np.zeros(n_stars, bool)
    if len(meas.dt) == 0 or np.ptp(meas.dt) <= min_span:
        return out
    night = np.floor(meas.dt * DAYS_PER_YEAR + 0.5).astype(np.int64)
    night -= night.min()
    pairs = np.unique(meas.star.astype(np.int64) * (night.max() + 1) + night)
    n_nights = np.bincount(pairs // (night.max() + 1), minlength=n_stars)
    lo = np.full(n_stars, np.inf)
    hi = np.full(n_stars, -np.inf)
    np.minimum.at(lo, meas.star, meas.dt)
    np.maximum.at(hi, meas.star, meas.dt)
    out[:] = (n_nights >= min_epochs) & (hi - lo >= min_span)
    return out


def prepare_fit(det: Detections, images: list[CcdImage], refcat: RefCatalog,
                config) -> PreparedFit:
    """Robust start, association, reference matching and measurement arrays.

    The part of the calibration both solvers share: per-visit pointing/rotation search,
    focal-plane distortion and per-CCD affine touch-up from the header WCSs,
    friends-of-friends association, unambiguous reference matches (both checked in
    flux), CCDs with too few stars dropped.

    Raises
    ------
    UserError
        No reference stars, nothing left to fit.
    """
    dropped: dict = {}
    if len(refcat) == 0:
        raise UserError("no reference stars in the area of the selected CCDs; check the "
                        "reference catalog (astrometryRefCat) covers the field")
    key = {(im.visit, im.ccd): g for g, im in enumerate(images)}
    det_img = np.array([key.get((v, c), -1) for v, c in zip(det.visit.tolist(),
                                                             det.ccd.tolist())], np.int64) \
        if len(det) else np.zeros(0, np.int64)
    # per-image centres -> tangent point of the whole fit
    cen = np.array([im.wcs.all_pix2world([[im.nx / 2, im.ny / 2]], 0)[0] for im in images])
    tangent = mean_direction(cen[:, 0], cen[:, 1])
    xi, eta = header_positions(det, images, det_img, *tangent)
    t0 = refcat.epoch_mjd
    ref_xi, ref_eta = project(refcat.ra, refcat.dec, *tangent)
    pm_xi, pm_eta = refcat.pm_ra / 1000.0, refcat.pm_dec / 1000.0  # arcsec/yr
    visit_mjd: dict[int, float] = {}
    for im in images:
        visit_mjd.setdefault(im.visit, im.mjd)

    # --- robust start: per-visit offset and rotation ------------------------------
    offsets = []
    visit_dist: dict = {}
    image_corr: dict = {}
    keep_det = det_img >= 0
    for visit in sorted(visit_mjd):
        sel = np.nonzero((det.visit == visit) & keep_det)[0]
        if len(sel) == 0:
            continue
        dt = (visit_mjd[visit] - t0) / DAYS_PER_YEAR if np.isfinite(visit_mjd[visit]) else 0
        rx, ry = ref_xi + pm_xi * dt, ref_eta + pm_eta * dt
        lo = np.array([xi[sel].min(), eta[sel].min()]) - config.initialOffsetMax * 2
        hi = np.array([xi[sel].max(), eta[sel].max()]) + config.initialOffsetMax * 2
        inside = (rx > lo[0]) & (rx < hi[0]) & (ry > lo[1]) & (ry < hi[1])
        bright = sel[np.argsort(-det.flux[sel])[:3000]]
        try:
            off = find_visit_offset(visit, xi[bright], eta[bright], rx[inside], ry[inside],
                                    config.initialOffsetMax, config.initialRotationMax,
                                    config.initialRotationStep)
        except DataQualityError as exc:
            log.warning("%s", exc)
            for im in images:
                if im.visit == visit:
                    dropped[(im.visit, im.ccd)] = str(exc)
            keep_det[sel] = False
            continue
        log.info("visit %d: header offset %.2f, %.2f arcsec, rotation %.4f deg "
                 "(%d matches, rms %.3f arcsec)", visit, off.shift_xi, off.shift_eta,
                 off.rotation_deg, off.n_matched, off.rms_arcsec)
        xi[sel], eta[sel] = off.apply(xi[sel], eta[sel])
        offsets.append(off)
        tree = cKDTree(np.column_stack([rx[inside], ry[inside]]))
        # focal-plane distortion missing from the header (grown out from the centre):
        # beyond a few arcsec the per-CCD touch-up below finds only wrong references
        brightest = sel[np.argsort(-det.flux[sel])[:20000]]
        vdist = fit_visit_distortion(xi[brightest], eta[brightest], tree, rx[inside],
                                     ry[inside], off.center, radius=config.refMatchRadius)
        if vdist is not None:
            xi[sel], eta[sel] = vdist.apply(xi[sel], eta[sel])
            visit_dist[visit] = vdist
            log.info("visit %d: focal-plane distortion start (order %d, %d matches, rms "
                     "%.3f arcsec)", visit, vdist.order, vdist.n_matched, vdist.rms_arcsec)
        # per-CCD affine touch-up: header distortion errors of a few arcsec
        for g in np.unique(det_img[sel]):
            s = sel[det_img[sel] == g]
            corr = refine_image(xi[s], eta[s], tree, rx[inside], ry[inside])
            if corr is not None:
                xi[s], eta[s] = corr.apply(xi[s], eta[s])
                image_corr[g] = corr
    off_by_visit = {o.visit: o for o in offsets}
    if not offsets:
        raise UserError("no visit's detections match the reference catalog within "
                        f"initialOffsetMax={config.initialOffsetMax} arcsec; check that the "
                        "reference catalog covers the field and the header WCSs")

    # --- association and reference matching -------------------------------------
    idx = np.nonzero(keep_det)[0]
    near_ref = np.isfinite(cKDTree(np.column_stack([ref_xi, ref_eta])).query(
        np.column_stack([xi[idx], eta[idx]]), distance_upper_bound=config.refMatchRadius)[0])
    assoc = associate(xi[idx], eta[idx], det.visit[idx], config.matchRadius, 2, near_ref)
    star = np.full(len(det), -1, np.int64)
    star[idx] = assoc.star
    # two crowded stars linked where each misses the other's visits: split off the
    # measurements far from their group's flux
    linked = np.nonzero(star >= 0)[0]
    other = flux_outliers(star[linked], det.visit[linked], det.flux[linked],
                          config.refMatchMaxMagDiff)
    if other.any():
        log.info("%d measurements dropped from their fitted star: flux %.1f mag or more "
                 "off its median", int(other.sum()), config.refMatchMaxMagDiff)
        star[linked[other]] = -1
    counts = {"collected_refStars": int(len(refcat)),
              "matched_fittedStars": int(assoc.n_stars)}
    # drop CCDs with too few measurements
    n_per_img = np.bincount(det_img[star >= 0], minlength=len(images))
    for g, im in enumerate(images):
        if (im.visit, im.ccd) in dropped:
            continue
        if n_per_img[g] < config.minMeasurementsPerCcd:
            reason = (f"visit={im.visit} ccd={im.ccd}: {n_per_img[g]} associated stars, "
                      f"fewer than minMeasurementsPerCcd={config.minMeasurementsPerCcd}")
            log.warning("dropped %s", reason)
            dropped[(im.visit, im.ccd)] = reason
    kept = [g for g, im in enumerate(images) if (im.visit, im.ccd) not in dropped]
    if not kept:
        raise UserError("no CCD has enough associated stars to fit; lower minSnr or "
                        "minMeasurementsPerCcd, or check the SRC catalogs")
    new_index = np.full(len(images), -1, np.int64)
    new_index[kept] = np.arange(len(kept))
    ok = (star >= 0) & (det_img >= 0)
    ok[ok] &= new_index[det_img[ok]] >= 0
    sel = np.nonzero(ok)[0]
    stars_u, star_of = np.unique(star[sel], return_inverse=True)
    n_stars = len(stars_u)
    kimages = [images[g] for g in kept]
    img = new_index[det_img[sel]]

    # star start positions (mean of corrected header positions) and reference matches
    cnt = np.bincount(star_of, minlength=n_stars)
    sx = np.bincount(star_of, xi[sel], n_stars) / cnt
    sy = np.bincount(star_of, eta[sel], n_stars) / cnt
    ref_index = match_references(sx, sy, ref_xi, ref_eta, config.refMatchRadius)
    # a faint neighbour of a saturated (dropped) reference star is no match for it
    wrong_flux = ~flux_consistent(ref_index, star_of, det.visit[sel], det.flux[sel],
                                  refcat.flux, config.refMatchMaxMagDiff)
    if wrong_flux.any():
        log.info("%d reference matches dropped: flux %.1f mag or more off their star's",
                 int(wrong_flux.sum()), config.refMatchMaxMagDiff)
        ref_index[wrong_flux] = -1
    n_ref = int((ref_index >= 0).sum())
    counts.update(prepared_refStars=n_ref, prepared_fittedStars=int(n_stars),
                  prepared_ccdImages=len(kimages), n_measurements=int(len(sel)))
    if n_ref == 0:
        raise UserError("no fitted star matches a reference star within refMatchRadius="
                        f"{config.refMatchRadius} arcsec; check the reference catalog and "
                        "the header WCSs")
    log.info("%d measurements of %d fitted stars (%d matched to %d reference stars) on "
             "%d CCD images", len(sel), n_stars, n_ref, len(refcat), len(kimages))

    # measurements
    nx = np.array([im.nx for im in kimages])
    ny = np.array([im.ny for im in kimages])
    u, v = normalized(det.x[sel], det.y[sel], nx[img], ny[img])
    scale = np.array([np.sqrt(abs(np.linalg.det(im.wcs.pixel_scale_matrix))) * 3600
                      for im in kimages])
    perr = np.sqrt(0.5 * (det.x_err[sel] ** 2 + det.y_err[sel] ** 2)) * scale[img]
    sigma = np.hypot(perr, config.astrometrySysError / 1000.0)
    mjd = np.array([im.mjd for im in kimages])
    dt = np.nan_to_num((mjd[img] - t0) / DAYS_PER_YEAR)
    meas = Measurements(img, u, v, star_of, dt, sigma, det.flux[sel], det.flux_err[sel])

    # model indices
    visits = sorted({im.visit for im in kimages})
    ccds = sorted({im.ccd for im in kimages})
    vmap = {vv: i for i, vv in enumerate(visits)}
    cmap = {c: i for i, c in enumerate(ccds)}
    img_visit = np.array([vmap[im.visit] for im in kimages])
    img_ccd = np.array([cmap[im.ccd] for im in kimages])
    # grid of header positions (offset-corrected) to initialise the models
    gi, gu, gv, gxi, geta = [], [], [], [], []
    for g, im in enumerate(kimages):
        x, y = _grid(im.nx, im.ny)
        ra, dec = im.wcs.all_pix2world(x, y, 0)
        a, b = project(ra, dec, *tangent)
        a, b = off_by_visit[im.visit].apply(a, b)
        if im.visit in visit_dist:
            a, b = visit_dist[im.visit].apply(a, b)
        if kept[g] in image_corr:
            a, b = image_corr[kept[g]].apply(a, b)
        uu, vv_ = normalized(x, y, im.nx, im.ny)
        gi.append(np.full(len(x), g))
        gu.append(uu)
        gv.append(vv_)
        gxi.append(a)
        geta.append(b)
    gi, gu, gv, gxi, geta = map(np.concatenate, (gi, gu, gv, gxi, geta))
    return PreparedFit(kimages, tangent, meas, int(n_stars), cnt, sx, sy, ref_index,
                       refcat, ref_xi, ref_eta, pm_xi, pm_eta, img_visit, img_ccd, visits,
                       ccds, (gi, gu, gv, gxi, geta), offsets, counts, dropped)


def _fp_scale(gi, gxi, geta, img_visit):
    vis = img_visit[gi]
    n = np.bincount(vis)
    cx = np.bincount(vis, gxi) / n
    cy = np.bincount(vis, geta) / n
    return float(np.max(np.abs(np.concatenate([gxi - cx[vis], geta - cy[vis]])))) or 1.0


def _focal(amodel, theta, g, u, v, gi, gu, gv, gxi, geta):
    """Focal-plane coordinates for the photometric model (the astrometric layout)."""
    if hasattr(amodel, "focal_plane"):
        return amodel.focal_plane(theta, g, u, v)
    # simple astrometry: the focal plane is the visit's tangent plane about its centre
    xi, eta = amodel.evaluate(theta, g, u, v)
    vis = amodel.image_visit[np.broadcast_to(g, np.shape(u))]
    n = np.bincount(amodel.image_visit[gi])
    cx = np.bincount(amodel.image_visit[gi], gxi) / n
    cy = np.bincount(amodel.image_visit[gi], geta) / n
    return xi - cx[vis], eta - cy[vis]


def _worst_per_star(star, candidate, chi2):
    """Of the ``candidate`` outliers, only the worst measurement of each star.

    One gross outlier drags its star's fitted position (flux) and so inflates the
    residuals of the star's good measurements; rejecting them all in one round would
    throw those away too. As LSST's jointcal does, each round rejects at most one
    measurement per star, and the refit decides about the others.
    """
    idx = np.nonzero(candidate)[0]
    if len(idx) == 0:
        return candidate
    order = idx[np.lexsort((-chi2[idx], star[idx]))]
    first = np.ones(len(order), bool)
    first[1:] = star[order][1:] != star[order][:-1]
    out = np.zeros_like(candidate)
    out[order[first]] = True
    return out


#: rejection rounds with at most this fraction of the active measurements rejected refit
#: the stars only (see :func:`_staged_fit`)
FEW_OUTLIERS = 1e-4


def _noise_tail(bad, chi2, n_active, n_sigma, dof) -> bool:
    """Whether the candidate outliers ``bad`` are just the Gaussian tail of good
    measurements: no more of them than noise alone puts beyond ``n_sigma`` among
    ``n_active`` good ones (Poisson mean + 3 sigma + 1), and none beyond ``2 n_sigma``.

    At 5 sigma a million good 2-d measurements leave ~4 beyond the cut in every round:
    without this test each round finds a few more, and each costs another full refit
    (tens of seconds at HSC scale) for a change far below the noise, up to
    ``maxOutlierRounds``.
    """
    lam = n_active * float(scipy.special.chdtrc(dof, n_sigma ** 2))
    return (bad.sum() <= lam + 3 * np.sqrt(lam) + 1
            and float(chi2[bad].max()) < (2 * n_sigma) ** 2)


def _staged_fit(problem, theta, stars, fixed, config, what, dof):
    """Model with stars fixed, stars with model fixed, then everything with rejection.

    Rejection ends when no measurement is beyond ``outlierRejectSigma``, when those
    beyond are no more than the Gaussian tail of good measurements (:func:`_noise_tail`)
    or after ``maxOutlierRounds``; a round that rejects only a few (``FEW_OUTLIERS``)
    refits the stars alone.
    """
    free = ~fixed
    kw = dict(max_iter=config.maxIterations, tol=config.convergenceTolerance,
              dense_limit=config.denseLimit)
    start = dict(kw, max_iter=min(2, config.maxIterations))  # a start, not a solution
    gauss_newton(problem, theta, stars, free, False, **start)
    gauss_newton(problem, theta, stars, np.zeros_like(free), True, **start)
    fit = gauss_newton(problem, theta, stars, free, True, **kw)
    for rnd in range(config.maxOutlierRounds):
        chi2 = problem.measurement_chi2(theta, stars)
        # robust scale: the median chi2 over its expectation (chi2/ndof would be inflated
        # by the very outliers being sought, hiding them)
        s2 = max(1.0, float(np.median(chi2[problem.active])) / _CHI2_MEDIAN[dof])
        bad = _worst_per_star(problem.meas.star,
                              problem.active & (chi2 > config.outlierRejectSigma ** 2 * s2),
                              chi2)
        if not bad.any() or _noise_tail(bad, chi2 / s2, int(problem.active.sum()),
                                        config.outlierRejectSigma, dof):
            break
        problem.active[bad] = False  # in place: a wrapping problem shares the array
        n_bad = int(bad.sum())
        log.info("%s: rejected %d outliers (round %d)", what, n_bad, rnd + 1)
        if hasattr(problem, "set_sigma"):
            problem.set_sigma(theta)
        if n_bad <= FEW_OUTLIERS * problem.active.sum():
            # a handful of rows among millions: they moved their stars, but the model
            # only by ~ (model parameters / rows) of their pull; refit the stars alone
            sfit = gauss_newton(problem, theta, stars, np.zeros_like(free), True, **start)
            fit = FitResult(sfit.chi2, fit.ndof - dof * n_bad, fit.n_iter, fit.converged)
        else:
            fit = gauss_newton(problem, theta, stars, free, True, **kw)
    log.info("%s: chi2/ndof = %.6g / %d = %.3f after %d iterations%s", what, fit.chi2,
             fit.ndof, fit.chi2 / max(fit.ndof, 1), fit.n_iter,
             "" if fit.converged else " (not converged)")
    return fit
