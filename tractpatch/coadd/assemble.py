"""Assemble one patch: warp every input CCD, then stack the visits subregion by subregion.

Memory stays bounded whatever the depth: each CCD's warp (only the part of the patch it
covers) goes to a temporary ``.npy`` file as soon as it is made; the stack then reads,
for one band of rows at a time, every visit's layer from those files (memory-mapped) —
the band height is chosen so that the band's stack fits in ``maxStackMemoryMB``.
"""
from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
from astropy.wcs import WCS

from ..errors import DataQualityError
from ..image import Exposure, MaskPlanes
from .config import CoaddDriverConfig
from .stack import stack_arrays
from .warp import Warp, njy_to_coadd_scale, warp_exposure

log = logging.getLogger("coaddDriver")


@dataclass
class CcdWarp:
    """One CCD's warp stored on disk."""

    visit: int
    ccd: int
    bbox: tuple
    files: dict
    good_pixels: int
    median_variance: float
    exptime: float
    transform_error: float
    calib_source: str | None = None
    calib_file: str | None = None

    def load(self, plane: str):
        """Memory-mapped plane (``image``, ``variance`` or ``mask``)."""
        return np.load(self.files[plane], mmap_mode="r")


@dataclass
class CoaddResult:
    """A patch coadd and its inputs."""

    image: np.ndarray
    variance: np.ndarray
    mask: np.ndarray
    nimage: np.ndarray
    exptime: np.ndarray
    mask_planes: MaskPlanes
    inputs: list = field(default_factory=list)   # dict rows: visit ccd weight goodPix
    zero_point: float = 27.0
    calib_sources: list = field(default_factory=list)
    max_transform_error: float = 0.0
    rows_per_band: int = 0


def subtract_background(exposure: Exposure, config: CoaddDriverConfig) -> Exposure:
    """A copy of ``exposure`` with its sky background (sep mesh + median filter) removed.

    Calibrated CCDs still hold the sky; visits with different sky levels would otherwise
    differ by far more than their noise and be clipped against each other.
    """
    import sep

    img = np.ascontiguousarray(exposure.image, dtype=np.float32)
    bad = ((exposure.mask & exposure.mask_planes.bitmask(*config.badMaskPlanes)) != 0) | \
        ~np.isfinite(img)
    size = min(config.backgroundMeshSize, *img.shape)
    bkg = sep.Background(np.where(bad, 0, img).astype(np.float32), mask=bad, bw=size,
                         bh=size, fw=config.backgroundFilterSize,
                         fh=config.backgroundFilterSize)
    return Exposure(image=img - bkg.back(), mask=exposure.mask,
                    variance=exposure.variance, wcs=exposure.wcs,
                    photo_calib=exposure.photo_calib, info=exposure.info,
                    mask_planes=exposure.mask_planes, header=exposure.header)


