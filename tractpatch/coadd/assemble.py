"""Assemble one patch: warp every input CCD, then stack the visits subregion by subregion.

Memory stays bounded whatever the depth: each CCD's warp (only the part of the patch it
covers; float32 image and variance, the mask in 16 bits when its planes fit) is kept in
memory while the warps held stay within ``maxWarpMemoryMB`` and otherwise spilled to a
temporary ``.npy`` file; the stack then gathers, for one band of rows at a time, every
visit's layer (a numba paste, no masked-array temporaries) into a buffer reused for all
bands — the band height is chosen so that the band's stack fits in ``maxStackMemoryMB``
— and the fused numba statistic writes straight into the patch planes.
"""
from __future__ import annotations

import logging
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
from astropy.wcs import WCS
from numba import njit, prange

from ..errors import DataQualityError
from ..image import Exposure, MaskPlanes
from .artifacts import detect_artifacts, params_from_config
from .config import CoaddDriverConfig
from .stack import StackResult, stack_arrays
from .warp import njy_to_coadd_scale, warp_exposure

log = logging.getLogger("coaddDriver")


@dataclass
class CcdWarp:
    """One CCD's warp, held in memory (``arrays``) or spilled to disk (``files``)."""

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
    arrays: dict | None = None
    nbytes: int = 0

    def load(self, plane: str):
        """The whole plane (``image``, ``variance`` or ``mask``); memory-mapped if spilled."""
        if self.arrays is not None:
            return self.arrays[plane]
        return np.load(self.files[plane], mmap_mode="r")

    def rows(self, plane: str, a: int, b: int) -> np.ndarray:
        """Rows ``[a, b)`` (relative to the box) of a plane, as an in-memory array."""
        if self.arrays is not None:
            return self.arrays[plane][a:b]
        # a copy of just those rows; the map is dropped at once (RSS stays bounded)
        return np.array(np.load(self.files[plane], mmap_mode="r")[a:b])


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
    #: visit -> input pixels masked as artefacts (doArtifactRejection)
    artifact_pixels: dict = field(default_factory=dict)


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
    bkg = sep.Background(np.where(bad, np.float32(0), img), mask=bad, bw=size,
                         bh=size, fw=config.backgroundFilterSize,
                         fh=config.backgroundFilterSize)
    out = img.copy()
    bkg.subfrom(out)  # in place: no full-size background image and no temporary
    return Exposure(image=out, mask=exposure.mask,
                    variance=exposure.variance, wcs=exposure.wcs,
                    photo_calib=exposure.photo_calib, info=exposure.info,
                    mask_planes=exposure.mask_planes, header=exposure.header)


