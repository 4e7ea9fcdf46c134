"""Warp one calibrated CCD onto an output grid (a patch): image, variance, mask, coverage.

Only the part of the output grid the CCD covers is computed (its footprint's bounding box
plus the kernel half-width). Methods: our numba Lanczos/bilinear warper (the default),
or astropy reproject's flux-conserving ``reproject_exact`` / ``reproject_adaptive``.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
from astropy.wcs import WCS

from ..image import Exposure, MaskPlanes
from ..image.photocalib import AB_FLUX_NJY
from .kernels import PHASES, clean_windows, kernel_code, phase_table, warp_region
from .transform import CoarseTransform, coarse_transform, footprint_bbox

#: Planes whose pixels are left out when interpolating (their values are not usable).
DEFAULT_BAD_PLANES = ("BAD", "SAT", "CR", "NO_DATA", "EDGE", "SUSPECT")

METHODS = ("lanczos", "reproject_exact", "reproject_adaptive")


def njy_to_coadd_scale(zero_point: float = 27.0) -> float:
    """Factor from nJy to coadd pixel units of AB zero point ``zero_point``.

    A coadd value ``c`` has magnitude ``zero_point - 2.5 log10(c)``; one nJy is
    ``2.5 log10(3631e9) = 31.40`` mag, so ``c = nJy * 10**(0.4 (zero_point - 31.40))``.
    """
    return 10.0 ** (0.4 * zero_point) / AB_FLUX_NJY


@dataclass
class Warp:
    """One input resampled onto a box of the output grid.

    Attributes
    ----------
    image, variance : ndarray (float32), shape of ``bbox``; coadd units.
    mask : ndarray (int32), bits of ``mask_planes``; NO_DATA where nothing landed.
    coverage : ndarray (float32), fraction of the kernel weight on good input pixels.
    bbox : tuple
        ``(x0, y0, x1, y1)`` in output pixels, end-exclusive.
    mask_planes : MaskPlanes
    transform_error : float
        Measured coarse-grid interpolation error (input pixels).
    interp_length : int
        Grid spacing finally used.
    """

    image: np.ndarray
    variance: np.ndarray
    mask: np.ndarray
    coverage: np.ndarray
    bbox: tuple
    mask_planes: MaskPlanes = field(default_factory=MaskPlanes)
    transform_error: float = 0.0
    interp_length: int = 0

    @property
    def good(self) -> np.ndarray:
        """Pixels with data (NO_DATA not set)."""
        return (self.mask & self.mask_planes.bitmask("NO_DATA")) == 0


def warp_exposure(exposure: Exposure, out_wcs: WCS, out_shape, kernel: str = "lanczos3",
                  method: str = "lanczos", interp_length: int = 32,
                  max_error: float = 0.01, mask_threshold: float = 0.1,
                  bad_planes=DEFAULT_BAD_PLANES, scale: float = 1.0,
                  bbox=None) -> Warp | None:
    """Resample ``exposure`` onto the grid ``out_wcs``/``out_shape``.

    Parameters
    ----------
    exposure : Exposure
        Calibrated input (image and variance per pixel, any units).
    out_wcs : astropy.wcs.WCS
        Output grid WCS (0-based pixels).
    out_shape : tuple
        Output grid (ny, nx).
    kernel : str
        ``lanczos2``..``lanczos5`` or ``bilinear`` (method ``lanczos`` only).
    method : str
        ``lanczos`` (ours), ``reproject_exact`` or ``reproject_adaptive``.
    interp_length : int
        Initial coarse-grid spacing of the exact transform.
    max_error : float
        Bound on the transform interpolation error (pixels); the grid is refined until met.
    mask_threshold : float
        Fraction of the kernel's absolute weight above which an input mask bit (or
        missing data, as NO_DATA) is propagated to an output pixel.
    bad_planes : sequence of str
        Input planes excluded from the interpolation.
    scale : float
        Factor applied to the image (its square to the variance), e.g. nJy → coadd units.
    bbox : tuple, optional
        Restrict the output to this box ``(x0, y0, x1, y1)``.

    Returns
    -------
    Warp or None
        None when the exposure does not overlap the output grid.
    """
    if method not in METHODS:
        raise ValueError(f"unknown warping method {method!r}; use one of {METHODS}")
    _, a = kernel_code(kernel)
    box = footprint_bbox(exposure.wcs, exposure.shape, out_wcs, out_shape, margin=a + 1)
    if box is None:
        return None
    if bbox is not None:
        box = (max(box[0], bbox[0]), max(box[1], bbox[1]), min(box[2], bbox[2]),
               min(box[3], bbox[3]))
        if box[2] <= box[0] or box[3] <= box[1]:
            return None
    x0, y0, x1, y1 = box
    ny, nx = y1 - y0, x1 - x0
    tr = coarse_transform(out_wcs, exposure.wcs, x0, y0, ny, nx, step=interp_length,
                          max_error=max_error)
    mp = exposure.mask_planes
    nodata_bit = mp.bit("NO_DATA")
    if method == "lanczos":
        in_mask = flag_nonfinite(exposure)
        img = np.empty((ny, nx), np.float32)
        var = np.empty((ny, nx), np.float32)
        msk = np.empty((ny, nx), np.int32)
        cov = np.empty((ny, nx), np.float32)
        all_clean = not in_mask.any()
        # the fast-path test needs the clean windows only where some mask bit is set
        clean = np.zeros((0, 0), np.uint8) if all_clean else clean_windows(in_mask, 2 * a)
        warp_region(_as_f32(exposure.image), _as_f32(exposure.variance),
                    np.ascontiguousarray(in_mask, np.int32),
                    mp.bitmask(*bad_planes), nodata_bit, tr.gx, tr.gy, tr.gj, tr.step,
                    ny, nx, _table(kernel), PHASES, a, float(mask_threshold),
                    img, var, msk, cov, clean, all_clean, float(scale))
    else:
        img, var, msk, cov = _warp_reproject(exposure, out_wcs, tr, method, mp, bad_planes,
                                             mask_threshold)
        if scale != 1.0:
            img *= np.float32(scale)
            var *= np.float32(scale * scale)
    return Warp(img, var, msk, cov, box, MaskPlanes(dict(mp.planes)), tr.max_error,
                tr.step)


def _as_f32(a: np.ndarray) -> np.ndarray:
    """``a`` as C-contiguous float32 (no copy when it already is): one compiled
    specialisation of the loop, half the memory traffic of float64."""
    return np.ascontiguousarray(a, dtype=np.float32)


_TABLES: dict = {}


def _table(kernel: str) -> np.ndarray:
    """The kernel's weights per phase (:func:`phase_table`), made once per process."""
    if kernel not in _TABLES:
        _TABLES[kernel] = phase_table(kernel)
    return _TABLES[kernel]