def warp_to_disk(exposure: Exposure, wcs: WCS, shape, config: CoaddDriverConfig,
                 workdir: Path) -> CcdWarp | None:
    """Warp one calibrated CCD (nJy pixels) onto the patch, scaled to the zero point,
    and store it; None when it does not overlap the patch or has no good pixel there."""
    if config.doSubtractBackground:
        exposure = subtract_background(exposure, config)
    w = warp_exposure(exposure, wcs, shape, kernel=config.warpingKernel,
                      method=config.warpingMethod, interp_length=config.interpLength,
                      max_error=config.maxTransformError,
                      mask_threshold=config.warpMaskThreshold,
                      bad_planes=config.badMaskPlanes,
                      scale=njy_to_coadd_scale(config.zeroPoint))
    if w is None:
        return None
    bad = w.mask & w.mask_planes.bitmask(*config.badMaskPlanes)
    good = (bad == 0) & np.isfinite(w.image) & (w.variance > 0)
    ngood = int(np.count_nonzero(good))
    if ngood == 0:
        return None
    visit, ccd = exposure.info.visit, exposure.info.ccd
    files = {}
    for plane, data in (("image", w.image), ("variance", w.variance), ("mask", w.mask)):
        # ".tmp-" names: showLedger.py --clean-tmp removes what a killed run leaves
        p = workdir / f".tmp-{visit}-{ccd}-{plane}.npy"
        np.save(p, data)
        files[plane] = p
    # the typical variance (for the visit weight): a median over a subsample suffices
    gv = w.variance[good]
    medvar = float(np.median(gv[::max(1, gv.size // 200_000)]))
    return CcdWarp(visit, ccd, w.bbox, files, ngood, medvar,
                   float(exposure.info.exptime or 0.0), w.transform_error,
                   exposure.header.get("CALIBSRC"), exposure.header.get("CALIBFIL"))


def visit_layer(warps: list[CcdWarp], y0: int, y1: int, nx: int, nodata: int):
    """Image, variance, mask of one visit over rows ``[y0, y1)`` (NO_DATA where no CCD)."""
    img = np.zeros((y1 - y0, nx), np.float32)
    var = np.zeros((y1 - y0, nx), np.float32)
    msk = np.full((y1 - y0, nx), nodata, np.int32)
    for w in warps:
        bx0, by0, bx1, by1 = w.bbox
        a, b = max(y0, by0), min(y1, by1)
        if a >= b:
            continue
        m = np.asarray(w.load("mask")[a - by0:b - by0])
        # where CCDs of one visit overlap, a pixel with data wins over NO_DATA
        take = ((m & nodata) == 0) | ((msk[a - y0:b - y0, bx0:bx1] & nodata) != 0)
        for dst, plane in ((img, "image"), (var, "variance")):
            sub = dst[a - y0:b - y0, bx0:bx1]
            sub[take] = np.asarray(w.load(plane)[a - by0:b - by0])[take]
        sub = msk[a - y0:b - y0, bx0:bx1]
        sub[take] = m[take]
    return img, var, msk


def assemble(warps: list[CcdWarp], shape, config: CoaddDriverConfig,
             mask_planes: MaskPlanes) -> CoaddResult:
    """Stack the stored CCD warps per visit over the patch, band of rows by band.

    Each visit's weight is the inverse of the median variance of its good warped pixels.
    """
    ny, nx = shape
    visits: dict[int, list[CcdWarp]] = {}
    for w in warps:
        visits.setdefault(w.visit, []).append(w)
    vlist = sorted(visits)
    weights = {}
    for v in vlist:
        ws = visits[v]
        medvar = np.average([w.median_variance for w in ws], weights=[w.good_pixels
                                                                      for w in ws])
        weights[v] = 1.0 / medvar
    nodata = mask_planes.bitmask("NO_DATA")
    bytes_per_layer_row = nx * 12
    rows = int(config.maxStackMemoryMB * 2 ** 20 / (bytes_per_layer_row * max(1, len(vlist))))
    rows = max(8, min(ny, rows))
    res = CoaddResult(np.empty(shape, np.float32), np.empty(shape, np.float32),
                      np.empty(shape, np.int32), np.zeros(shape, np.int32),
                      np.zeros(shape, np.float32), mask_planes, rows_per_band=rows)
    for y0 in range(0, ny, rows):
        y1 = min(ny, y0 + rows)
        active = [v for v in vlist if any(w.bbox[1] < y1 and w.bbox[3] > y0
                                          for w in visits[v])]
        if not active:
            res.image[y0:y1] = np.nan
            res.variance[y0:y1] = np.nan
            res.mask[y0:y1] = nodata
            continue
        imgs = np.empty((len(active), y1 - y0, nx), np.float32)
        vars_ = np.empty_like(imgs)
        msks = np.empty((len(active), y1 - y0, nx), np.int32)
        for k, v in enumerate(active):
            imgs[k], vars_[k], msks[k] = visit_layer(visits[v], y0, y1, nx, nodata)
        st = stack_arrays(imgs, vars_, msks, [weights[v] for v in active],
                          [max(w.exptime for w in visits[v]) for v in active],
                          mask_planes, statistic=config.statistic,
                          nsigma=config.sigmaClip, niter=config.clipIter,
                          ampfrac=config.clipAmpFrac,
                          bad_planes=config.badMaskPlanes,
                          thresholds=config.maskPropagationThresholds)
        res.image[y0:y1] = st.image
        res.variance[y0:y1] = st.variance
        res.mask[y0:y1] = st.mask
        res.nimage[y0:y1] = st.nimage
        res.exptime[y0:y1] = st.exptime
        del imgs, vars_, msks
    res.inputs = [dict(visit=w.visit, ccd=w.ccd, weight=weights[w.visit],
                       goodPix=w.good_pixels, calibSource=w.calib_source or "",
                       transformError=w.transform_error) for w in warps]
    res.calib_sources = sorted({w.calib_source for w in warps if w.calib_source})
    res.max_transform_error = max((w.transform_error for w in warps), default=0.0)
    res.zero_point = config.zeroPoint
    return res


def coadd_patch(exposures: Iterable[Exposure], wcs: WCS, shape,
                config: CoaddDriverConfig | None = None, workdir=None,
                on_visit_warp=None) -> CoaddResult | None:
    """Coadd calibrated exposures (nJy pixels) onto one patch grid.

    Parameters
    ----------
    exposures : iterable of Exposure
        Read lazily, one at a time (a generator keeps memory bounded).
    wcs, shape : the patch's outer WCS and (ny, nx).
    config : CoaddDriverConfig, optional
    workdir : path, optional
        Where the temporary warps go (default: a system temporary directory).
    on_visit_warp : callable, optional
        Called as ``on_visit_warp(visit, image, variance, mask, bbox)`` with each visit's
        warp over the box its CCDs cover (e.g. to write ``deepCoadd_warp``).

    Returns
    -------
    CoaddResult or None
        None when no exposure overlaps the patch.
    """
    config = config or CoaddDriverConfig()
    with tempfile.TemporaryDirectory(prefix=".tmp-coadd-", dir=workdir) as tmp:
        tmp = Path(tmp)
        warps = []
        mask_planes = MaskPlanes()
        for exp in exposures:
            cw = warp_to_disk(exp, wcs, shape, config, tmp)
            if cw is None:
                log.info("visit=%s ccd=%s: no good pixels on this patch", exp.info.visit,
                         exp.info.ccd)
                continue
            for name, bit in exp.mask_planes.planes.items():
                if mask_planes.planes.get(name, bit) != bit:
                    raise DataQualityError(
                        f"visit={exp.info.visit} ccd={exp.info.ccd}: mask plane {name} is "
                        f"bit {bit}, in the other inputs bit {mask_planes.planes[name]}; "
                        "rewrite the CALEXP with the standard mask planes")
                mask_planes.planes[name] = bit
            warps.append(cw)
        if not warps:
            return None
        if on_visit_warp is not None:
            _emit_visit_warps(warps, shape, mask_planes, on_visit_warp)
        return assemble(warps, shape, config, mask_planes)


def _emit_visit_warps(warps, shape, mask_planes, callback):
    """Build each visit's warp over the union box of its CCDs and hand it over."""
    visits: dict[int, list[CcdWarp]] = {}
    for w in warps:
        visits.setdefault(w.visit, []).append(w)
    nodata = mask_planes.bitmask("NO_DATA")
    for v, ws in sorted(visits.items()):
        x0 = min(w.bbox[0] for w in ws)
        y0 = min(w.bbox[1] for w in ws)
        x1 = max(w.bbox[2] for w in ws)
        y1 = max(w.bbox[3] for w in ws)
        img, var, msk = visit_layer(ws, y0, y1, shape[1], nodata)
        callback(v, img[:, x0:x1], var[:, x0:x1], msk[:, x0:x1], (x0, y0, x1, y1))
