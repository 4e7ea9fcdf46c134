"""The meas_mosaic algorithm on in-memory inputs (``fit_mosaic``), sharing jointcal's start.

Selection, association, reference matching and the robust per-visit pointing search are
jointcal's (:func:`.solver.prepare_fit`); the models are meas_mosaic's
(:class:`.mosaic_models.MosaicAstrometryModel`: rigid CCDs shared by visits, a
``fittingOrder`` Chebyshev series per visit; flux: per-CCD scale × per-visit Chebyshev of
``fluxFitOrder`` whose constant term is the per-visit scale, absolute against the
reference fluxes); the least squares are jointcal's Gauss-Newton, by default on the full
sparse normal equations (``denseLimit=0``) where meas_mosaic built a dense matrix, with
iterative outlier rejection.
"""
from __future__ import annotations

import logging

import numpy as np

from .astrometry_models import ConstrainedAstrometryModel
from .inputs import CcdImage, Detections, RefCatalog
from .mosaic_models import MosaicAstrometryModel, supported_order
from .photometry_models import ConstrainedPhotometryModel
from .solver import JointcalResult, fit_models, prepare_fit, reference_ccd

log = logging.getLogger("mosaic")


def fit_mosaic(det: Detections, images: list[CcdImage], refcat: RefCatalog,
               config) -> JointcalResult:
    """Calibrate ``images`` with meas_mosaic's models (``config``: a MosaicConfig).

    Returns the same result type as :func:`.solver.fit_jointcal`, so the outputs,
    metrics and diagnostics are shared.

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
    # the layout start: jointcal's per-CCD affine in the de-rotated frame
    layout = ConstrainedAstrometryModel(prep.img_visit, prep.img_ccd, nv, nc, 1)
    affine = layout.initialize(gi, gu, gv, gxi, geta)[layout.ccd_base:].reshape(nc, 6)
    ref = reference_ccd(affine, prep.img_ccd, nc)
    # rigid CCDs keep the camera's nominal pixel scale (median over CCDs)
    half_x = np.hypot(affine[:, 1], affine[:, 4])
    half_y = np.hypot(affine[:, 2], affine[:, 5])
    nx = np.zeros(nc)
    ny = np.zeros(nc)
    for g, im in enumerate(prep.images):
        nx[prep.img_ccd[g]], ny[prep.img_ccd[g]] = im.nx, im.ny
    pix = float(np.median(np.concatenate([half_x / (nx / 2), half_y / (ny / 2)])))
    # pixels -> sky usually flips parity (east is left): a negative half height keeps the
    # rigid placement a proper rotation with the camera's handedness
    parity = np.sign(np.median(affine[:, 1] * affine[:, 5] - affine[:, 2] * affine[:, 4]))
    half = np.column_stack([pix * nx / 2, parity * pix * ny / 2])
    n_visit_meas = np.bincount(prep.img_visit[prep.meas.img], minlength=nv)
    # 2 equations (xi, eta) per measurement for 2 series per visit: same ratio as 1:1
    order = supported_order(config.fittingOrder, n_visit_meas, config.minStarsPerParameter,
                            "fittingOrder")
    amodel = MosaicAstrometryModel(prep.img_visit, prep.img_ccd, nv, nc, half, order, ref)
    theta = amodel.initialize(gi, gu, gv, gxi, geta, affine, layout.scale)

    def focal(g, u, v):
        return amodel.focal_plane(theta, g, u, v)

    pmodel = None
    if config.doPhotometry and config.doFluxFit:
        forder = config.fluxFitOrder
        if forder > 0:
            forder = supported_order(forder, n_visit_meas, config.minStarsPerParameter,
                                     "fluxFitOrder")
        pmodel = ConstrainedPhotometryModel(prep.img_visit, prep.img_ccd, nv, nc, focal,
                                            amodel.scale, forder, ref)
    log.info("mosaic: %d visits, %d CCDs, fittingOrder %d (%d parameters), fluxFitOrder "
             "%s", nv, nc, order, amodel.n_params,
             pmodel.order if pmodel is not None else "-")
    return fit_models(prep, amodel, theta, pmodel, config, focal)