def flag_nonfinite(exposure: Exposure) -> np.ndarray:
    """The mask with NO_DATA added on non-finite image or variance pixels (a copy only
    when there are any), so the warping loop needs no finiteness test per tap."""
    bad = ~(np.isfinite(exposure.image) & np.isfinite(exposure.variance))
    if not bad.any():
        return exposure.mask
    m = exposure.mask.copy()
    m[bad] |= exposure.mask_planes.bitmask("NO_DATA")
    return m


def _jacobian_image(tr: CoarseTransform) -> np.ndarray:
    """Pixel-area ratio at every pixel of the region (bilinear from the grid)."""
    from scipy.ndimage import map_coordinates

    yy, xx = np.mgrid[0:tr.ny, 0:tr.nx]
    return map_coordinates(tr.gj, [yy / tr.step, xx / tr.step], order=1, mode="nearest")


def _warp_reproject(exposure, out_wcs, tr, method, mp, bad_planes, mask_threshold):
    """reproject_exact / reproject_adaptive onto the region; masks via bad fractions."""
    import reproject

    func = {"reproject_exact": reproject.reproject_exact,
            "reproject_adaptive": reproject.reproject_adaptive}[method]
    sub = out_wcs.slice((slice(tr.y0, tr.y0 + tr.ny), slice(tr.x0, tr.x0 + tr.nx)))
    shape = (tr.ny, tr.nx)
    bad = (exposure.mask & mp.bitmask(*bad_planes)) != 0
    bad |= ~np.isfinite(exposure.image) | ~np.isfinite(exposure.variance)
    good = (~bad).astype(np.float64)
    kw = {"conserve_flux": False} if method == "reproject_adaptive" else {}

    def rep(data):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out, foot = func((data, exposure.wcs), sub, shape_out=shape, **kw)
        return np.nan_to_num(out), foot

    frac_good, foot = rep(good)
    img, _ = rep(np.where(bad, 0.0, exposure.image.astype(np.float64)))
    var, _ = rep(np.where(bad, 0.0, exposure.variance.astype(np.float64)))
    jac = _jacobian_image(tr)
    with np.errstate(invalid="ignore", divide="ignore"):
        ok = (foot > 0) & (frac_good > 1e-3)
        img = np.where(ok, img / np.where(ok, frac_good, 1) * jac, 0.0)
        # surface-brightness average of independent pixels: variance of the mean of the
        # ~1/J input pixels in an output pixel (approximate: no partial-overlap terms)
        var = np.where(ok, var / np.where(ok, frac_good, 1) * jac * np.minimum(jac, 1.0),
                       0.0)
    msk = np.zeros(shape, np.int32)
    for name in bad_planes:
        if name not in mp.planes:
            continue
        plane = ((exposure.mask & mp.bitmask(name)) != 0).astype(np.float64)
        if not plane.any():
            continue
        f, _ = rep(plane)
        msk[f > mask_threshold] |= mp.bitmask(name)
    msk[~ok | (frac_good < 1 - mask_threshold)] |= mp.bitmask("NO_DATA")
    return (img.astype(np.float32), var.astype(np.float32), msk,
            np.where(ok, frac_good, 0).astype(np.float32))