@njit(parallel=True, cache=True, nogil=True)
def good_stats(img, var, msk, bad_bits, nsample):
    """Good pixels of a warp (no bad bit, finite image, positive variance): their number
    and the variances of every ``max(1, n // nsample)``-th of them in row-major order
    (for a median). Rows in parallel: counts first, then each row's share of the sample."""
    ny, nx = msk.shape
    counts = np.zeros(ny + 1, np.int64)
    for y in prange(ny):
        c = 0
        for x in range(nx):
            if (msk[y, x] & bad_bits) == 0 and math.isfinite(img[y, x]) and var[y, x] > 0:
                c += 1
        counts[y + 1] = c
    for y in range(ny):
        counts[y + 1] += counts[y]  # good pixels before row y+1
    n = counts[ny]
    stride = max(1, n // nsample)
    out = np.empty((n + stride - 1) // stride, np.float32)
    for y in prange(ny):
        k = counts[y]
        for x in range(nx):
            if (msk[y, x] & bad_bits) == 0 and math.isfinite(img[y, x]) and var[y, x] > 0:
                if k % stride == 0:
                    out[k // stride] = var[y, x]
                k += 1
    return n, out


class WarpStore:
    """Where the CCD warps of a patch wait for the stack: memory within a budget, then
    temporary ``.npy`` files (one concept: the in-memory/spill policy)."""

    def __init__(self, budget_mb: float, tmpdir: Path, background_writes: bool = False):
        self.budget = int(budget_mb * 2 ** 20)
        self.used = 0
        self.tmpdir = Path(tmpdir)
        self.spilled = 0
        self._pool = None
        self._pending = None
        if background_writes:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spill")

    def flush(self) -> None:
        """Wait until every spilled warp is on disk (before reading them back)."""
        if self._pending is not None:
            self._pending.result()
            self._pending = None

    def close(self) -> None:
        """Finish the writes and stop the writer thread."""
        self.flush()
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    @staticmethod
    def _write(paths_and_data) -> None:
        for path, data in paths_and_data:
            np.save(path, data)

    def put(self, visit: int, ccd: int, image, variance, mask,
            mask_planes: MaskPlanes) -> tuple[dict | None, dict]:
        """Keep the planes; returns ``(arrays, files)`` (one of them empty)."""
        # the mask in 16 bits when every plane fits (the default planes use bits 0..12)
        if max(mask_planes.planes.values(), default=0) < 16:
            mask = mask.astype(np.uint16)
        planes = {"image": image, "variance": variance, "mask": mask}
        nbytes = sum(a.nbytes for a in planes.values())
        if self.used + nbytes <= self.budget:
            self.used += nbytes
            return planes, {}
        # ".tmp-" names: showLedger.py --clean-tmp removes what a killed run leaves
        files = {plane: self.tmpdir / f".tmp-{visit}-{ccd}-{plane}.npy" for plane in planes}
        jobs = [(files[p], planes[p]) for p in planes]
        self.spilled += 1
        if self._pool is None:
            self._write(jobs)
        else:
            # written while the next CCD is warped; one write in flight at most, so
            # memory grows by one warp at most
            self.flush()
            self._pending = self._pool.submit(self._write, jobs)
        return None, files


def warp_to_disk(exposure: Exposure, wcs: WCS, shape, config: CoaddDriverConfig,
                 workdir, store: WarpStore | None = None) -> CcdWarp | None:
    """Warp one calibrated CCD (nJy pixels) onto the patch, scaled to the zero point,
    and store it (in ``store``'s memory budget, else in ``workdir``); None when it does
    not overlap the patch or has no good pixel there."""
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
    bad = w.mask_planes.bitmask(*config.badMaskPlanes)
    # the typical variance (for the visit weight): a median over a subsample suffices
    ngood, sample = good_stats(w.image, w.variance, w.mask, bad, 200_000)
    if ngood == 0:
        return None
    medvar = float(np.median(sample))
    visit, ccd = exposure.info.visit, exposure.info.ccd
    if store is None:
        store = WarpStore(0.0, workdir)
    arrays, files = store.put(visit, ccd, w.image, w.variance, w.mask, w.mask_planes)
    return CcdWarp(visit, ccd, w.bbox, files, ngood, medvar,
                   float(exposure.info.exptime or 0.0), w.transform_error,
                   exposure.header.get("CALIBSRC"), exposure.header.get("CALIBFIL"),
                   arrays=arrays, nbytes=sum(a.nbytes for a in (arrays or {}).values()))


@njit(parallel=True, cache=True, nogil=True)
def paste_warp(dimg, dvar, dmsk, simg, svar, smsk, dy, dx, nodata):
    """Copy a CCD's warp rows into a visit layer at row ``dy``, column ``dx``.

    Where CCDs of one visit overlap, a pixel with data wins over NO_DATA (the last CCD
    with data wins between two).
    """
    for y in prange(simg.shape[0]):
        for x in range(simg.shape[1]):
            m = np.int32(smsk[y, x])
            if (m & nodata) == 0 or (dmsk[dy + y, dx + x] & nodata) != 0:
                dimg[dy + y, dx + x] = simg[y, x]
                dvar[dy + y, dx + x] = svar[y, x]
                dmsk[dy + y, dx + x] = m


def fill_layer(warps: list[CcdWarp], y0: int, y1: int, nodata: int, img, var, msk,
               zero: bool = True):
    """Fill one visit's layer (``img``, ``var``, ``msk``: rows ``[y0, y1)`` of the patch)
    from its CCD warps; NO_DATA (and zeros, when ``zero``) where no CCD lands."""
    if zero:
        img[:] = 0.0
        var[:] = 0.0
    msk[:] = nodata
    first = True
    for w in warps:
        bx0, by0, bx1, by1 = w.bbox
        a, b = max(y0, by0), min(y1, by1)
        if a >= b:
            continue
        src = [w.rows(p, a - by0, b - by0) for p in ("image", "variance", "mask")]
        if first:
            # the layer is all NO_DATA yet: every pixel is taken, a plain block copy
            for dst, data in zip((img, var, msk), src):
                dst[a - y0:b - y0, bx0:bx1] = data
            first = False
        else:
            paste_warp(img, var, msk, *src, a - y0, bx0, nodata)


def visit_layer(warps: list[CcdWarp], y0: int, y1: int, nx: int, nodata: int):
    """Image, variance, mask of one visit over rows ``[y0, y1)`` (NO_DATA where no CCD)."""
    img = np.empty((y1 - y0, nx), np.float32)
    var = np.empty((y1 - y0, nx), np.float32)
    msk = np.empty((y1 - y0, nx), np.int32)
    fill_layer(warps, y0, y1, nodata, img, var, msk)
    return img, var, msk


def assemble(warps: list[CcdWarp], shape, config: CoaddDriverConfig,
             mask_planes: MaskPlanes) -> CoaddResult:
    """Stack the stored CCD warps per visit over the patch, band of rows by band.

    Each visit's weight is the inverse of the median variance of its good warped pixels.
    With ``doArtifactRejection`` each band is read with ``artifactMargin`` more rows
    above and below, artefacts are detected on that (footprints are judged across the
    band border up to the margin; a footprint longer than that is judged on the part
    within it) and masked REJECTED in their visit, then the band's rows are stacked.
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
    art = config.doArtifactRejection
    margin = config.artifactMargin if art else 0
    # artefact detection holds a significance cube, labels and a few boolean cubes
    bytes_per_layer_row = nx * (32 if art else 12)
    rows = int(config.maxStackMemoryMB * 2 ** 20 / (bytes_per_layer_row * max(1, len(vlist))))
    rows = max(8, min(ny, rows - 2 * margin))
    rejected = mask_planes.bitmask("REJECTED")
    bad_planes = list(config.badMaskPlanes) + (["REJECTED"] if art else [])
    params = params_from_config(config)
    artifact_pixels = {v: 0 for v in vlist} if art else {}
    res = CoaddResult(np.empty(shape, np.float32), np.empty(shape, np.float32),
                      np.empty(shape, np.int32), np.zeros(shape, np.int32),
                      np.zeros(shape, np.float32), mask_planes, rows_per_band=rows)
    # one flat buffer per plane for all bands: every band's (k, rows, nx) view of it is
    # C-contiguous, so the numba statistic reads it without a copy
    cap = len(vlist) * min(ny, rows + 2 * margin) * nx
    buf_img = np.empty(cap, np.float32)
    buf_var = np.empty(cap, np.float32)
    buf_msk = np.empty(cap, np.int32)
    for y0 in range(0, ny, rows):
        y1 = min(ny, y0 + rows)
        ya, yb = max(0, y0 - margin), min(ny, y1 + margin)
        active = [v for v in vlist if any(w.bbox[1] < yb and w.bbox[3] > ya
                                          for w in visits[v])]
        if not active:
            res.image[y0:y1] = np.nan
            res.variance[y0:y1] = np.nan
            res.mask[y0:y1] = nodata
            continue
        cube = (len(active), yb - ya, nx)
        size = cube[0] * cube[1] * cube[2]
        imgs = buf_img[:size].reshape(cube)
        vars_ = buf_var[:size].reshape(cube)
        msks = buf_msk[:size].reshape(cube)
        for k, v in enumerate(active):
            # NO_DATA pixels are never read by the statistic: no need to zero them
            fill_layer(visits[v], ya, yb, nodata, imgs[k], vars_[k], msks[k], zero=False)
        if art:
            _reject_artifacts(imgs, vars_, msks, active, y0 - ya, y1 - ya, nodata,
                              mask_planes.bitmask(*config.badMaskPlanes), rejected,
                              params, artifact_pixels)
            imgs, vars_, msks = (_core_rows(b, cube, y0 - ya, y1 - ya)
                                 for b in (buf_img, buf_var, buf_msk))
        stack_arrays(imgs, vars_, msks, [weights[v] for v in active],
                     [max(w.exptime for w in visits[v]) for v in active],
                     mask_planes, statistic=config.statistic,
                     nsigma=config.sigmaClip, niter=config.clipIter,
                     ampfrac=config.clipAmpFrac,
                     bad_planes=bad_planes,
                     thresholds=config.maskPropagationThresholds,
                     out=StackResult(res.image[y0:y1], res.variance[y0:y1],
                                     res.mask[y0:y1], res.nimage[y0:y1],
                                     res.exptime[y0:y1]))
    del buf_img, buf_var, buf_msk
    res.inputs = [dict(visit=w.visit, ccd=w.ccd, weight=weights[w.visit],
                       goodPix=w.good_pixels, calibSource=w.calib_source or "",
                       transformError=w.transform_error) for w in warps]
    res.calib_sources = sorted({w.calib_source for w in warps if w.calib_source})
    res.max_transform_error = max((w.transform_error for w in warps), default=0.0)
    res.zero_point = config.zeroPoint
    res.artifact_pixels = artifact_pixels
    if art:
        log.info("artifact rejection: input pixels masked per visit %s", artifact_pixels)
    return res


def _reject_artifacts(imgs, vars_, msks, active, a, b, nodata, bad_bits, rejected,
                      params, counts):
    """Detect artefacts on the band with its margins and set REJECTED in their visits'
    layers; ``counts[visit]`` grows by the pixels masked in rows ``[a, b)``."""
    found = detect_artifacts(imgs, vars_, msks, bad_bits | nodata, params)
    msks[found] |= rejected
    per_visit = found[:, a:b].sum(axis=(1, 2))
    for v, n in zip(active, per_visit):
        counts[v] += int(n)


def _core_rows(buf, cube, a, b):
    """Rows ``[a, b)`` of each layer of the ``cube``-shaped stack at the start of the flat
    ``buf``, moved to the front as a C-contiguous ``(k, b - a, nx)`` stack (in place:
    layer ``k``'s rows move towards lower addresses; numpy handles the overlap)."""
    k, h, nx = cube
    n = (b - a) * nx
    for i in range(k):
        src = i * h * nx + a * nx
        buf[i * n:(i + 1) * n] = buf[src:src + n]
    return buf[:k * n].reshape(k, b - a, nx)


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
        store = WarpStore(config.maxWarpMemoryMB, tmp, background_writes=True)
        try:
            warps, mask_planes = _warp_all(exposures, wcs, shape, config, tmp, store)
        finally:
            store.close()
        if not warps:
            return None
        log.debug("%d CCD warps: %.0f MB in memory, %d spilled to %s", len(warps),
                  store.used / 2 ** 20, store.spilled, tmp)
        if on_visit_warp is not None:
            _emit_visit_warps(warps, shape, mask_planes, on_visit_warp)
        return assemble(warps, shape, config, mask_planes)


def _warp_all(exposures, wcs, shape, config, tmp, store):
    """Warp and store every exposure; ``(warps, mask planes)``."""
    warps = []
    mask_planes = MaskPlanes()
    if config.prefetchInputs:
        exposures = prefetch(exposures)
    for exp in exposures:
        cw = warp_to_disk(exp, wcs, shape, config, tmp, store)
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
    return warps, mask_planes


def prefetch(items: Iterable):
    """Iterate over ``items`` with the next one fetched in a background thread.

    Reading the next CALEXP (FITS I/O, byte swapping: both release the GIL) overlaps the
    warp of the current one (numba, ``nogil``); one item ahead only, so memory grows by
    one exposure at most. Exceptions are raised where the item would have been.
    """
    from concurrent.futures import ThreadPoolExecutor

    it = iter(items)
    done = object()

    def fetch():
        return next(it, done)

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch") as pool:
        fut = pool.submit(fetch)
        while True:
            item = fut.result()
            if item is done:
                return
            fut = pool.submit(fetch)
            yield item
            del item


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
