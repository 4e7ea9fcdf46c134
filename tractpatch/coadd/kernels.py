"""Resampling kernels (Lanczos2..5, bilinear) and the numba warping loop.

The loop resamples one CCD onto a rectangular region of an output grid. The source
position of every output pixel comes from a coarse grid of exact pixel→sky→pixel
transforms (see :mod:`tractpatch.coadd.transform`), bilinearly interpolated inside the
loop so no full-resolution coordinate arrays are ever allocated.

Per output pixel the separable kernel weights ``w`` (each 1-D kernel normalised to unit
sum, as LSST's warper does) are applied to the *good* input pixels only:

- ``image = J * sum(w I) / sum(w)`` and ``variance = J^2 sum(w^2 V) / sum(w)^2``
  (``J`` the output→input pixel-area ratio, so total flux is conserved);
- a mask bit is set in the output where the input pixels carrying it hold more than
  ``mask_threshold`` of the kernel's absolute weight; a single bad pixel therefore
  marks only the output pixels it really influences (about 2×2 for Lanczos3 at
  half-pixel phase), not the whole kernel footprint as SWarp does;
- pixels off the CCD count as ``NO_DATA`` weight, so the CCD edge (and everything beyond
  it) is ``NO_DATA`` where the missing weight exceeds the threshold.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

#: Kernel name → half-width ``a`` (support is 2a pixels); bilinear is the tent of a=1.
KERNELS: dict[str, int] = {
    "bilinear": 1, "lanczos2": 2, "lanczos3": 3, "lanczos4": 4, "lanczos5": 5,
}


def kernel_code(name: str) -> tuple[int, int]:
    """``(kind, a)`` for the numba loop: kind 0 = bilinear, 1 = Lanczos."""
    if name not in KERNELS:
        raise ValueError(f"unknown warping kernel {name!r}; use one of {', '.join(KERNELS)}")
    return (0 if name == "bilinear" else 1), KERNELS[name]


@njit(cache=True, inline="always")
def _kernel_value(x, kind, a):
    ax = abs(x)
    if kind == 0:
        return max(0.0, 1.0 - ax)
    if ax >= a:
        return 0.0
    if ax < 1e-8:
        return 1.0
    px = math.pi * x
    return a * math.sin(px) * math.sin(px / a) / (px * px)


@njit(cache=True)
def kernel_weights(frac, kind, a, out):
    """Normalised 1-D weights for offsets ``-a+1..a`` from ``floor(x)``; ``frac = x - floor(x)``."""
    s = 0.0
    for k in range(2 * a):
        w = _kernel_value(frac - (k - a + 1), kind, a)
        out[k] = w
        s += w
    for k in range(2 * a):
        out[k] /= s


@njit(cache=True, inline="always")
def _interp_grid(g, cj, ci, fy, fx):
    return ((1 - fy) * ((1 - fx) * g[cj, ci] + fx * g[cj, ci + 1])
            + fy * ((1 - fx) * g[cj + 1, ci] + fx * g[cj + 1, ci + 1]))


@njit(parallel=True, cache=True)
def warp_region(img, var, msk, bad_bits, nodata_bit, gx, gy, gj, step, ny, nx,
                kind, a, mask_threshold, out_img, out_var, out_msk, out_cov):
    """Resample ``img``/``var``/``msk`` onto an ``ny × nx`` output region.

    Parameters
    ----------
    img, var : 2-D float32 arrays of the input CCD.
    msk : 2-D int32 mask bits of the input.
    bad_bits : int
        Bits whose pixels are left out of the interpolation.
    nodata_bit : int
        Bit number of NO_DATA (set where the missing/bad weight is too large).
    gx, gy, gj : 2-D float64 arrays
        Input x, y and pixel-area ratio at coarse-grid nodes ``(j*step, i*step)`` of the
        output region (covering it, last node at or beyond the edge).
    step : int
        Node spacing in output pixels.
    kind, a : int
        Kernel code from :func:`kernel_code`.
    mask_threshold : float
        Fraction of absolute kernel weight above which an input bit is propagated.
    out_img, out_var, out_cov : 2-D float32 outputs; ``out_cov`` is the fraction of the
        kernel's absolute weight on good pixels (0 where nothing landed).
    out_msk : 2-D int32 output mask.
    """
    sny, snx = img.shape
    n = 2 * a
    for iy in prange(ny):
        wx = np.empty(n)
        wy = np.empty(n)
        frac = np.zeros(32)
        cj = iy // step
        fy = (iy - cj * step) / step
        for ix in range(nx):
            ci = ix // step
            fx = (ix - ci * step) / step
            sx = _interp_grid(gx, cj, ci, fy, fx)
            sy = _interp_grid(gy, cj, ci, fy, fx)
            if not (sx > -0.5 and sx < snx - 0.5 and sy > -0.5 and sy < sny - 0.5):
                out_img[iy, ix] = 0.0
                out_var[iy, ix] = 0.0
                out_msk[iy, ix] = 1 << nodata_bit
                out_cov[iy, ix] = 0.0
                continue
            jac = _interp_grid(gj, cj, ci, fy, fx)
            x0 = int(math.floor(sx))
            y0 = int(math.floor(sy))
            kernel_weights(sx - x0, kind, a, wx)
            kernel_weights(sy - y0, kind, a, wy)
            x0 -= a - 1
            y0 -= a - 1
            s = 0.0
            v = 0.0
            wsum = 0.0
            total_abs = 0.0
            good_abs = 0.0
            missing_abs = 0.0
            any_bits = False
            for ky in range(n):
                yy = y0 + ky
                for kx in range(n):
                    w = wy[ky] * wx[kx]
                    aw = abs(w)
                    if aw == 0.0:
                        continue
                    total_abs += aw
                    xx = x0 + kx
                    if yy < 0 or yy >= sny or xx < 0 or xx >= snx:
                        missing_abs += aw
                        continue
                    m = msk[yy, xx]
                    if m != 0:
                        if not any_bits:
                            for b in range(32):
                                frac[b] = 0.0
                            any_bits = True
                        for b in range(32):
                            if (m >> b) & 1:
                                frac[b] += aw
                        if m & bad_bits:
                            continue
                    val = img[yy, xx]
                    vv = var[yy, xx]
                    if not (math.isfinite(val) and math.isfinite(vv)):
                        missing_abs += aw
                        continue
                    s += w * val
                    v += w * w * vv
                    wsum += w
                    good_abs += aw
            bits = 0
            if any_bits:
                for b in range(32):
                    if frac[b] > mask_threshold * total_abs:
                        bits |= 1 << b
            if missing_abs > mask_threshold * total_abs:
                bits |= 1 << nodata_bit
            if good_abs <= 0.0 or abs(wsum) < 1e-3:
                out_img[iy, ix] = 0.0
                out_var[iy, ix] = 0.0
                out_msk[iy, ix] = bits | (1 << nodata_bit)
                out_cov[iy, ix] = 0.0
                continue
            out_img[iy, ix] = jac * s / wsum
            out_var[iy, ix] = jac * jac * v / (wsum * wsum)
            out_msk[iy, ix] = bits
            out_cov[iy, ix] = good_abs / total_abs
